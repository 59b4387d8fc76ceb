import Foundation
import Testing

@testable import MartletVMM

/// VIRTIO_RING_F_INDIRECT_DESC: a chain's only descriptor in the ring may name a table of
/// descriptors in guest RAM. The table is the guest's to write, so every way of getting it
/// wrong is a device error, and nothing is completed.
struct IndirectDescriptorTests {
    static let next: UInt16 = 1
    static let write: UInt16 = 2
    static let indirect: UInt16 = 4
    static let table: UInt64 = 0x20000

    /// A virtio-blk device over an 8 KiB file whose sector 0 starts with "sector zero", with
    /// indirect descriptors negotiated, and a read request header for sector 0 at 0x10000.
    func harness() throws -> (VirtioHarness, VirtQueueTests.Disk) {
        let disk = try VirtQueueTests.Disk()
        let harness = try VirtioHarness(device: try disk.device(), features: UInt32(VirtQueue.featureIndirect))
        try harness.memory.write(UInt32(0), at: 0x10000)
        try harness.memory.write(UInt32(0), at: 0x10004)
        try harness.memory.write(UInt64(0), at: 0x10008)
        return (harness, disk)
    }

    /// Writes entry `index` of a table at `table`.
    func entry(_ harness: VirtioHarness, _ index: UInt64, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0, table: UInt64 = table) throws {
        try harness.memory.writeDescriptor(index, in: table, address: address, length: length, flags: flags, next: next)
    }

    /// The request header, 512 bytes of data and the status byte as table entries 0-2.
    func readRequest(_ harness: VirtioHarness) throws {
        try entry(harness, 0, address: 0x10000, length: 16, flags: Self.next, next: 1)
        try entry(harness, 1, address: 0x11000, length: 512, flags: Self.next | Self.write, next: 2)
        try entry(harness, 2, address: 0x12000, length: 1, flags: Self.write)
    }

    @Test func aReadThroughAnIndirectTableCompletes() throws {
        let (harness, _) = try harness()
        #expect(harness.transport.read(offset: 0x10, size: 4) & UInt64(VirtQueue.featureIndirect) != 0, "offered")
        try readRequest(harness)
        try harness.memory.write(UInt8(0xFF), at: 0x12000)
        try harness.descriptor(0, address: Self.table, length: 48, flags: Self.indirect)
        try harness.submit(head: 0)
        #expect(harness.transport.lastError == nil)
        #expect(harness.usedIndex == 1)
        #expect(try harness.memory.bytes(at: 0x11000, length: 11) == Array("sector zero".utf8))
        #expect(try harness.memory.read(UInt8.self, at: 0x12000) == 0, "status OK")
    }

    /// Each case: what the ring's descriptor 0 and the table hold, and the words the error must carry.
    enum Hostile: String, CaseIterable {
        case withNext, nestedInTheTable, afterADirectDescriptor, emptyTable, lengthNotAMultipleOf16, tooManyEntries
        case tableOutsideRAM, loopInTheTable, nextOutsideTheTable, bufferOutsideRAM
    }

    @Test(arguments: Hostile.allCases)
    func aHostileIndirectChainIsADeviceError(_ hostile: Hostile) throws {
        let (harness, _) = try harness()
        try readRequest(harness)
        var expected = "indirect"
        switch hostile {
        case .withNext:
            try harness.descriptor(0, address: Self.table, length: 48, flags: Self.indirect | Self.next, next: 1)
            try harness.descriptor(1, address: 0x12000, length: 1, flags: Self.write)
        case .nestedInTheTable:
            try entry(harness, 1, address: Self.table, length: 48, flags: Self.indirect)
            try harness.descriptor(0, address: Self.table, length: 48, flags: Self.indirect)
        case .afterADirectDescriptor:
            try harness.descriptor(0, address: 0x10000, length: 16, flags: Self.next, next: 1)
            try harness.descriptor(1, address: Self.table, length: 48, flags: Self.indirect)
        case .emptyTable:
            try harness.descriptor(0, address: Self.table, length: 0, flags: Self.indirect)
        case .lengthNotAMultipleOf16:
            try harness.descriptor(0, address: Self.table, length: 47, flags: Self.indirect)
        case .tooManyEntries:
            try harness.descriptor(0, address: Self.table, length: UInt32(16 * (VirtQueue.maxIndirectEntries + 1)), flags: Self.indirect)
        case .tableOutsideRAM:
            try harness.descriptor(0, address: 0x3F_FFF0, length: 48, flags: Self.indirect)
        case .loopInTheTable:
            try entry(harness, 2, address: 0x12000, length: 1, flags: Self.write | Self.next, next: 1)
            try harness.descriptor(0, address: Self.table, length: 48, flags: Self.indirect)
            expected = "loop"
        case .nextOutsideTheTable:
            try entry(harness, 1, address: 0x11000, length: 512, flags: Self.next | Self.write, next: 3)
            try harness.descriptor(0, address: Self.table, length: 48, flags: Self.indirect)
            expected = "outside the indirect table"
        case .bufferOutsideRAM:
            try entry(harness, 1, address: 0xFFFF_FFFF_FFFF_F000, length: 512, flags: Self.next | Self.write, next: 2)
            try harness.descriptor(0, address: Self.table, length: 48, flags: Self.indirect)
            expected = "outside guest RAM"
        }
        try harness.submit(head: 0)
        #expect(harness.status & 0x40 != 0, "DEVICE_NEEDS_RESET")
        #expect(harness.transport.lastError?.message.contains(expected) == true, "\(harness.transport.lastError?.message ?? "no error")")
        #expect(harness.usedIndex == 0)
    }
}
