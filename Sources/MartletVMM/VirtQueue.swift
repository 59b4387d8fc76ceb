import Synchronization

/// One element of a descriptor chain, already checked to lie inside guest RAM.
public struct DescriptorBuffer: Equatable {
    public var address: UInt64
    public var length: UInt32
    public var writable: Bool
}

/// A descriptor chain popped from the available ring: its head index and its buffers,
/// device-readable ones first, then device-writable ones (the order the spec requires).
public struct DescriptorChain {
    public var head: UInt16
    public var buffers: [DescriptorBuffer]
    public var readable: [DescriptorBuffer] { buffers.filter { !$0.writable } }
    public var writable: [DescriptorBuffer] { buffers.filter(\.writable) }
}

/// A split virtqueue in guest memory. Everything read from the rings is untrusted: indices,
/// chain links, addresses and lengths are checked, and a malformed chain is a device error.
public final class VirtQueue {
    static let descriptorNext: UInt16 = 1
    static let descriptorWrite: UInt16 = 2
    static let descriptorIndirect: UInt16 = 4
    static let availableNoInterrupt: UInt16 = 1
    /// The feature bit VIRTIO_RING_F_EVENT_IDX.
    static let featureEventIndex: UInt64 = 1 << 29
    /// The feature bit VIRTIO_RING_F_INDIRECT_DESC.
    static let featureIndirect: UInt64 = 1 << 28
    /// Entries of one indirect table at most: Linux's largest (a block request of 256
    /// segments and its header and status, a network frame's pages) stay far below it.
    static let maxIndirectEntries: UInt64 = 1024

    public let maxSize: UInt16
    public var size: UInt16
    public var ready = false
    public var descriptorTable: UInt64 = 0
    public var availableRing: UInt64 = 0
    public var usedRing: UInt64 = 0
    public private(set) var nextAvailable: UInt16 = 0
    private var nextUsed: UInt16 = 0
    /// VIRTIO_RING_F_EVENT_IDX negotiated: the driver says after which used entry it wants an
    /// interrupt (used_event, after the available ring) and the device after which available
    /// entry it wants a notification (avail_event, after the used ring), instead of the flags.
    public var eventIndex = false
    /// VIRTIO_RING_F_INDIRECT_DESC negotiated: a chain's head may point at a table of
    /// descriptors in guest RAM instead of the ring's own, so a request of many buffers takes
    /// one entry of the ring (Linux uses it for every chain of more than one buffer).
    public var indirect = false
    /// The used index the driver was last shown (by `publishUsed`).
    private var signalledUsed: UInt16 = 0
    /// Chains returned through the used ring since the queue was made; a reset keeps it (a
    /// counter for `info`).
    public private(set) var completed = 0

    public init(maxSize: UInt16) {
        self.maxSize = maxSize
        self.size = maxSize
    }

    public func reset() {
        ready = false
        size = maxSize
        descriptorTable = 0
        availableRing = 0
        usedRing = 0
        nextAvailable = 0
        nextUsed = 0
        eventIndex = false
        indirect = false
        signalledUsed = 0
    }

    /// Checks the size and that the three rings lie inside guest RAM (when the driver sets QueueReady).
    public func validate(_ memory: GuestMemory) throws {
        guard size > 0, size <= maxSize, size & (size - 1) == 0 else {
            throw VMMError(.device, "queue size \(size) is not a power of two between 1 and \(maxSize)")
        }
        let count = UInt64(size)
        guard memory.contains(descriptorTable, length: 16 * count), descriptorTable % 16 == 0,
            memory.contains(availableRing, length: 6 + 2 * count), availableRing % 2 == 0,
            memory.contains(usedRing, length: 6 + 8 * count), usedRing % 4 == 0
        else {
            throw VMMError(.device, "virtqueue rings (desc 0x\(String(descriptorTable, radix: 16)), avail 0x\(String(availableRing, radix: 16)), used 0x\(String(usedRing, radix: 16))) are misaligned or outside guest RAM")
        }
    }

