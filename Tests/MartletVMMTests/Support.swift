import Foundation
import Synchronization
import Testing

import MartletSystem
import MartletVMMProtocol

@testable import MartletVMM

/// Paths and helpers shared by the VMM tests.
enum TestSupport {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let guestDirectory = repository.appendingPathComponent("Sources/MartletVMM/Guest")
    static let debianKernel = "/var/cache/martlet/kernel/vmlinuz"

    /// A fresh temporary directory, removed by the caller.
    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("martlet-vmm-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Runs a program, returning its exit status and combined output.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], timeout: Double = 60, input: String? = nil) throws -> (status: Int32, output: String) {
        let result = try ChildProcess.run([executable] + arguments, input: Array((input ?? "").utf8), timeout: timeout)
        if case .timedOut = result.termination {
            Issue.record("\(executable) \(arguments.joined(separator: " ")) \(result.termination)")
        }
        return (result.status, result.stdout + result.stderr)
    }

    /// The test guest ELF, built once with gcc by the guest's build script.
    static let guestELF: Result<String, Error> = {
        Result {
            let directory = try temporaryDirectory()
            let elf = directory.appendingPathComponent("guest.elf").path
            let result = try run("/bin/bash", [guestDirectory.appendingPathComponent("build.sh").path, elf])
            guard result.status == 0 else { throw VMMError(.boot, "building the test guest failed: \(result.output)") }
            return elf
        }
    }()

    /// The martlet-vmm executable next to the test bundle (swift test builds it too).
    static var vmmBinary: String {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [bundle, bundle.deletingLastPathComponent()] {
            let path = candidate.appendingPathComponent("martlet-vmm").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return repository.appendingPathComponent(".build/debug/martlet-vmm").path
    }

    /// `martlet-vmm control SOCKET state` until it answers (the socket file appears at bind,
    /// a moment before the VMM listens, so one early attempt may be refused): its last result.
    static func controlState(_ socket: String, timeout: Double = 10) throws -> (status: Int32, output: String) {
        var result = try run(vmmBinary, ["control", socket, "state"])
        _ = Poll.until(timeout: timeout) {
            if result.status == 0 { return true }
            result = (try? run(vmmBinary, ["control", socket, "state"])) ?? result
            return result.status == 0
        }
        return result
    }
}

/// Collects a guest's serial output.
final class SerialCapture: Sendable {
    private let bytes = Mutex<[UInt8]>([])

    func append(_ byte: UInt8) {
        bytes.withLock { $0.append(byte) }
    }

    var text: String {
        bytes.withLock { String(decoding: $0, as: UTF8.self) }
    }
}

/// A 64 KiB disk image in `directory` whose first sector starts with the line the `blk`
/// guest reads back ("host wrote this sector").
func blkGuestImage(in directory: URL) throws -> URL {
    let disk = directory.appendingPathComponent("disk.raw")
    var image = Data("host wrote this sector\n".utf8)
    image.append(Data(count: 64 * 1024 - image.count))
    try image.write(to: disk)
    return disk
}

/// Boots the test guest in-process with `test=NAME` and returns how it ended, what it printed
/// and its devices' counters.
func runGuest(_ test: String, vcpus: Int = 1, memoryMiB: Int = 32, disks: [VMConfig.Disk] = [], rng: Bool = false, apStart: VMConfig.APStart = .sipi, blockEngine: BlockEngine = .ioUring, timeout: Double = 20) throws -> (exit: Machine.Exit, serial: String, devices: [ControlReply.Device]) {
    var config = VMConfig()
    config.kernel = try TestSupport.guestELF.get()
    config.cmdline = "test=\(test)"
    config.vcpus = vcpus
    config.memoryMiB = memoryMiB
    config.disks = disks
    config.rng = rng
    config.apStart = apStart
    config.serial = .none
    let capture = SerialCapture()
    let machine = try Machine(config: config, blockEngine: blockEngine) { capture.append($0) }
    let exit = try machine.run(timeout: timeout)
    return (exit, capture.text, machine.deviceCounters)
}

/// One virtqueue in plain guest memory, without a transport, for device code that takes a
/// `VirtQueue` directly (receive, control): descriptors at 0x1000, the available ring at
/// 0x2000, the used ring at 0x3000.
final class BareRing {
    let memory: GuestMemory
    let queue: VirtQueue
    var availableIndex: UInt16 = 0

    init(size: UInt16, memoryMiB: Int = 4) throws {
        memory = try GuestMemory(size: UInt64(memoryMiB) << 20)
        queue = VirtQueue(maxSize: 256)
        queue.size = size
        queue.descriptorTable = 0x1000
        queue.availableRing = 0x2000
        queue.usedRing = 0x3000
        try queue.validate(memory)
        queue.ready = true
    }

    func descriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) throws {
        try memory.writeDescriptor(UInt64(index), in: queue.descriptorTable, address: address, length: length, flags: flags, next: next)
    }

    /// Puts `head` in the available ring and moves its index past it.
    func makeAvailable(_ head: UInt16) throws {
        try memory.write(head, at: queue.availableRing + 4 + 2 * UInt64(availableIndex % queue.size))
        availableIndex &+= 1
        try memory.write(availableIndex, at: queue.availableRing + 2)
    }

    /// The used ring's entries `0..<count`: (head, length).
    func usedEntries(_ count: Int) throws -> [(head: UInt16, length: UInt32)] {
        try (0..<count).map { entry in
            let base = queue.usedRing + 4 + 8 * UInt64(entry)
            return (UInt16(try memory.read(UInt32.self, at: base)), try memory.read(UInt32.self, at: base + 4))
        }
    }
}

extension GuestMemory {
    /// Writes entry `index` of the descriptor table at `table` (the ring's or an indirect one),
    /// as a driver lays it out: address, length, flags, next.
    func writeDescriptor(_ index: UInt64, in table: UInt64, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) throws {
        let base = table + 16 * index
        try write(address, at: base)
        try write(length, at: base + 8)
        try write(flags, at: base + 12)
        try write(next, at: base + 14)
    }
}
