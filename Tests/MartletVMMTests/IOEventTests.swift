import Foundation
import Testing

import MartletSystem
import MartletVMMProtocol
import Synchronization

@testable import MartletVMM

/// Exit-less virtio: queue notifications through KVM_IOEVENTFD and interrupts through
/// KVM_IRQFD, served by the devices' I/O threads, observed through the device counters.
@Suite(.serialized, .timeLimit(.minutes(30)))
struct IOEventTests {
    /// A machine running `test=NAME` on one disk of `size` bytes in a fresh directory.
    private func machine(_ test: String, directory: URL, size: Int = 1 << 20) throws -> Machine {
        let disk = directory.appendingPathComponent("disk.raw")
        try Data(count: size).write(to: disk)
        var config = VMConfig()
        config.kernel = try TestSupport.guestELF.get()
        config.cmdline = "test=\(test)"
        config.memoryMiB = 16
        config.serial = .none
        config.disks = [VMConfig.Disk(path: disk.path)]
        return try Machine(config: config)
    }

    @Test func requestsCompleteWithoutNotifyExits() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // Without EVENT_IDX, so that every completion interrupts.
        let machine = try machine("bench-blk n=500 noevent=1", directory: directory)
        #expect(try machine.run(timeout: 20) == .powerOff)
        let disk = try #require(machine.deviceCounters.first)
        #expect(disk.kind == "blk")
        #expect(disk.requests == 500, "the guest's 500 reads completed")
        #expect(disk.bytes == 500 * 4096)
        #expect(disk.notifications >= 500, "each request was notified")
        #expect(disk.notifyExits == 0, "with ioeventfd a notify is no VM exit")
        #expect(disk.interrupts >= 500, "each completion raised an interrupt through the irqfd")
    }

    @Test func eventIndexLetsAPollingGuestGoWithoutInterrupts() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // The guest accepts EVENT_IDX and keeps its used_event half the index space ahead.
        let machine = try machine("bench-blk n=3000 qd=32", directory: directory)
        #expect(try machine.run(timeout: 30) == .powerOff)
        let disk = try #require(machine.deviceCounters.first)
        #expect(disk.requests == 3000)
        #expect(disk.interrupts == 0, "used_event was never passed")
        #expect(disk.notifyExits == 0)
    }

    /// A guest that keeps 32 requests outstanding gets 32 transfers submitted at once.
    @Test func aQueueDepthOf32Is32TransfersInFlight() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let machine = try machine("bench-blk n=3200 qd=32", directory: directory)
        #expect(try machine.run(timeout: 30) == .powerOff)
        let disk = try #require(machine.virtio.first?.device as? VirtioBlock)
        #expect(disk.blockEngine == .ioUring, "\(disk.ringRefusal ?? "")")
        #expect(disk.largestInFlight == 32)
        #expect(machine.deviceCounters.first?.requests == 3200)
    }

    /// Eight requests in flight on each of four queues, written and then read back by the
    /// guest: the file holds the pattern, and the guest's checksum of what it read is the
    /// host's checksum of the file — on io_uring and on the preadv/pwritev fallback alike.
    @Test(arguments: [BlockEngine.ioUring, .sync])
    func requestsInFlightOnSeveralQueuesMatchTheHostsChecksum(engine: BlockEngine) throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let disk = directory.appendingPathComponent("disk.raw")
        try Data(count: 1 << 20).write(to: disk)
        let result = try runGuest("blk-mq", disks: [VMConfig.Disk(path: disk.path, queues: 4)], blockEngine: engine, timeout: 60)
        #expect(result.devices.first?.engine == engine.rawValue, "the disk ran on \(engine.rawValue)")
        let expected = (0..<4 * 8 * 1024).map { UInt8(truncatingIfNeeded: ($0 / 1024) * 131 + $0 % 1024) }
        let written = Array(try Data(contentsOf: disk).prefix(expected.count))
        #expect(written == expected, "the file holds what the guest wrote through the four queues")
        var sum: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in written { sum = (sum ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let hex = String(repeating: "0", count: 16 - String(sum, radix: 16).count) + String(sum, radix: 16)
        #expect(result.serial.contains("blk-mq queues=4 sum=\(hex)"), "\(result.serial)")
    }

    @Test func aDiskHasOneQueuePerVCPUUnlessConfigured() throws {
        #expect(VMConfig.Disk(path: "d").queueCount(vcpus: 3) == 3)
        #expect(VMConfig.Disk(path: "d").queueCount(vcpus: 64) == VMConfig.Disk.maxQueues)
        #expect(VMConfig.Disk(path: "d", queues: 2).queueCount(vcpus: 8) == 2)
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("disk.raw").path
        try Data(count: 65536).write(to: URL(fileURLWithPath: path))
        let device = try VirtioBlock(path: path, readOnly: false, serial: "", queues: 3)
        #expect(device.queueSizes.count == 3)
        #expect(device.features & VirtioBlock.featureMultiQueue != 0)
        #expect(device.readConfig(offset: 34, size: 2) == 3, "num_queues")
    }

    @Test func cacheNoneReadsAndWritesThroughODirect() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let disk = try blkGuestImage(in: directory)
        let result = try runGuest("blk", disks: [VMConfig.Disk(path: disk.path, cache: .none)])
        #expect(result.serial.contains("blk read: host wrote this sector"))
        #expect(result.serial.contains("blk ok"))
        #expect(try Data(contentsOf: disk).subdata(in: 512..<540) == Data("written by the martlet guest".utf8))
    }

    @Test func cacheNoneOpensTheImageWithODirect() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("disk.raw").path
        try Data(count: 65536).write(to: URL(fileURLWithPath: path))
        /// The open flags (octal, from /proc/self/fdinfo) of every descriptor on `path`.
        func flags() throws -> [Int] {
            try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").compactMap { fd in
                guard (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")) == path,
                    let info = try? String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8),
                    let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags:") })
                else { return nil }
                return Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces), radix: 8)
            }
        }
        let oDirect = 0o40000
        let writeback = try VirtioBlock(path: path, readOnly: false, serial: "")
        #expect(try flags().allSatisfy { $0 & oDirect == 0 }, "writeback bypasses nothing")
        withExtendedLifetime(writeback) {}
        let none = try VirtioBlock(path: path, readOnly: false, serial: "", direct: true)
        #expect(try flags().contains { $0 & oDirect != 0 }, "cache none holds an O_DIRECT descriptor")
        withExtendedLifetime(none) {}
    }

    @Test func theIOThreadParksWhilePaused() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let machine = try machine("bench-blk n=100000000", directory: directory)
        let outcome = Mutex<Machine.Exit?>(nil)
        let runner = Thread { outcome.withLock { $0 = try? machine.run(timeout: 30) } }
        runner.start()
        defer { machine.stop() }
        func requests() -> Int { machine.deviceCounters.first?.requests ?? 0 }

        #expect(Poll.until(timeout: 10) { requests() >= 100 }, "the guest did not start its requests")
        machine.pause()
        // `pause` returns once the vCPU and the I/O thread are parked: no request may
        // complete from here on, while a running guest completes thousands a second.
        let pausedAt = requests()
        #expect(machine.state == .paused)
        #expect(!Poll.until(timeout: 0.5) { requests() != pausedAt }, "a request completed while paused")
        machine.resume()
        #expect(Poll.until(timeout: 10) { requests() > pausedAt }, "requests did not resume")
        machine.stop()
        #expect(Poll.until(timeout: 10) { outcome.withLock { $0 } == .stopped }, "the run did not end with its threads")
    }
}
