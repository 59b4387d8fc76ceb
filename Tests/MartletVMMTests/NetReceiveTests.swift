import Foundation
import Testing

@testable import MartletVMM

/// virtio-net's receive into the guest's chains, with and without VIRTIO_NET_F_MRG_RXBUF,
/// on a bare receive queue in guest memory (the tap's side is NetTests').
struct NetReceiveTests {
    /// Makes descriptor `index` of `ring` available: one buffer of `length` bytes at
    /// `buffer(index)`, writable unless `readable`.
    func post(_ ring: BareRing, _ index: UInt16, length: UInt32, readable: Bool = false) throws {
        try ring.descriptor(index, address: Self.buffer(index), length: length, flags: readable ? 0 : 2)
        try ring.makeAvailable(index)
    }

    static func buffer(_ index: UInt16) -> UInt64 { 0x10000 + 0x1000 * UInt64(index) }

    /// A frame as the tap hands it over: a 12-byte header (num_buffers 0), then `body` bytes
    /// counting up.
    func frame(body: Int) -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: VirtioNet.headerSize)
        frame[0] = 1  // NEEDS_CSUM, to see the header kept
        frame += (0..<body).map { UInt8(truncatingIfNeeded: $0) }
        return frame
    }

    @Test func mergeableBuffersTakeAFrameAcrossChainsAndCountThem() throws {
        let ring = try BareRing(size: 8)
        for index in 0..<4 { try post(ring, UInt16(index), length: 100) }
        let frame = frame(body: 250)  // 262 bytes: 100 + 100 + 62
        let delivered = try VirtioNet.receive(frame[...], into: ring.queue, memory: ring.memory, mergeable: true)
        #expect(delivered == 262)
        let entries = try ring.usedEntries(3)
        #expect(entries.map(\.head) == [0, 1, 2])
        #expect(entries.map(\.length) == [100, 100, 62])
        let first = try ring.memory.bytes(at: Self.buffer(0), length: 100)
        #expect(first[0] == 1)
        #expect(UInt16(first[10]) | UInt16(first[11]) << 8 == 3, "num_buffers")
        var received = Array(first.dropFirst(VirtioNet.headerSize))
        received += try ring.memory.bytes(at: Self.buffer(1), length: 100)
        received += try ring.memory.bytes(at: Self.buffer(2), length: 62)
        #expect(received == Array(frame.dropFirst(VirtioNet.headerSize)))
        // The fourth chain is still the guest's.
        #expect(ring.queue.nextAvailable == 3)
    }

    @Test func withoutMergeableBuffersAFrameIsCutToOneChain() throws {
        let ring = try BareRing(size: 8)
        for index in 0..<2 { try post(ring, UInt16(index), length: 100) }
        let delivered = try VirtioNet.receive(frame(body: 250)[...], into: ring.queue, memory: ring.memory)
        #expect(delivered == 100)
        #expect(try ring.usedEntries(1).map(\.length) == [100])
        let first = try ring.memory.bytes(at: Self.buffer(0), length: 12)
        #expect(UInt16(first[10]) | UInt16(first[11]) << 8 == 1, "num_buffers is 1 without MRG_RXBUF")
        #expect(ring.queue.nextAvailable == 1)
    }

    @Test func tooFewChainsWaitWithNothingUsedThenTheFrameFits() throws {
        let ring = try BareRing(size: 8)
        for index in 0..<2 { try post(ring, UInt16(index), length: 100) }
        let frame = frame(body: 250)
        #expect(try VirtioNet.receive(frame[...], into: ring.queue, memory: ring.memory, mergeable: true) == nil)
        #expect(ring.queue.nextAvailable == 0, "the two chains were given back")
        #expect(ring.queue.completed == 0)
        try post(ring, 2, length: 100)
        #expect(try VirtioNet.receive(frame[...], into: ring.queue, memory: ring.memory, mergeable: true) == 262)
        #expect(try ring.usedEntries(3).map(\.head) == [0, 1, 2])
    }

    @Test func aFrameLargerThanTheWholeRingIsDropped() throws {
        let ring = try BareRing(size: 2)
        for index in 0..<2 { try post(ring, UInt16(index), length: 100) }
        #expect(try VirtioNet.receive(frame(body: 250)[...], into: ring.queue, memory: ring.memory, mergeable: true) == 0)
        #expect(ring.queue.completed == 0)
        #expect(ring.queue.nextAvailable == 0)
        // The ring still serves a frame that fits.
        #expect(try VirtioNet.receive(frame(body: 50)[...], into: ring.queue, memory: ring.memory, mergeable: true) == 62)
    }

    @Test func hostileReceiveChainsThrow() throws {
        let short = try BareRing(size: 8)
        try post(short, 0, length: 8)
        try post(short, 1, length: 100)
        #expect(throws: VMMError.self) { try VirtioNet.receive(frame(body: 50)[...], into: short.queue, memory: short.memory, mergeable: true) }
        #expect(short.queue.completed == 0)

        let readable = try BareRing(size: 8)
        try post(readable, 0, length: 100)
        try post(readable, 1, length: 100, readable: true)
        #expect(throws: VMMError.self) { try VirtioNet.receive(frame(body: 150)[...], into: readable.queue, memory: readable.memory, mergeable: true) }
        #expect(readable.queue.completed == 0)
    }
}
