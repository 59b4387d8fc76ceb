import CKVM
import Foundation
import MartletVMMProtocol
import Testing

@testable import MartletVMM

/// The platform firmware boot gives SeaBIOS: fw_cfg (ports and DMA), the ACPI table-loader
/// files, the CMOS, and the checks on the configuration and the firmware file. None of these
/// needs /dev/kvm.
struct FirmwareTests {
    /// Reads `count` bytes of item `key` through the selector and data ports.
    static func readPorts(_ fwCfg: FwCfg, key: UInt16, count: Int) -> [UInt8] {
        fwCfg.write(port: FwCfg.selectorPort, size: 2, value: UInt32(key))
        return (0..<count).map { _ in UInt8(fwCfg.read(port: FwCfg.dataPort, size: 1)) }
    }

    @Test func fwCfgSignatureAndIDThroughThePorts() {
        let withDMA = FwCfg(memory: try! GuestMemory(size: 4 << 20))
        #expect(String(decoding: Self.readPorts(withDMA, key: FwCfg.Key.signature, count: 4), as: UTF8.self) == "QEMU")
        #expect(Self.readPorts(withDMA, key: FwCfg.Key.id, count: 4) == [3, 0, 0, 0])
        let portsOnly = FwCfg(memory: nil)
        #expect(Self.readPorts(portsOnly, key: FwCfg.Key.id, count: 4) == [1, 0, 0, 0])
        // Past the end of an item, and for unknown keys, the data port reads zeros.
        #expect(Self.readPorts(portsOnly, key: FwCfg.Key.signature, count: 6) == Array("QEMU".utf8) + [0, 0])
        #expect(Self.readPorts(portsOnly, key: 0x1234, count: 2) == [0, 0])
        // Selecting again starts over; a 16-bit read returns two successive bytes.
        portsOnly.write(port: FwCfg.selectorPort, size: 2, value: UInt32(FwCfg.Key.signature))
        #expect(portsOnly.read(port: FwCfg.dataPort, size: 2) == 0x4551)  // "QE"
    }

    @Test func fwCfgDirectoryIsSortedBigEndianAndPointsAtTheFiles() throws {
        let fwCfg = FwCfg(memory: nil)
        try fwCfg.addFile("etc/e820", [1, 2, 3])
        try fwCfg.addFile("bootorder", Array("/virtio-mmio@00000000d0000000/disk@0,0\n".utf8))
        try fwCfg.addFile("etc/acpi/tables", [UInt8](repeating: 7, count: 300))
        let directory = fwCfg.item(FwCfg.Key.fileDirectory)
        #expect(directory.bigEndian(UInt32.self, at: 0) == 3)
        #expect(directory.count == 4 + 3 * 64)
        var names: [String] = []
        for index in 0..<3 {
            let entry = Array(directory[4 + index * 64..<4 + (index + 1) * 64])
            let name = String(decoding: entry[8...].prefix { $0 != 0 }, as: UTF8.self)
            names.append(name)
            let key = entry.bigEndian(UInt16.self, at: 4)
            #expect(key == FwCfg.Key.firstFile + UInt16(index))
            let contents = Self.readPorts(fwCfg, key: key, count: Int(entry.bigEndian(UInt32.self, at: 0)))
            #expect(contents == fwCfg.item(key))
            #expect(!contents.isEmpty)
        }
        #expect(names == ["bootorder", "etc/acpi/tables", "etc/e820"])
        #expect(fwCfg.item(FwCfg.Key.firstFile + 2) == [1, 2, 3])
        #expect(throws: VMMError.self) { try fwCfg.addFile(String(repeating: "x", count: 56), []) }
    }

