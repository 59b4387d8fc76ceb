import Foundation
import Testing

@testable import MartletVMM

/// Drives a virtio-mmio transport the way a driver would, over plain guest memory (no KVM),
/// so that malicious descriptor chains can be written directly.
final class VirtioHarness {
    static let descriptors: UInt64 = 0x1000
    static let available: UInt64 = 0x2000
    static let used: UInt64 = 0x3000
    static let queueSize: UInt16 = 16

    let memory: GuestMemory
    let transport: VirtioMMIOTransport
    var availableIndex: UInt16 = 0

    /// `features`: the low word of what the driver accepts (VIRTIO_F_VERSION_1 always).
    init(device: VirtioDevice, features: UInt32 = 0) throws {
        memory = try GuestMemory(size: 4 << 20)
        transport = VirtioMMIOTransport(device: device, base: 0xD000_0000, irq: 5, memory: memory) { _ in }
        initialize(features: features)
    }

    /// Resets the device and sets it up with queue 0 at the harness's addresses, as a driver
    /// does when it binds.
    func initialize(features: UInt32 = 0) {
        availableIndex = 0
        transport.write(offset: 0x70, size: 4, value: 0)
        transport.write(offset: 0x70, size: 4, value: 3)
        transport.write(offset: 0x24, size: 4, value: 0)
        transport.write(offset: 0x20, size: 4, value: UInt64(features))
        transport.write(offset: 0x24, size: 4, value: 1)
        transport.write(offset: 0x20, size: 4, value: 1)  // VIRTIO_F_VERSION_1
        transport.write(offset: 0x70, size: 4, value: 11)
        transport.write(offset: 0x30, size: 4, value: 0)
        transport.write(offset: 0x38, size: 4, value: UInt64(VirtioHarness.queueSize))
        transport.write(offset: 0x80, size: 4, value: VirtioHarness.descriptors)
        transport.write(offset: 0x90, size: 4, value: VirtioHarness.available)
        transport.write(offset: 0xA0, size: 4, value: VirtioHarness.used)
        transport.write(offset: 0x44, size: 4, value: 1)
        transport.write(offset: 0x70, size: 4, value: 15)
    }

    func descriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) throws {
        try memory.writeDescriptor(UInt64(index), in: VirtioHarness.descriptors, address: address, length: length, flags: flags, next: next)
    }

    /// Makes `head` available (advancing the index by `advance`) and notifies queue 0.
    func submit(head: UInt16, advance: UInt16 = 1) throws {
        try memory.write(head, at: VirtioHarness.available + 4 + 2 * UInt64(availableIndex % VirtioHarness.queueSize))
        availableIndex &+= advance
        try memory.write(availableIndex, at: VirtioHarness.available + 2)
        transport.write(offset: 0x50, size: 4, value: 0)
    }

    var usedIndex: UInt16 { (try? memory.read(at: VirtioHarness.used + 2)) ?? 0 }
    /// Interrupts the transport raised (the device's counter).
    var interrupts: Int { transport.device.counters.interrupts.load(ordering: .relaxed) }
    /// The driver's used_event (EVENT_IDX), after the available ring.
    func setUsedEvent(_ value: UInt16) throws {
        try memory.write(value, at: VirtioHarness.available + 4 + 2 * UInt64(VirtioHarness.queueSize))
    }
    /// The device's avail_event (EVENT_IDX), after the used ring.
    var availableEvent: UInt16 { (try? memory.read(at: VirtioHarness.used + 4 + 8 * UInt64(VirtioHarness.queueSize))) ?? 0 }
    var status: UInt64 { transport.read(offset: 0x70, size: 4) }
}

struct VirtQueueTests {
    static let next: UInt16 = 1
    static let write: UInt16 = 2

    final class Disk {
        let url: URL
        init() throws {
            url = FileManager.default.temporaryDirectory.appendingPathComponent("martlet-vq-\(UUID().uuidString).raw")
            var bytes = Data("sector zero".utf8)
            bytes.append(Data(count: 8192 - bytes.count))
            try bytes.write(to: url)
        }
        deinit { try? FileManager.default.removeItem(at: url) }
        func device(readOnly: Bool = false) throws -> VirtioBlock { try VirtioBlock(path: url.path, readOnly: readOnly, serial: "vq") }
    }

