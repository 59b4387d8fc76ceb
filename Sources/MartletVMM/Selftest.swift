import MartletSystem
import MartletVMMProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// `martlet-vmm selftest`: boots the built-in guest through the normal boot path with a
/// virtio-blk disk on a temporary file, and checks its serial output and what it wrote.
public enum Selftest {
    public struct Report: Sendable {
        public var passed: Bool
        public var checks: [(name: String, passed: Bool)]
        public var serial: String
        public var exit: String
        public var milliseconds: Double
    }

    static let marker = "MARTLET-SELFTEST-SECTOR-0"
    static let guestWrote = "written by the martlet guest"

    public static func run(timeout: Double = 20) throws -> Report {
        var template = Array("/tmp/martlet-selftest-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw VMMError(.io, "selftest: cannot create a temporary disk in /tmp: \(errnoText(errno))") }
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer {
            close(fd)
            unlink(path)
        }
        var sector = [UInt8](repeating: 0, count: 4096)
        for (index, byte) in (marker + "\n").utf8.enumerated() { sector[index] = byte }
        guard pwrite(fd, sector, sector.count, 0) == sector.count else {
            throw VMMError(.io, "selftest: cannot write the temporary disk '\(path)': \(errnoText(errno))")
        }

        var config = VMConfig()
        config.kernel = "(built-in selftest guest)"
        config.memoryMiB = 16
        config.cmdline = "test=selftest"
        config.disks = [VMConfig.Disk(path: path, id: "selftest")]
        config.serial = .none
        var output: [UInt8] = []
        let lock = ConditionLock()
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        let machine = try Machine(config: config, kernelOverride: KernelImage(flat: SelftestGuest.bytes)) { byte in
            lock.withLock { output.append(byte) }
        }
        let exit = try machine.run(timeout: timeout)
        var end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &end)
        let serial = lock.withLock { String(decoding: output, as: UTF8.self) }

        var written = [UInt8](repeating: 0, count: guestWrote.utf8.count)
        let readBack = pread(fd, &written, written.count, 512)
        let checks: [(String, Bool)] = [
            ("guest started and printed on the serial console", serial.contains("martlet test guest: test=selftest")),
            ("guest read sector 0 through virtio-blk", serial.contains("blk read: \(marker)")),
            ("guest saw the disk id", serial.contains("blk id: selftest")),
            ("guest's write reached the file", readBack == written.count && written == Array(guestWrote.utf8)),
            ("guest powered off through ACPI S5", exit == .powerOff),
        ]
        let milliseconds = Double(end.tv_sec - start.tv_sec) * 1000 + Double(end.tv_nsec - start.tv_nsec) / 1e6
        return Report(passed: checks.allSatisfy(\.1), checks: checks, serial: serial, exit: "\(exit)", milliseconds: milliseconds)
    }
}