    @Test func fwCfgDMAReadsSkipsAndReportsErrors() throws {
        let memory = try GuestMemory(size: 4 << 20)
        let fwCfg = FwCfg(memory: memory)
        try fwCfg.addFile("etc/e820", Array(0..<40))
        let key = FwCfg.Key.firstFile
        func dma(control: UInt32, length: UInt32, target: UInt64) throws -> UInt32 {
            var descriptor = [UInt8](repeating: 0, count: 16)
            descriptor.putBigEndian(control, at: 0)
            descriptor.putBigEndian(length, at: 4)
            descriptor.putBigEndian(target, at: 8)
            try memory.write(descriptor, at: 0x1000)
            fwCfg.write(port: FwCfg.dmaPort, size: 4, value: 0)
            fwCfg.write(port: FwCfg.dmaPort + 4, size: 4, value: UInt32(0x1000).bigEndian)
            return UInt32(bigEndian: try memory.read(UInt32.self, at: 0x1000))
        }
        // Select + read: the first 8 bytes.
        #expect(try dma(control: UInt32(key) << 16 | FwCfg.DMAControl.select | FwCfg.DMAControl.read, length: 8, target: 0x2000) == 0)
        #expect(try memory.bytes(at: 0x2000, length: 8) == Array(0..<8))
        // Skip 30, then read 16: 10 bytes of the file, then zeros.
        #expect(try dma(control: FwCfg.DMAControl.skip, length: 22, target: 0) == 0)
        try memory.write([UInt8](repeating: 0xAA, count: 16), at: 0x3000)
        #expect(try dma(control: FwCfg.DMAControl.read, length: 16, target: 0x3000) == 0)
        #expect(try memory.bytes(at: 0x3000, length: 16) == Array(30..<40) + [UInt8](repeating: 0, count: 6))
        // Writes are refused, and a buffer outside guest memory is an error, not a crash.
        #expect(try dma(control: FwCfg.DMAControl.write, length: 4, target: 0x2000) == FwCfg.DMAControl.error)
        #expect(try dma(control: UInt32(key) << 16 | FwCfg.DMAControl.select | FwCfg.DMAControl.read, length: 8, target: 0x7FFF_FFF0) == FwCfg.DMAControl.error)
        // A 4 GiB read (the guest chooses the length) into a small guest is an error, and the
        // VMM builds nothing of that size first (its peak RSS stays put).
        func peakRSS() -> Int {
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            return usage.ru_maxrss * 1024
        }
        let before = peakRSS()
        #expect(try dma(control: UInt32(key) << 16 | FwCfg.DMAControl.select | FwCfg.DMAControl.read, length: .max, target: 0x2000) == FwCfg.DMAControl.error)
        #expect(peakRSS() - before < 256 << 20, "peak RSS grew by \((peakRSS() - before) >> 20) MiB")
        // The DMA signature at 0x514, big-endian "QEMU CFG".
        #expect(fwCfg.read(port: FwCfg.dmaPort, size: 4) == UInt32(bigEndian: 0x5145_4D55))
    }

    /// Runs the table-loader script the way SeaBIOS does (romfile_loader.c), with the files
    /// placed at `bases`; returns the patched files.
    static func applyLoader(_ files: ACPITableFiles, bases: [String: UInt64]) throws -> [String: [UInt8]] {
        var blobs = [ACPITableFiles.tablesFile: files.tables, ACPITableFiles.rsdpFile: files.rsdp]
        var allocated: Set<String> = []
        func name(_ entry: [UInt8], _ offset: Int) -> String {
            String(decoding: entry[offset..<offset + 56].prefix { $0 != 0 }, as: UTF8.self)
        }
        #expect(files.loader.count % ACPITableFiles.commandSize == 0)
        for start in stride(from: 0, to: files.loader.count, by: ACPITableFiles.commandSize) {
            let entry = Array(files.loader[start..<start + ACPITableFiles.commandSize])
            switch entry.le(UInt32.self, at: 0) {
            case ACPITableFiles.Command.allocate.rawValue:
                let file = name(entry, 4)
                #expect(blobs[file] != nil, "allocate of unknown file \(file)")
                let align = entry.le(UInt32.self, at: 60)
                #expect(align.nonzeroBitCount == 1)
                #expect(bases[file]! % UInt64(align) == 0)
                #expect([1, 2].contains(entry[64]))
                allocated.insert(file)
            case ACPITableFiles.Command.addPointer.rawValue:
                let destination = name(entry, 4), source = name(entry, 60)
                let offset = Int(entry.le(UInt32.self, at: 116)), size = Int(entry[120])
                try #require(allocated.contains(destination) && allocated.contains(source), "pointer before allocation")
                try #require([1, 2, 4, 8].contains(size) && offset + size <= blobs[destination]!.count)
                var value = blobs[destination]!.le(UInt64.self, at: offset) & (size == 8 ? ~0 : (1 << (8 * size)) - 1)
                value += bases[source]!
                for byte in 0..<size { blobs[destination]![offset + byte] = UInt8(truncatingIfNeeded: value >> (8 * byte)) }
            case ACPITableFiles.Command.addChecksum.rawValue:
                let file = name(entry, 4)
                let offset = Int(entry.le(UInt32.self, at: 60)), first = Int(entry.le(UInt32.self, at: 64)), length = Int(entry.le(UInt32.self, at: 68))
                try #require(allocated.contains(file) && first + length <= blobs[file]!.count && offset < blobs[file]!.count)
                blobs[file]![offset] = blobs[file]![offset] &- blobs[file]![first..<first + length].reduce(0, &+)
            case let command:
                Issue.record("unknown table-loader command \(command)")
            }
        }
        return blobs
    }

