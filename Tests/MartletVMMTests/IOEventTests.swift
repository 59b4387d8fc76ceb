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
        let machine = try machine("bench-blk n=500", directory: directory)
        #expect(try machine.run(timeout: 20) == .powerOff)
        let disk = try #require(machine.deviceCounters.first)
        #expect(disk.kind == "blk")
        #expect(disk.requests == 500, "the guest's 500 reads completed")
        #expect(disk.bytes == 500 * 4096)
        #expect(disk.notifications >= 500, "each request was notified")
        #expect(disk.notifyExits == 0, "with ioeventfd a notify is no VM exit")
        #expect(disk.interrupts >= 500, "each completion raised an interrupt through the irqfd")
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