    /// The next available chain, or nil when the driver has not made one available.
    /// With EVENT_IDX an empty ring asks the driver to notify for the next entry it makes
    /// available, and is checked once more after that, so an entry made available meanwhile
    /// is not left waiting for a notification the driver will not send.
    public func pop(_ memory: GuestMemory) throws -> DescriptorChain? {
        var availableIndex: UInt16 = try memory.read(at: availableRing + 2)
        if availableIndex == nextAvailable && eventIndex {
            try memory.write(nextAvailable, at: usedRing + 4 + 8 * UInt64(size))
            atomicMemoryFence(ordering: .sequentiallyConsistent)
            availableIndex = try memory.read(at: availableRing + 2)
        }
        let pending = availableIndex &- nextAvailable
        if pending == 0 { return nil }
        guard pending <= size else {
            throw VMMError(.device, "available index \(availableIndex) ran \(pending) entries ahead of the device, more than the queue size \(size)")
        }
        let head: UInt16 = try memory.read(at: availableRing + 4 + 2 * UInt64(nextAvailable % size))
        nextAvailable &+= 1
        var buffers: [DescriptorBuffer] = []
        // The table the chain is walked in: the ring's, or an indirect one its head names.
        var table = descriptorTable
        var entries = UInt64(size)
        var inIndirect = false
        var index = head
        var total: UInt64 = 0
        while true {
            guard UInt64(index) < entries else {
                throw VMMError(.device, "descriptor index \(index) is outside the \(inIndirect ? "indirect table" : "queue") of \(entries)")
            }
            guard buffers.count < Int(entries) else {
                throw VMMError(.device, "descriptor chain from \(head) is longer than its table (a loop)")
            }
            let descriptor = table + 16 * UInt64(index)
            let address: UInt64 = try memory.read(at: descriptor)
            let length: UInt32 = try memory.read(at: descriptor + 8)
            let flags: UInt16 = try memory.read(at: descriptor + 12)
            let next: UInt16 = try memory.read(at: descriptor + 14)
            if flags & VirtQueue.descriptorIndirect != 0 {
                // Only as the whole chain in the ring (what the spec lets a driver send and
                // what every driver does): never inside a table, never with NEXT.
                guard indirect else {
                    throw VMMError(.device, "descriptor \(index) is indirect, a feature not negotiated")
                }
                guard !inIndirect, buffers.isEmpty, flags & VirtQueue.descriptorNext == 0 else {
                    throw VMMError(.device, "indirect descriptor \(index) is inside a table or chained (NEXT); only a chain's only descriptor may be indirect")
                }
                guard length > 0, length % 16 == 0, UInt64(length) / 16 <= VirtQueue.maxIndirectEntries,
                    memory.contains(address, length: UInt64(length))
                else {
                    throw VMMError(.device, "indirect table of descriptor \(index) (0x\(String(address, radix: 16))+\(length)) is not 1...\(VirtQueue.maxIndirectEntries) descriptors inside guest RAM")
                }
                table = address
                entries = UInt64(length) / 16
                inIndirect = true
                index = 0
                continue
            }
            guard memory.contains(address, length: UInt64(length)) else {
                throw VMMError(.device, "descriptor \(index) points outside guest RAM (0x\(String(address, radix: 16))+\(length))")
            }
            let writable = flags & VirtQueue.descriptorWrite != 0
            if !writable, buffers.last?.writable == true {
                throw VMMError(.device, "descriptor \(index) is device-readable after a device-writable one")
            }
            total += UInt64(length)
            guard total <= UInt64(UInt32.max) else {
                throw VMMError(.device, "descriptor chain from \(head) is longer than 4 GiB")
            }
            buffers.append(DescriptorBuffer(address: address, length: length, writable: writable))
            guard flags & VirtQueue.descriptorNext != 0 else { break }
            index = next
        }
        return DescriptorChain(head: head, buffers: buffers)
    }

    /// Gives back the last `count` chains popped and not pushed: the next pops return them
    /// again. For a receive that found too few buffers for a whole frame and waits for more.
    public func rewind(_ count: Int) {
        precondition(count >= 0 && count <= Int(size), "rewinding \(count) chains of a queue of \(size)")
        nextAvailable &-= UInt16(count)
    }

    /// Returns a chain to the driver through the used ring with `length` bytes written; the
    /// driver sees it once `publishUsed` moved the used index.
    public func push(_ memory: GuestMemory, head: UInt16, length: UInt32) throws {
        let element = usedRing + 4 + 8 * UInt64(nextUsed % size)
        try memory.write(UInt32(head), at: element)
        try memory.write(length, at: element + 4)
        nextUsed &+= 1
        completed += 1
    }

    /// Whether chains were pushed that `publishUsed` has not shown the driver yet.
    public var hasUnpublished: Bool { nextUsed != signalledUsed }

    /// Makes the chains pushed since the last call visible to the driver, with one write of
    /// the used index for the whole batch, and says whether the driver wants an interrupt for
    /// them: with EVENT_IDX when the used index passed its used_event, else unless it set
    /// VIRTQ_AVAIL_F_NO_INTERRUPT. Both fields are the driver's to write: any value is valid.
    public func publishUsed(_ memory: GuestMemory) throws -> Bool {
        let old = signalledUsed
        guard nextUsed != old else { return false }
        signalledUsed = nextUsed
        try memory.write(nextUsed, at: usedRing + 2)
        // The used index must be visible before the driver's wish is read (the driver
        // writes its wish, then reads the used index).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            let usedEvent: UInt16 = try memory.read(at: availableRing + 4 + 2 * UInt64(size))
            return VirtQueue.passed(usedEvent, new: nextUsed, old: old)
        }
        let flags: UInt16 = try memory.read(at: availableRing)
        return flags & VirtQueue.availableNoInterrupt == 0
    }

    /// vring_need_event of the virtio spec: whether an index moving from `old` to `new` passed
    /// `event`, in 16-bit arithmetic that wraps.
    static func passed(_ event: UInt16, new: UInt16, old: UInt16) -> Bool {
        new &- event &- 1 < new &- old
    }
}
