import Foundation
import Testing

@testable import MartletVMM

/// virtio-blk DISCARD and WRITE_ZEROES on an image file, driven through the transport like a
/// driver would (no KVM), checked on the file itself.
struct BlockReleaseTests {
    static let next: UInt16 = 1
    static let write: UInt16 = 2
    static let discard: UInt32 = 11
    static let writeZeroes: UInt32 = 13

    /// A 1 MiB image of 0xAA bytes, fully allocated.
    final class Image {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("martlet-release-\(UUID().uuidString).raw")
        init() throws { try Data(repeating: 0xAA, count: 1 << 20).write(to: url) }
        deinit { try? FileManager.default.removeItem(at: url) }
        var allocatedBlocks: Int {
            var info = stat()
            return stat(url.path, &info) == 0 ? Int(info.st_blocks) : -1
        }
        var bytes: Data { (try? Data(contentsOf: url)) ?? Data() }
    }

    /// Sends one DISCARD or WRITE_ZEROES request for `count` sectors at `sector`; returns its status byte.
    func release(_ harness: VirtioHarness, type: UInt32, sector: UInt64, count: UInt32, flags: UInt32 = 0) throws -> UInt8 {
        try harness.memory.write(type, at: 0x10000)
        try harness.memory.write(UInt32(0), at: 0x10004)
        try harness.memory.write(UInt64(0), at: 0x10008)
        try harness.memory.write(sector, at: 0x11000)
        try harness.memory.write(count, at: 0x11008)
        try harness.memory.write(flags, at: 0x1100C)
        try harness.memory.write(UInt8(0xFF), at: 0x12000)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0x11000, length: 16, flags: Self.next, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
        let before = harness.usedIndex
        try harness.submit(head: 0)
        #expect(harness.usedIndex == before &+ 1, "the request completed")
        #expect(harness.transport.lastError == nil)
        return try harness.memory.read(at: 0x12000)
    }

    @Test func discardMakesTheFileSparseAgain() throws {
        let image = try Image()
        let harness = try VirtioHarness(device: try VirtioBlock(path: image.url.path, readOnly: false, serial: ""))
        let allocated = image.allocatedBlocks
        #expect(allocated >= 2048, "the image starts fully allocated (\(allocated) blocks)")
        #expect(try release(harness, type: Self.discard, sector: 512, count: 1024) == 0)
        // 512 KiB in 512-byte st_blocks units is 1024; the file system may keep a block at an edge.
        #expect(image.allocatedBlocks <= allocated - 1000, "st_blocks \(allocated) -> \(image.allocatedBlocks)")
        #expect(image.bytes.prefix(256 << 10) == Data(repeating: 0xAA, count: 256 << 10), "bytes before the range are kept")
        #expect(image.bytes.count == 1 << 20, "the size is kept")
    }

    @Test func writeZeroesReadsBackZeroes() throws {
        let image = try Image()
        let harness = try VirtioHarness(device: try VirtioBlock(path: image.url.path, readOnly: false, serial: ""))
        #expect(try release(harness, type: Self.writeZeroes, sector: 8, count: 8) == 0)
        #expect(try release(harness, type: Self.writeZeroes, sector: 64, count: 16, flags: 1) == 0, "with unmap")
        let bytes = image.bytes
        #expect(bytes[4096..<8192] == Data(count: 4096))
        #expect(bytes[32768..<40960] == Data(count: 8192))
        #expect(bytes[0..<4096] == Data(repeating: 0xAA, count: 4096))
        #expect(bytes[8192..<32768] == Data(repeating: 0xAA, count: 24576))
        #expect(bytes[40960...] == Data(repeating: 0xAA, count: (1 << 20) - 40960))
        #expect(harness.transport.report.bytes == 12288, "the counters saw the 12 KiB zeroed")
    }

    @Test func badRangesAreRefusedAndTheDeviceKeepsWorking() throws {
        let image = try Image()
        let harness = try VirtioHarness(device: try VirtioBlock(path: image.url.path, readOnly: false, serial: ""))
        #expect(try release(harness, type: Self.discard, sector: 2047, count: 2) == 1, "past the end: IOERR")
        #expect(try release(harness, type: Self.discard, sector: 1 << 60, count: 1) == 1, "overflowing sector: IOERR")
        #expect(try release(harness, type: Self.discard, sector: 0, count: 8, flags: 1) == 2, "unmap on discard: UNSUPP")
        #expect(try release(harness, type: Self.writeZeroes, sector: 0, count: 8, flags: 2) == 2, "reserved flag: UNSUPP")
        #expect(image.bytes == Data(repeating: 0xAA, count: 1 << 20), "nothing was touched")
        #expect(try release(harness, type: Self.writeZeroes, sector: 0, count: 1) == 0)
        #expect(image.bytes.prefix(512) == Data(count: 512))
    }

    @Test func readOnlyDisksOfferNeitherAndRefuseBoth() throws {
        let image = try Image()
        let readOnly = try VirtioBlock(path: image.url.path, readOnly: true, serial: "")
        #expect(readOnly.features & (VirtioBlock.featureDiscard | VirtioBlock.featureWriteZeroes) == 0)
        let writable = try VirtioBlock(path: image.url.path, readOnly: false, serial: "")
        #expect(writable.features & (VirtioBlock.featureDiscard | VirtioBlock.featureWriteZeroes) != 0)
        #expect(writable.readConfig(offset: 36, size: 4) == UInt64(VirtioBlock.maxReleaseSectors), "max_discard_sectors")
        #expect(writable.readConfig(offset: 12, size: 4) == UInt64(VirtioBlock.maxSegments), "seg_max")
        #expect(writable.readConfig(offset: 20, size: 4) == 512, "blk_size")
        let harness = try VirtioHarness(device: readOnly)
        #expect(try release(harness, type: Self.discard, sector: 0, count: 8) == 1)
        #expect(image.bytes == Data(repeating: 0xAA, count: 1 << 20))
    }

    @Test func aWritableRangeDescriptorIsADeviceError() throws {
        let image = try Image()
        let harness = try VirtioHarness(device: try VirtioBlock(path: image.url.path, readOnly: false, serial: ""))
        try harness.memory.write(Self.discard, at: 0x10000)
        try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try harness.descriptor(1, address: 0x11000, length: 16, flags: Self.next | Self.write, next: 2)
        try harness.descriptor(2, address: 0x12000, length: 1, flags: Self.write)
        try harness.submit(head: 0)
        #expect(harness.transport.needsReset)
        #expect(image.bytes == Data(repeating: 0xAA, count: 1 << 20))
    }
}
