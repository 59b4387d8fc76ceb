import Foundation
import Testing

@testable import MartletVMM

/// virtio-net's receive into the guest's chains, with and without VIRTIO_NET_F_MRG_RXBUF,
/// on a bare receive queue in guest memory (the tap's side is NetTests').
struct NetReceiveTests {
    static let descriptors: UInt64 = 0x1000
    static let available: UInt64 = 0x2000
    static let used: UInt64 = 0x3000

    final class Ring {
        let memory: GuestMemory
        let queue: VirtQueue
        var availableIndex: UInt16 = 0

        init(size: UInt16) throws {
            memory = try GuestMemory(size: 2 << 20)
            queue = VirtQueue(maxSize: 256)
            queue.size = size
            queue.descriptorTable = NetReceiveTests.descriptors
            queue.availableRing = NetReceiveTests.available
            queue.usedRing = NetReceiveTests.used
            try queue.validate(memory)
            queue.ready = true
        }

        /// Makes descriptor `index` available: one buffer of `length` bytes at 0x10000 + index
        /// pages, writable unless `readable`.
        func post(_ index: UInt16, length: UInt32, readable: Bool = false) throws {
            let base = NetReceiveTests.descriptors + 16 * UInt64(index)
            try memory.write(Self.buffer(index), at: base)
            try memory.write(length, at: base + 8)
            try memory.write(UInt16(readable ? 0 : 2), at: base + 12)
            try memory.write(UInt16(0), at: base + 14)
            try memory.write(index, at: NetReceiveTests.available + 4 + 2 * UInt64(availableIndex % queue.size))
            availableIndex &+= 1
            try memory.write(availableIndex, at: NetReceiveTests.available + 2)
        }

        static func buffer(_ index: UInt16) -> UInt64 { 0x10000 + 0x1000 * UInt64(index) }

        /// The used ring's entries `0..<count`: (head, length).
        func usedEntries(_ count: Int) throws -> [(UInt16, UInt32)] {
            try (0..<count).map { entry in
                let base = NetReceiveTests.used + 4 + 8 * UInt64(entry)
                return (UInt16(try memory.read(UInt32.self, at: base)), try memory.read(UInt32.self, at: base + 4))
            }
        }
    }

    /// A frame as the tap hands it over: a 12-byte header (num_buffers 0), then `body` bytes
    /// counting up.
    func frame(body: Int) -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: VirtioNet.headerSize)
        frame[0] = 1  // NEEDS_CSUM, to see the header kept
        frame += (0..<body).map { UInt8(truncatingIfNeeded: $0) }
        return frame
    }

    @Test func mergeableBuffersTakeAFrameAcrossChainsAndCountThem() throws {
        let ring = try Ring(size: 8)
        for index in 0..<4 { try ring.post(UInt16(index), length: 100) }
        let frame = frame(body: 250)  // 262 bytes: 100 + 100 + 62
        let delivered = try VirtioNet.receive(frame[...], into: ring.queue, memory: ring.memory, mergeable: true)
        #expect(delivered == 262)
        let entries = try ring.usedEntries(3)
        #expect(entries.map(\.0) == [0, 1, 2])
        #expect(entries.map(\.1) == [100, 100, 62])
        let first = try ring.memory.bytes(at: Ring.buffer(0), length: 100)
        #expect(first[0] == 1)
        #expect(UInt16(first[10]) | UInt16(first[11]) << 8 == 3, "num_buffers")
        var received = Array(first.dropFirst(VirtioNet.headerSize))
        received += try ring.memory.bytes(at: Ring.buffer(1), length: 100)
        received += try ring.memory.bytes(at: Ring.buffer(2), length: 62)
        #expect(received == Array(frame.dropFirst(VirtioNet.headerSize)))
        // The fourth chain is still the guest's.
        #expect(ring.queue.nextAvailable == 3)
    }

    @Test func withoutMergeableBuffersAFrameIsCutToOneChain() throws {
        let ring = try Ring(size: 8)
        for index in 0..<2 { try ring.post(UInt16(index), length: 100) }
        let delivered = try VirtioNet.receive(frame(body: 250)[...], into: ring.queue, memory: ring.memory)
        #expect(delivered == 100)
        #expect(try ring.usedEntries(1).map(\.1) == [100])
        let first = try ring.memory.bytes(at: Ring.buffer(0), length: 12)
        #expect(UInt16(first[10]) | UInt16(first[11]) << 8 == 1, "num_buffers is 1 without MRG_RXBUF")
        #expect(ring.queue.nextAvailable == 1)
    }

    @Test func tooFewChainsWaitWithNothingUsedThenTheFrameFits() throws {
        let ring = try Ring(size: 8)
        for index in 0..<2 { try ring.post(UInt16(index), length: 100) }
        let frame = frame(body: 250)
        #expect(try VirtioNet.receive(frame[...], into: ring.queue, memory: ring.memory, mergeable: true) == nil)
        #expect(ring.queue.nextAvailable == 0, "the two chains were given back")
        #expect(ring.queue.completed == 0)
        try ring.post(2, length: 100)
        #expect(try VirtioNet.receive(frame[...], into: ring.queue, memory: ring.memory, mergeable: true) == 262)
        #expect(try ring.usedEntries(3).map(\.0) == [0, 1, 2])
    }

    @Test func aFrameLargerThanTheWholeRingIsDropped() throws {
        let ring = try Ring(size: 2)
        for index in 0..<2 { try ring.post(UInt16(index), length: 100) }
        #expect(try VirtioNet.receive(frame(body: 250)[...], into: ring.queue, memory: ring.memory, mergeable: true) == 0)
        #expect(ring.queue.completed == 0)
        #expect(ring.queue.nextAvailable == 0)
        // The ring still serves a frame that fits.
        #expect(try VirtioNet.receive(frame(body: 50)[...], into: ring.queue, memory: ring.memory, mergeable: true) == 62)
    }

    @Test func hostileReceiveChainsThrow() throws {
        let short = try Ring(size: 8)
        try short.post(0, length: 8)
        try short.post(1, length: 100)
        #expect(throws: VMMError.self) { try VirtioNet.receive(frame(body: 50)[...], into: short.queue, memory: short.memory, mergeable: true) }
        #expect(short.queue.completed == 0)

        let readable = try Ring(size: 8)
        try readable.post(0, length: 100)
        try readable.post(1, length: 100, readable: true)
        #expect(throws: VMMError.self) { try VirtioNet.receive(frame(body: 150)[...], into: readable.queue, memory: readable.memory, mergeable: true) }
        #expect(readable.queue.completed == 0)
    }
}
