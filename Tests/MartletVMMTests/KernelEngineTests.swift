import Foundation
import Testing

@testable import MartletVMM

/// What the transport owes a device whose queues a kernel engine (vhost-net) serves: the
/// rings at DRIVER_OK, their release on a reset, and an InterruptStatus the driver will act on
/// although the kernel interrupts without the transport. This machine has no /dev/vhost-net;
/// the nested test runs the real engine.
struct KernelEngineTests {
    /// A device that records what the transport tells it and claims the queues once ready.
    final class EngineRecorder: VirtioDevice {
        let deviceID: UInt32 = 1
        let kind = "net"
        let counters = VirtioCounters()
        let features: UInt64 = 1 << 5
        let queueSizes: [UInt16] = [VirtioHarness.queueSize, VirtioHarness.queueSize]
        var readyFeatures: [UInt64] = []
        var resets = 0
        var servedInKernel = false

        func readConfig(offset: Int, size: Int) -> UInt64 { 0 }
        func process(queue: Int, _ virtQueue: VirtQueue, memory: GuestMemory) throws -> Bool { false }
        func driverReady(features: UInt64, queues: [VirtQueue], memory: GuestMemory) {
            readyFeatures.append(features)
            servedInKernel = queues[0].ready
        }
        func reset() {
            resets += 1
            servedInKernel = false
        }
        var engine: String? { servedInKernel ? "vhost-net" : "userspace" }
    }

    @Test func driverOKHandsTheRingsOverOnceAndAResetTakesThemBack() throws {
        let device = EngineRecorder()
        let harness = try VirtioHarness(device: device, features: 1 << 5)
        #expect(device.readyFeatures == [VirtioMMIOTransport.versionOne | (1 << 5)])
        #expect(device.servedInKernel, "the queue was not ready when the device was told")
        #expect(harness.transport.report.engine == "vhost-net")
        // Writing the status again with DRIVER_OK still set is no second hand-over.
        harness.transport.write(offset: 0x70, size: 4, value: 15)
        #expect(device.readyFeatures.count == 1)
        let resetsBefore = device.resets
        harness.transport.write(offset: 0x70, size: 4, value: 0)
        #expect(device.resets == resetsBefore + 1)
        #expect(harness.transport.report.engine == "userspace")
    }

    @Test func interruptStatusShowsTheRingBitWhileTheKernelServes() throws {
        let device = EngineRecorder()
        let harness = try VirtioHarness(device: device)
        #expect(harness.transport.read(offset: 0x60, size: 4) == 1)
        // The driver acknowledges; the next irqfd interrupt must still read as a ring event.
        harness.transport.write(offset: 0x64, size: 4, value: 1)
        #expect(harness.transport.read(offset: 0x60, size: 4) == 1)
        device.servedInKernel = false
        #expect(harness.transport.read(offset: 0x60, size: 4) == 0)
    }

    @Test func somethingElseAtTheVhostPathIsRefusedNamingIt() throws {
        let memory = try GuestMemory(size: 4 << 20)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("martlet-vhost-\(UUID().uuidString)")
        try Data("not a device".utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        #expect(throws: VMMError(.io, "'\(file.path)' is not a character device; vhost-net is /dev/vhost-net, made by the vhost_net module")) {
            try VhostNet(path: file.path, memory: memory)
        }
        #expect(throws: VMMError(.io, "VHOST_SET_OWNER on '/dev/null' failed: \(errnoText(ENOTTY))")) {
            try VhostNet(path: "/dev/null", memory: memory)
        }
    }
}