    /// A blk request header (type, sector) at 0x10000.
    func header(_ harness: VirtioHarness, type: UInt32, sector: UInt64 = 0) throws {
        try harness.memory.write(type, at: 0x10000)
        try harness.memory.write(UInt32(0), at: 0x10004)
        try harness.memory.write(sector, at: 0x10008)
    }

    @Test func wellFormedReadCompletes() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 0)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0x11000, length: 512, flags: Self.next | Self.write, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
        try harness.submit(head: 0)
        #expect(harness.usedIndex == 1)
        #expect(try harness.memory.bytes(at: 0x11000, length: 11) == Array("sector zero".utf8))
        #expect(try harness.memory.read(UInt8.self, at: 0x12000) == 0)
        #expect(harness.transport.lastError == nil)
    }

    @Test func descriptorLoopIsADeviceError() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 0)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0x11000, length: 512, flags: Self.next | Self.write, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.next | Self.write, next: 1)
        try harness.submit(head: 0)
        #expect(harness.status & 0x40 != 0)
        #expect(harness.transport.lastError?.message.contains("loop") == true)
        #expect(harness.usedIndex == 0)
    }

    @Test func addressOutsideRAMIsADeviceError() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 0)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0xFFFF_FFFF_FFFF_F000, length: 512, flags: Self.next | Self.write, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
        try harness.submit(head: 0)
        #expect(harness.status & 0x40 != 0)
        #expect(harness.transport.lastError?.message.contains("outside guest RAM") == true)
    }

    @Test func overlongLengthIsADeviceError() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 0)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        // Starts inside RAM, runs past its 4 MiB end.
        try harness.descriptor(1, address: 0x3F_F000, length: 0xFFFF_F000, flags: Self.next | Self.write, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
        try harness.submit(head: 0)
        #expect(harness.status & 0x40 != 0)
        #expect(harness.transport.lastError?.message.contains("outside guest RAM") == true)
    }

    @Test func tooManyAvailableEntriesIsADeviceError() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device())
        try harness.submit(head: 0, advance: 100)
        #expect(harness.status & 0x40 != 0)
        #expect(harness.transport.lastError?.message.contains("more than the queue size") == true)
    }

    @Test func nextIndexOutsideTheTableIsADeviceError() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 0)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 200)
        try harness.submit(head: 0)
        #expect(harness.transport.lastError?.message.contains("outside the queue") == true)
    }

    @Test func wrongDirectionsAreDeviceErrors() throws {
        let disk = try Disk()
        // A read whose data buffer is device-readable: the device would have to write into it.
        var harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 0)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0x11000, length: 512, flags: Self.next, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
        try harness.submit(head: 0)
        #expect(harness.transport.lastError?.message.contains("wrong direction") == true)

        // A device-readable descriptor after a device-writable one.
        harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 1)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next | Self.write, next: 1)
        try harness.descriptor(1, address: 0x11000, length: 512, flags: Self.next, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
        try harness.submit(head: 0)
        #expect(harness.transport.lastError?.message.contains("device-readable after a device-writable") == true)

        // A writable header.
        harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 0)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next | Self.write, next: 1)
        try harness.descriptor(1, address: 0x12000, length: 1, flags: Self.write)
        try harness.submit(head: 0)
        #expect(harness.transport.lastError?.message.contains("header") == true)

        // virtio-rng handed a device-readable buffer.
        harness = try VirtioHarness(device: try VirtioRNG())
        try harness.descriptor(0, address: 0x11000, length: 64, flags: 0)
        try harness.submit(head: 0)
        #expect(harness.transport.lastError?.message.contains("device-readable") == true)
        #expect(harness.usedIndex == 0)
    }

    @Test func indirectDescriptorsAreRefused() throws {
        let harness = try VirtioHarness(device: try VirtioRNG())
        try harness.descriptor(0, address: 0x11000, length: 64, flags: 4)
        try harness.submit(head: 0)
        #expect(harness.transport.lastError?.message.contains("indirect") == true)
    }

    @Test func ringsOutsideRAMAreRefusedAtQueueReady() throws {
        let memory = try GuestMemory(size: 4 << 20)
        let transport = VirtioMMIOTransport(device: try VirtioRNG(), base: 0xD000_0000, irq: 5, memory: memory) { _ in }
        transport.write(offset: 0x30, size: 4, value: 0)
        transport.write(offset: 0x38, size: 4, value: 8)
        transport.write(offset: 0x80, size: 4, value: 0x3F_FFF0)  // table runs past the end of RAM
        transport.write(offset: 0x90, size: 4, value: 0x2000)
        transport.write(offset: 0xA0, size: 4, value: 0x3000)
        transport.write(offset: 0x44, size: 4, value: 1)
        #expect(transport.read(offset: 0x44, size: 4) == 0)
        #expect(transport.needsReset)
    }

    @Test func outOfRangeSectorGetsAnIOErrorAndTheDeviceKeepsWorking() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device())
        try header(harness, type: 0, sector: 1 << 60)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0x11000, length: 512, flags: Self.next | Self.write, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
        try harness.submit(head: 0)
        #expect(harness.usedIndex == 1)
        #expect(try harness.memory.read(UInt8.self, at: 0x12000) == 1)  // VIRTIO_BLK_S_IOERR
        #expect(harness.transport.lastError == nil)
    }

    /// A one-sector read whose chain is descriptors 0-2 (header at 0x10000).
    func readChain(_ harness: VirtioHarness) throws {
        try header(harness, type: 0)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0x11000, length: 512, flags: Self.next | Self.write, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
    }

    @Test(arguments: [
        // (event, new, old, passed): the driver wants an interrupt once the index goes past event.
        (UInt16(0), UInt16(1), UInt16(0), true),
        (0, 0, 0, false),
        (5, 5, 3, false),
        (4, 5, 3, true),
        (0xFFFF, 0x0000, 0xFFFE, true),
        (0xFFFF, 0x0001, 0xFFFE, true),
        (0x0001, 0x0001, 0xFFFF, false),
        (0x0000, 0x0001, 0xFFFF, true),
        (0x8000, 0x0010, 0x0000, false),
    ])
    func eventIndexArithmeticWraps(event: UInt16, new: UInt16, old: UInt16, passed: Bool) {
        #expect(VirtQueue.passed(event, new: new, old: old) == passed)
    }

    @Test func eventIndexIsOfferedAndTakenOnlyWhenAccepted() throws {
        let disk = try Disk()
        let plain = try VirtioHarness(device: try disk.device())
        #expect(plain.transport.offeredFeatures & VirtQueue.featureEventIndex != 0)
        #expect(!plain.transport.queues[0].eventIndex, "the driver did not accept it")
        let negotiated = try VirtioHarness(device: try disk.device(), features: 1 << 29)
        #expect(negotiated.transport.queues[0].eventIndex)
    }

    /// 70 000 requests, one at a time, take both 16-bit indices across their wrap: the device
    /// interrupts exactly when the used index passes the driver's used_event, and after each
    /// drain asks for a notification at the next available entry.
    @Test func eventIndexSuppressesInterruptsAcrossTheIndexWrap() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device(), features: 1 << 29)
        try readChain(harness)
        var expected = 0
        for request in 0..<70_000 {
            // Every third request asks for its own completion, the others for one two ahead
            // (which the next request's used_event replaces before it is reached).
            let wanted = request % 3 == 0
            try harness.setUsedEvent(harness.usedIndex &+ (wanted ? 0 : 2))
            if wanted { expected += 1 }
            try harness.submit(head: 0)
            #expect(harness.availableEvent == harness.availableIndex, "avail_event after request \(request)")
            if harness.interrupts != expected {
                Issue.record("request \(request): \(harness.interrupts) interrupts, expected \(expected)")
                return
            }
        }
        #expect(harness.usedIndex == UInt16(truncatingIfNeeded: 70_000))
        #expect(harness.transport.lastError == nil)
    }

    @Test func noInterruptFlagSuppressesInterruptsWithoutEventIndex() throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device())
        try readChain(harness)
        try harness.submit(head: 0)
        #expect(harness.interrupts == 1)
        try harness.memory.write(UInt16(1), at: VirtioHarness.available)  // VIRTQ_AVAIL_F_NO_INTERRUPT
        try harness.submit(head: 0)
        try harness.submit(head: 0)
        #expect(harness.interrupts == 1)
        #expect(harness.usedIndex == 3)
        try harness.memory.write(UInt16(0), at: VirtioHarness.available)
        try harness.submit(head: 0)
        #expect(harness.interrupts == 2)
    }

    @Test func flushCompletesOnlyAfterTheDataIsDurable() throws {
        let disk = try Disk()
        let device = try disk.device()
        let harness = try VirtioHarness(device: device)
        var usedAtSync: [UInt16] = []
        device.synchronize = { [unowned harness] fd in
            usedAtSync.append(harness.usedIndex)
            return fdatasync(fd)
        }
        try header(harness, type: 4)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0x12000, length: 1, flags: Self.write)
        try harness.memory.write(UInt8(0xFF), at: 0x12000)
        try harness.submit(head: 0)
        #expect(usedAtSync == [0], "fdatasync ran once, before the request was used")
        #expect(harness.usedIndex == 1)
        #expect(try harness.memory.read(UInt8.self, at: 0x12000) == 0)

        // A failed fdatasync is the guest's I/O error, not a success.
        device.synchronize = { _ in -1 }
        try harness.memory.write(UInt8(0xFF), at: 0x12000)
        try harness.submit(head: 0)
        #expect(harness.usedIndex == 2)
        #expect(try harness.memory.read(UInt8.self, at: 0x12000) == 1)  // VIRTIO_BLK_S_IOERR
    }

    /// Three FLUSH chains behind one notify: the device executes them all before the driver
    /// sees any (one write of the used index for the batch) and interrupts once.
    @Test func aBatchIsPublishedWithOneUsedIndexAndOneInterrupt() throws {
        let disk = try Disk()
        let device = try disk.device()
        let harness = try VirtioHarness(device: device)
        var usedAtSync: [UInt16] = []
        device.synchronize = { [unowned harness] fd in
            usedAtSync.append(harness.usedIndex)
            return fdatasync(fd)
        }
        try header(harness, type: 4)
        for chain in UInt16(0)..<3 {
            try harness.descriptor(2 * chain, address: 0x10000, length: 16, flags: Self.next, next: 2 * chain + 1)
            try harness.descriptor(2 * chain + 1, address: 0x12000 + UInt64(chain), length: 1, flags: Self.write)
            try harness.memory.write(2 * chain, at: VirtioHarness.available + 4 + 2 * UInt64(chain))
        }
        harness.availableIndex = 3
        try harness.memory.write(harness.availableIndex, at: VirtioHarness.available + 2)
        harness.transport.write(offset: 0x50, size: 4, value: 0)
        #expect(usedAtSync == [0, 0, 0], "no chain was shown before the batch ended")
        #expect(harness.usedIndex == 3)
        #expect(harness.interrupts == 1)
    }

    @Test func guestMemoryRejectsOverflowingRanges() throws {
        let memory = try GuestMemory(size: 4 << 20)
        #expect(memory.contains(0, length: 4 << 20))
        #expect(!memory.contains(1, length: 4 << 20))
        #expect(!memory.contains(UInt64.max, length: 2))
        #expect(throws: VMMError.self) { try memory.read(UInt32.self, at: (4 << 20) - 2) }
    }

    @Test func guestMemoryLeavesTheMMIOHoleUnmapped() throws {
        let memory = try GuestMemory(size: 3584 << 20)
        #expect(memory.regions.count == 2)
        #expect(memory.regions[0].size == GuestMemory.mmioHoleStart)
        #expect(memory.regions[1].guestAddress == GuestMemory.fourGiB)
        #expect(!memory.contains(GuestMemory.mmioHoleStart, length: 1))
        #expect(memory.contains(GuestMemory.fourGiB, length: 4096))
    }
}