    @Test func tableLoaderPlacesLinksAndChecksumsTheTables() throws {
        let acpi = ACPITables(vcpus: 2, virtio: [(0xD000_0000, 0x1000, 5), (0xD000_1000, 0x1000, 6)])
        let files = ACPITableFiles(acpi)
        let tablesBase: UInt64 = 0x0FFF_0000, rsdpBase: UInt64 = 0xF_5A40
        let blobs = try Self.applyLoader(files, bases: [ACPITableFiles.tablesFile: tablesBase, ACPITableFiles.rsdpFile: rsdpBase])
        let tables = blobs[ACPITableFiles.tablesFile]!, rsdp = blobs[ACPITableFiles.rsdpFile]!
        func table(at address: UInt64) throws -> [UInt8] {
            try #require(address >= tablesBase && address - tablesBase + 36 <= UInt64(tables.count), "pointer 0x\(String(address, radix: 16)) outside the tables")
            let offset = Int(address - tablesBase)
            let length = Int(tables.le(UInt32.self, at: offset + 4))
            return Array(tables[offset..<offset + length])
        }
        #expect(String(decoding: rsdp[0..<8], as: UTF8.self) == "RSD PTR ")
        #expect(rsdp[0..<20].reduce(0, &+) == 0, "RSDP checksum")
        #expect(rsdp.reduce(0, &+) == 0, "RSDP extended checksum")
        let xsdt = try table(at: rsdp.le(UInt64.self, at: 24))
        #expect(String(decoding: xsdt[0..<4], as: UTF8.self) == "XSDT")
        let fadt = try table(at: xsdt.le(UInt64.self, at: 36))
        let madt = try table(at: xsdt.le(UInt64.self, at: 44))
        #expect(String(decoding: fadt[0..<4], as: UTF8.self) == "FACP")
        #expect(String(decoding: madt[0..<4], as: UTF8.self) == "APIC")
        #expect(fadt.le(UInt32.self, at: 40) == UInt32(fadt.le(UInt64.self, at: 140)))
        let dsdt = try table(at: fadt.le(UInt64.self, at: 140))
        #expect(String(decoding: dsdt[0..<4], as: UTF8.self) == "DSDT")
        for (name, bytes) in [("XSDT", xsdt), ("FACP", fadt), ("APIC", madt), ("DSDT", dsdt)] {
            #expect(bytes.reduce(0, &+) == 0, "\(name) checksum after loading")
        }
        #expect(dsdt == acpi.dsdt, "the DSDT has no pointers and loads unchanged")

        // iasl must accept the loaded tables (acpica-tools, installed by scripts/setup).
        let work = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: work) }
        for (name, bytes) in [("dsdt", dsdt), ("facp", fadt), ("apic", madt), ("xsdt", xsdt)] {
            let file = work.appendingPathComponent("\(name).dat")
            try Data(bytes).write(to: file)
            let result = try TestSupport.run("/usr/bin/iasl", ["-d", file.path])
            #expect(result.status == 0, "iasl -d \(name): \(result.output)")
            let dsl = (try? String(contentsOf: work.appendingPathComponent("\(name).dsl"), encoding: .utf8)) ?? ""
            #expect(!dsl.contains("Invalid") && !dsl.contains("Incorrect checksum"), "\(name): \(dsl)")
        }
        let dsl = try String(contentsOf: work.appendingPathComponent("dsdt.dsl"), encoding: .utf8)
        #expect(dsl.contains("LNRO0005") && dsl.contains("0xD0001000"), "the DSDT announces the virtio-mmio devices:\n\(dsl)")
    }

    @Test func platformFilesDescribeMemoryConsoleAndBootDisk() throws {
        let memory = try GuestMemory(size: 256 << 20)
        let fwCfg = FwCfg(memory: memory)
        try fwCfg.describePlatform(memory: memory, vcpus: 2, acpi: ACPITables(vcpus: 2, virtio: []), firstDisk: 0xD000_0000)
        #expect(fwCfg.fileNames == ["bootorder", "etc/acpi/rsdp", "etc/acpi/tables", "etc/boot-menu-wait", "etc/e820", "etc/sercon-port", "etc/table-loader"])
        func file(_ name: String) -> [UInt8] { fwCfg.item(FwCfg.Key.firstFile + UInt16(fwCfg.fileNames.firstIndex(of: name)!)) }
        let e820 = file("etc/e820")
        #expect(e820.count == 40)
        #expect(e820.le(UInt64.self, at: 0) == 0 && e820.le(UInt64.self, at: 8) == 256 << 20 && e820.le(UInt32.self, at: 16) == 1)
        #expect(e820.le(UInt64.self, at: 20) == FirmwareImage.tssAddress && e820.le(UInt32.self, at: 36) == 2)
        #expect(file("etc/sercon-port") == [0xF8, 0x03])
        #expect(String(decoding: file("bootorder"), as: UTF8.self).hasPrefix("/virtio-mmio@00000000d0000000/"))
        #expect(Self.readPorts(fwCfg, key: FwCfg.Key.cpuCount, count: 2) == [2, 0])
        #expect(Self.readPorts(fwCfg, key: FwCfg.Key.maxCPUs, count: 2) == [2, 0])
        #expect(Self.readPorts(fwCfg, key: FwCfg.Key.bootMenu, count: 2) == [0, 0])
    }

    @Test func cmosKeepsTimeInBCDAndMemorySizes() {
        // 2023-11-14 22:13:20 UTC, a Tuesday.
        let cmos = CMOS(lowMemory: 256 << 20, highMemory: 1 << 30, vcpus: 2, now: { 1_700_000_000 })
        func read(_ register: UInt8) -> UInt8 {
            cmos.write(port: CMOS.indexPort, size: 1, value: UInt32(register | 0x80))  // with NMI masked, as SeaBIOS does
            return UInt8(cmos.read(port: CMOS.dataPort, size: 1))
        }
        #expect([0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(read) == [0x20, 0x13, 0x22, 0x03, 0x14, 0x11, 0x23, 0x20])
        #expect(read(0x0A) & 0x80 == 0, "update in progress is never set")
        #expect(read(0x0B) == 0x02 && read(0x0D) == 0x80)
        #expect(read(0x15) == 0x80 && read(0x16) == 0x02, "640 KiB base memory")
        #expect(read(0x17) == 0xFF && read(0x18) == 0xFF && read(0x30) == 0xFF && read(0x31) == 0xFF, "extended memory capped at 65535 KiB")
        #expect(read(0x34) == 0x00 && read(0x35) == 0x0F, "(256 - 16) MiB in 64 KiB units")
        #expect(read(0x5B) == 0x00 && read(0x5C) == 0x40 && read(0x5D) == 0x00, "1 GiB above 4 GiB in 64 KiB units")
        #expect(read(0x5F) == 1)
        // The index port reads as all ones whatever was written: bit 7 says NMIs are masked,
        // so SeaBIOS leaves it alone when it switches modes.
        cmos.write(port: CMOS.indexPort, size: 1, value: 0x0B)
        #expect(cmos.read(port: CMOS.indexPort, size: 1) == 0xFF)
        // Binary mode once the guest clears the BCD bit; plain RAM keeps what is written.
        cmos.write(port: CMOS.dataPort, size: 1, value: 0x06)
        #expect(read(0x04) == 22 && read(0x00) == 20)
        cmos.write(port: CMOS.indexPort, size: 1, value: 0x0F)
        cmos.write(port: CMOS.dataPort, size: 1, value: 0x05)
        #expect(read(0x0F) == 0x05)
        cmos.write(port: CMOS.indexPort, size: 1, value: 0x0D)
        cmos.write(port: CMOS.dataPort, size: 1, value: 0x00)
        #expect(read(0x0D) == 0x80, "status D is read-only")
    }

    @Test func configRefusesKernelAndFirmwareTogether() throws {
        let config = try VMConfig(json: #"{"firmware": "/usr/share/seabios/bios-microvm.bin", "disks": [{"path": "d.img"}]}"#, source: "vm.json")
        #expect(config.firmware == "/usr/share/seabios/bios-microvm.bin" && config.kernel.isEmpty)
        do {
            _ = try VMConfig(json: #"{"kernel": "k", "firmware": "f"}"#, source: "vm.json")
            Issue.record("kernel and firmware together were accepted")
        } catch let error as ProtocolError {
            #expect(error.message.contains("vm.json") && error.message.contains("kernel") && error.message.contains("firmware"), "\(error.message)")
        }
        do {
            _ = try VMConfig(json: "{}", source: "vm.json")
            Issue.record("a configuration without kernel or firmware was accepted")
        } catch let error as ProtocolError {
            #expect(error.message.contains("kernel: missing") && error.message.contains("firmware"), "\(error.message)")
        }
    }

    @Test func firmwareFilesThatCannotBeABIOSAreRefusedNamingTheFile() throws {
        let work = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: work) }
        let cases: [(String, Int, String)] = [
            ("empty.bin", 0, "is empty"),
            ("odd.bin", 100_000, "not a multiple of 64 KiB"),
            ("huge.bin", FirmwareRules.maxSize + FirmwareRules.blockSize, "more than the 16 MiB"),
        ]
        for (name, size, message) in cases {
            let path = work.appendingPathComponent(name).path
            #expect(FileManager.default.createFile(atPath: path, contents: nil))
            #expect(truncate(path, off_t(size)) == 0)
            do {
                _ = try FirmwareImage(path: path)
                Issue.record("\(name) was accepted")
            } catch let error as VMMError {
                #expect(error.message.contains(path) && error.message.contains(message), "\(error.message)")
            }
        }
        let missing = work.appendingPathComponent("missing.bin").path
        #expect(throws: VMMError.self) { try FirmwareImage(path: missing) }
        // Through Machine, before any KVM resource: a configuration error naming the key and file.
        var config = VMConfig()
        config.firmware = missing
        do {
            _ = try Machine(config: config)
            Issue.record("a missing firmware file was accepted")
        } catch let error as VMMError {
            #expect(error.code == .config && error.message.contains("firmware") && error.message.contains(missing), "\(error.message)")
        }
        let image = try FirmwareImage(path: "/usr/share/seabios/bios-microvm.bin")
        #expect(image.guestAddress == 0xFFFE_0000 && image.legacyAlias.count == 128 << 10)
        #expect(Array(image.bytes.suffix(16).prefix(1)) == [0xEA], "the reset vector holds a far jump")
    }

    /// SeaBIOS's boot failure, recognised in the console stream: once, only the whole
    /// sentence, also after a false start.
    @Test func exitStatisticsCountByPortAddressAndDirectionMostFrequentFirst() {
        let statistics = ExitStatistics()
        var exit = ckvm_exit()
        exit.reason = UInt32(KVM_EXIT_IO)
        exit.io_port = 0x3FD
        exit.io_direction = UInt8(KVM_EXIT_IO_IN)
        for _ in 0..<3 { statistics.record(exit) }
        exit.io_direction = UInt8(KVM_EXIT_IO_OUT)
        statistics.record(exit)
        var mmio = ckvm_exit()
        mmio.reason = UInt32(KVM_EXIT_MMIO)
        mmio.mmio_address = 0xD000_0060
        for _ in 0..<2 { statistics.record(mmio) }
        #expect(statistics.count(of: .init(reason: UInt32(KVM_EXIT_IO), location: 0x3FD, write: false)) == 3)
        #expect(statistics.count(of: .init(reason: UInt32(KVM_EXIT_IO), location: 0x3FD, write: true)) == 1)
        #expect(statistics.count(of: .init(reason: UInt32(KVM_EXIT_MMIO), location: 0xD000_0060, write: false)) == 2)
        let lines = statistics.table.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines.dropFirst().first == "3\tio read port 0x3fd", "\(lines)")
        #expect(lines.dropFirst(2).first == "2\tmmio read 0xd0000060", "\(lines)")
        #expect(lines.dropFirst(3).first == "1\tio write port 0x3fd", "\(lines)")
        #expect(lines.last == "6\tin all", "\(lines)")
    }

    @Test func bootFailureIsRecognisedOnceInTheConsoleOutput() {
        var failures = 0
        let watch = BootFailureWatch(onFailure: { failures += 1 })
        func feed(_ text: String) { for byte in text.utf8 { watch.observe(byte) } }
        feed("SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from Hard Disk...\r\nBoot failed: not a bootable disk\r\n\r\nNo bootable device")
        #expect(failures == 0, "fired before the sentence ended")
        feed("  Retrying\r\nNo bootable devNNo bootable device.  Retrying in 60 seconds.\r\n")
        #expect(failures == 1)
        feed("No bootable device.\r\n")
        #expect(failures == 1, "fired twice")
    }
}
