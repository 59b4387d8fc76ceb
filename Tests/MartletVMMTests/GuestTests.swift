import Foundation
import Testing

import MartletSystem
import MartletVMMProtocol

@testable import MartletVMM

/// Tiny 64-bit guests on the real /dev/kvm, entered through the Linux 64-bit boot path.
@Suite(.serialized)
struct GuestTests {
    @Test func serialOutputAndPowerOff() throws {
        let result = try runGuest("serial")
        #expect(result.exit == .powerOff)
        #expect(result.serial.contains("martlet test guest: test=serial"))
        #expect(result.serial.contains("hello from the martlet test guest"))
        #expect(!result.serial.contains("no zero page in RSI"))
    }

    @Test func portIORoundTrip() throws {
        let result = try runGuest("portio")
        #expect(result.exit == .powerOff)
        #expect(result.serial.contains("portio ok"))
    }

    @Test func i8042ResetEndsTheRun() throws {
        let result = try runGuest("reset")
        #expect(result.exit == .reset)
        #expect(result.serial.contains("resetting"))
        #expect(!result.serial.contains("guest done"))
    }

    @Test func everyVCPUReportsItsOwnAPICID() throws {
        let result = try runGuest("smp n=4", vcpus: 4, apStart: .entry)
        #expect(result.exit == .powerOff)
        for id in 0..<4 { #expect(result.serial.contains("cpu \(id)\n"), "vCPU \(id) missing in \(result.serial)") }
        #expect(result.serial.contains("smp ok"))
    }

    @Test func virtioBlockReadWriteFlushAgainstAFile() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let disk = try blkGuestImage(in: directory)

        let result = try runGuest("blk", disks: [VMConfig.Disk(path: disk.path, id: "martlet-disk-0")])
        #expect(result.exit == .powerOff)
        #expect(result.serial.contains("blk read: host wrote this sector"))
        #expect(result.serial.contains("blk id: martlet-disk-0"))
        #expect(result.serial.contains("blk ok"))
        let after = try Data(contentsOf: disk)
        #expect(after.count == 64 * 1024)
        #expect(after.subdata(in: 512..<540) == Data("written by the martlet guest".utf8))
        #expect(after.prefix(22) == Data("host wrote this sector".utf8))
    }

    @Test func virtioBlockReadOnlyRefusesWrites() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let disk = directory.appendingPathComponent("ro.raw")
        try Data(count: 8192).write(to: disk)
        let result = try runGuest("blk", disks: [VMConfig.Disk(path: disk.path, readOnly: true)])
        #expect(result.exit == .powerOff)
        #expect(result.serial.contains("blk: write failed"))
        #expect(try Data(contentsOf: disk) == Data(count: 8192))
    }

    @Test func virtioRNGFillsTheBuffer() throws {
        let result = try runGuest("rng", rng: true)
        #expect(result.exit == .powerOff)
        let line = try #require(result.serial.split(separator: "\n").first { $0.hasPrefix("rng bytes: ") })
        let parts = line.split(separator: " ")
        #expect(parts[2] == "32")
        #expect(parts[3].count == 64)
        #expect(parts[3] != String(repeating: "0", count: 64))
    }

    @Test func timeoutStopsAHaltedGuest() throws {
        let start = Date()
        let result = try runGuest("halt", timeout: 0.5)
        #expect(result.exit == .crashed("timeout after 0.5 s"))
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(result.serial.contains("halting, cmdline: test=halt\n"), "\(result.serial)")
    }
}
