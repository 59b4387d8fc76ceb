import Foundation
import Testing

@testable import MartletVMM

struct ACPITests {
    let tables = ACPITables(vcpus: 3, virtio: [(0xD000_0000, 0x1000, 5), (0xD000_1000, 0x1000, 6)])

    func sum(_ bytes: [UInt8]) -> UInt8 { bytes.reduce(0, &+) }

    @Test func tablesAreWellFormedWithValidChecksums() throws {
        let memory = try GuestMemory(size: 16 << 20)
        let rsdpAddress = try tables.write(to: memory, at: BootLayout.acpiStart)
        let rsdp = try memory.bytes(at: rsdpAddress, length: 36)
        #expect(Array(rsdp[0..<8]) == Array("RSD PTR ".utf8))
        #expect(sum(Array(rsdp[0..<20])) == 0)
        #expect(sum(rsdp) == 0)
        let xsdtAddress = rsdp.le(UInt64.self, at: 24)
        let xsdtLength = Int(try memory.read(UInt32.self, at: xsdtAddress + 4))
        let xsdt = try memory.bytes(at: xsdtAddress, length: xsdtLength)
        #expect(Array(xsdt[0..<4]) == Array("XSDT".utf8))
        #expect(sum(xsdt) == 0)
        var signatures: [String] = []
        for offset in stride(from: 36, to: xsdtLength, by: 8) {
            let address = xsdt.le(UInt64.self, at: offset)
            let length = Int(try memory.read(UInt32.self, at: address + 4))
            let table = try memory.bytes(at: address, length: length)
            #expect(sum(table) == 0)
            signatures.append(String(decoding: table[0..<4], as: UTF8.self))
            if signatures.last == "FACP" {
                let dsdt = table.le(UInt64.self, at: 140)
                let dsdtLength = Int(try memory.read(UInt32.self, at: dsdt + 4))
                let dsdtBytes = try memory.bytes(at: dsdt, length: dsdtLength)
                #expect(Array(dsdtBytes[0..<4]) == Array("DSDT".utf8))
                #expect(sum(dsdtBytes) == 0)
                #expect(table.le(UInt16.self, at: 46) == 9)
                #expect(table.le(UInt32.self, at: 64) == 0x604)
            }
        }
        #expect(signatures == ["FACP", "APIC"])
    }

    /// Disassembles `table` with Debian's iasl and returns the ASL text.
    func disassemble(_ table: [UInt8], name: String) throws -> String {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("\(name).dat")
        try Data(table).write(to: file)
        let result = try TestSupport.run("/usr/bin/iasl", ["-d", file.path])
        #expect(result.status == 0, "iasl -d failed: \(result.output)")
        #expect(!result.output.contains("Error"), "\(result.output)")
        return try String(contentsOf: directory.appendingPathComponent("\(name).dsl"), encoding: .utf8)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/iasl")))
    func dsdtDisassemblesWithDevices() throws {
        let asl = try disassemble(tables.dsdt, name: "dsdt")
        #expect(asl.contains("LNRO0005"))
        #expect(asl.contains("0xD0001000"))
        #expect(asl.contains("EisaId (\"PNP0501\")"))
        #expect(asl.contains("EisaId (\"PNP0C0C\")"))
        #expect(asl.contains("_S5"))
        #expect(asl.contains("0x03F8"))
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/iasl")))
    func madtDisassemblesWithVCPUsAndIOAPIC() throws {
        let asl = try disassemble(tables.madt, name: "apic")
        #expect(asl.components(separatedBy: "Processor Local APIC").count - 1 == 3)
        #expect(asl.contains("I/O APIC"))
        #expect(asl.contains("FEC00000"))
        #expect(asl.contains("Interrupt Source Override"))
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/iasl")))
    func fadtDisassembles() throws {
        let asl = try disassemble(tables.fadt(dsdtAddress: 0xE0040), name: "facp")
        #expect(asl.contains("PM1A Control Block Address : 00000604"))
    }

    @Test func amlPackageLengthEncodings() {
        #expect(AML.packageLength(0x3E) == [0x3F])
        #expect(AML.packageLength(0x3F) == [0x41, 0x04])  // 0x41 bytes in all, in two length bytes
        #expect(AML.packageLength(0x1000) == [0x83, 0x00, 0x01])  // 0x1003 bytes in all, three length bytes
    }

    @Test func powerButtonRaisesTheSCIWhenEnabled() {
        final class Log { var levels: [Bool] = []; var events: [String] = [] }
        let log = Log()
        let pm = PowerManagement(onEvent: { log.events.append("\($0)") }, raiseSCI: { log.levels.append($0) })
        pm.pressPowerButton()
        #expect(log.levels.isEmpty)  // not enabled yet
        pm.write(port: 0x602, size: 2, value: 0x100)
        #expect(log.levels == [true])
        #expect(pm.read(port: 0x600, size: 2) & 0x100 != 0)
        pm.write(port: 0x600, size: 2, value: 0x100)
        #expect(log.levels == [true, false])
        pm.write(port: 0x604, size: 2, value: (5 << 10) | (1 << 13))
        #expect(log.events == ["powerOff"])
    }
}
