import Foundation
import Testing

import MartletSystem

@testable import MartletVMM

/// virtio-blk on io_uring and on its preadv/pwritev fallback, driven through the virtio
/// harness: both engines give the guest the same bytes and the same errors, a batch's
/// transfers are in flight together, and a bad chain in a batch moves no data.
@Suite struct BlockRingTests {
    static let next: UInt16 = 1
    static let writable: UInt16 = 2
    static let engines: [BlockEngine] = [.ioUring, .sync]

    /// A disk file of `size` bytes (byte i is i % 251) in a fresh directory, removed in deinit.
    final class Disk {
        let directory: URL
        let path: String
        init(size: Int = 64 * 1024, in directory: URL? = nil) throws {
            self.directory = try directory ?? TestSupport.temporaryDirectory()
            path = self.directory.appendingPathComponent("disk.raw").path
            try Data((0..<size).map { UInt8($0 % 251) }).write(to: URL(fileURLWithPath: path))
        }
        deinit { try? FileManager.default.removeItem(at: directory) }

        /// The device, on `engine`; fails the test when io_uring was asked for and refused
        /// (the test would otherwise compare the fallback with itself).
        func device(_ engine: BlockEngine) throws -> VirtioBlock {
            let device = try VirtioBlock(path: path, readOnly: false, serial: "ring", engine: engine)
            try #require(device.blockEngine == engine, "io_uring refused: \(device.ringRefusal ?? "")")
            return device
        }
    }

    /// Lays out chain `index` (descriptors 3·index ..< 3·index+3): a `type` request on `sector`
    /// with one data buffer of `length` bytes at 0x100000 + index·64 KiB, device-writable for a
    /// read, and a status byte at 0x12000 + index.
    func chain(_ harness: VirtioHarness, _ index: UInt16, type: UInt32, sector: UInt64, length: UInt32 = 512) throws {
        let header = 0x10000 + 16 * UInt64(index)
        try harness.memory.write(type, at: header)
        try harness.memory.write(UInt32(0), at: header + 4)
        try harness.memory.write(sector, at: header + 8)
        let first = 3 * index
        try harness.descriptor(first, address: header, length: 16, flags: Self.next, next: first + 1)
        try harness.descriptor(first + 1, address: data(index), length: length, flags: Self.next | (type == 0 ? Self.writable : 0), next: first + 2)
        try harness.descriptor(first + 2, address: status(index), length: 1, flags: Self.writable)
        try harness.memory.write(UInt8(0xFF), at: status(index))
    }

    func data(_ index: UInt16) -> UInt64 { 0x10_0000 + 0x1_0000 * UInt64(index) }
    func status(_ index: UInt16) -> UInt64 { 0x12000 + UInt64(index) }

    /// Makes the chains with these heads available together and notifies once.
    func submit(_ harness: VirtioHarness, heads: [UInt16]) throws {
        for head in heads {
            try harness.memory.write(head, at: VirtioHarness.available + 4 + 2 * UInt64(harness.availableIndex % VirtioHarness.queueSize))
            harness.availableIndex &+= 1
        }
        try harness.memory.write(harness.availableIndex, at: VirtioHarness.available + 2)
        harness.transport.write(offset: 0x50, size: 4, value: 0)
    }

    @Test(arguments: engines)
    func aBatchOfReadsAndWritesGivesTheSameBytes(engine: BlockEngine) throws {
        let disk = try Disk()
        let harness = try VirtioHarness(device: try disk.device(engine))
        // Chain 0 writes sector 100, chain 1 reads sector 3, chain 2 reads 2 KiB at sector 60.
        try chain(harness, 0, type: 1, sector: 100)
        try harness.memory.write([UInt8](repeating: 0xA5, count: 512), at: data(0))
        try chain(harness, 1, type: 0, sector: 3)
        try chain(harness, 2, type: 0, sector: 60, length: 2048)
        try submit(harness, heads: [0, 3, 6])
        #expect(harness.usedIndex == 3)
        #expect(harness.interrupts == 1, "one interrupt for the batch")
        for index in UInt16(0)..<3 { #expect(try harness.memory.read(UInt8.self, at: status(index)) == 0) }
        let file = try Data(contentsOf: URL(fileURLWithPath: disk.path))
        #expect(file.subdata(in: 51200..<51712) == Data(repeating: 0xA5, count: 512))
        #expect(try harness.memory.bytes(at: data(1), length: 512) == Array(file.subdata(in: 1536..<2048)))
        #expect(try harness.memory.bytes(at: data(2), length: 2048) == Array(file.subdata(in: 30720..<32768)))
        // The used ring reports what each request wrote into the guest: data + status byte.
        let lengths = try (0..<3).map { try harness.memory.read(UInt32.self, at: VirtioHarness.used + 4 + 8 * UInt64($0) + 4) }
        let heads = try (0..<3).map { try harness.memory.read(UInt32.self, at: VirtioHarness.used + 4 + 8 * UInt64($0)) }
        #expect(Dictionary(uniqueKeysWithValues: zip(heads, lengths)) == [0: 1, 3: 513, 6: 2049])
        #expect(harness.transport.report.engine == engine.rawValue)
        #expect(harness.transport.report.bytes == 512 + 512 + 2048)
    }

    /// A file that shrank under the VMM: a read inside what is left completes, one that runs
    /// into the new end of the file comes back short and then at end of file, the guest's
    /// I/O error — never a success with stale bytes.
    @Test(arguments: engines)
    func aReadPastTheEndOfAShrunkenFileIsAnIOError(engine: BlockEngine) throws {
        let disk = try Disk(size: 8192)
        let harness = try VirtioHarness(device: try disk.device(engine))
        #expect(truncate(disk.path, 4096 + 256) == 0)
        try chain(harness, 0, type: 0, sector: 7)
        try chain(harness, 1, type: 0, sector: 8)
        try chain(harness, 2, type: 0, sector: 7, length: 1024)
        try submit(harness, heads: [0, 3, 6])
        #expect(harness.usedIndex == 3)
        #expect(try harness.memory.read(UInt8.self, at: status(0)) == 0)
        #expect(try harness.memory.bytes(at: data(0), length: 512) == (3584..<4096).map { UInt8($0 % 251) })
        #expect(try harness.memory.read(UInt8.self, at: status(1)) == 1, "VIRTIO_BLK_S_IOERR")
        #expect(try harness.memory.read(UInt8.self, at: status(2)) == 1, "VIRTIO_BLK_S_IOERR")
        #expect(harness.transport.lastError == nil, "an I/O error is the guest's, not a device failure")
    }

    /// A file system that is full: the write fails in the kernel (ENOSPC from the ring's
    /// worker), the guest gets VIRTIO_BLK_S_IOERR, and the device serves the next request.
    @Test(.enabled(if: geteuid() == 0, "mounting a small tmpfs needs root"), arguments: engines)
    func aFailedWriteIsTheGuestsIOError(engine: BlockEngine) throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let mount = try ChildProcess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", directory.path], timeout: 30)
        try #require(mount.status == 0, "mount: \(mount.stderr)")
        // Lazy: the ring's teardown may hold the disk file a moment after the device is gone.
        defer {
            let unmount = try? ChildProcess.run(["umount", "--lazy", directory.path], timeout: 30)
            #expect(unmount?.status == 0, "umount: \(unmount?.stderr ?? "did not run")")
        }
        let path = directory.appendingPathComponent("disk.raw").path
        let disk = open(path, O_CREAT | O_WRONLY, 0o600)
        #expect(disk >= 0 && ftruncate(disk, 1 << 20) == 0 && close(disk) == 0, "a sparse 1 MiB disk on a 256 KiB file system")
        // Fill the file system, so that the disk's holes cannot be written.
        let filler = open(directory.appendingPathComponent("filler").path, O_CREAT | O_WRONLY, 0o600)
        let chunk = [UInt8](repeating: 1, count: 4096)
        while write(filler, chunk, chunk.count) > 0 {}
        close(filler)
        let device = try VirtioBlock(path: path, readOnly: false, serial: "full", engine: engine)
        try #require(device.blockEngine == engine, "io_uring refused: \(device.ringRefusal ?? "")")
        let harness = try VirtioHarness(device: device)
        try chain(harness, 0, type: 1, sector: 8, length: 4096)
        try submit(harness, heads: [0])
        #expect(harness.usedIndex == 1)
        #expect(try harness.memory.read(UInt8.self, at: status(0)) == 1, "VIRTIO_BLK_S_IOERR")
        try chain(harness, 0, type: 0, sector: 8, length: 4096)
        try submit(harness, heads: [0])
        #expect(harness.usedIndex == 2)
        #expect(try harness.memory.read(UInt8.self, at: status(0)) == 0, "the device went on")
        #expect(try harness.memory.bytes(at: data(0), length: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(harness.transport.lastError == nil)
    }

    /// A batch whose second chain points outside guest RAM: the device stops before it
    /// submitted anything, so the first chain's write never reaches the file.
    @Test func aBadChainInABatchMovesNoData() throws {
        let disk = try Disk()
        let before = try Data(contentsOf: URL(fileURLWithPath: disk.path))
        let harness = try VirtioHarness(device: try disk.device(.ioUring))
        try chain(harness, 0, type: 1, sector: 0)
        try harness.memory.write([UInt8](repeating: 0xEE, count: 512), at: data(0))
        try chain(harness, 1, type: 0, sector: 1)
        try harness.descriptor(4, address: 0xFFFF_F000, length: 512, flags: Self.next | Self.writable, next: 5)
        try submit(harness, heads: [0, 3])
        #expect(harness.transport.lastError?.message.contains("outside guest RAM") == true)
        #expect(harness.status & 0x40 != 0, "DEVICE_NEEDS_RESET")
        #expect(harness.usedIndex == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: disk.path)) == before, "the queued write was dropped unsubmitted")
    }

    /// With asynchronous completions (the I/O thread's mode) a batch may still be in flight
    /// when the notify returns; the ring's eventfd says when the kernel completed some, and
    /// `completeAsynchronously` returns them: the same bytes, statuses and used lengths.
    @Test func asynchronousCompletionsComeThroughTheRingsEventFD() throws {
        let disk = try Disk()
        let device = try disk.device(.ioUring)
        let event = try #require(device.startAsynchronousCompletions())
        let harness = try VirtioHarness(device: device)
        try chain(harness, 0, type: 1, sector: 100)
        try harness.memory.write([UInt8](repeating: 0xC3, count: 512), at: data(0))
        for index in UInt16(1)..<5 { try chain(harness, index, type: 0, sector: 10 * UInt64(index), length: 1024) }
        try submit(harness, heads: [0, 3, 6, 9, 12])
        // The kernel signals the eventfd for every completion, also for one it posted while
        // the notify still ran; the device takes each completion once.
        var fds = [pollfd(fd: event, events: Int16(POLLIN), revents: 0)]
        repeat {
            try #require(poll(&fds, 1, 10_000) == 1, "no completion within 10 s; used \(harness.usedIndex) of 5")
            harness.transport.completeAsynchronously()
        } while harness.usedIndex < 5
        // A signal may trail the completion it announces (taken already): once, at most.
        if poll(&fds, 1, 0) == 1 { harness.transport.completeAsynchronously() }
        #expect(poll(&fds, 1, 0) == 0, "the eventfd was drained")
        #expect(harness.usedIndex == 5, "no completion was returned twice")
        #expect(device.inFlight == 0)
        #expect(harness.interrupts >= 1)
        for index in UInt16(0)..<5 { #expect(try harness.memory.read(UInt8.self, at: status(index)) == 0) }
        let file = try Data(contentsOf: URL(fileURLWithPath: disk.path))
        #expect(file.subdata(in: 51200..<51712) == Data(repeating: 0xC3, count: 512))
        for index in 1..<5 {
            #expect(try harness.memory.bytes(at: data(UInt16(index)), length: 1024) == Array(file.subdata(in: 5120 * index..<5120 * index + 1024)))
        }
        let lengths = try (0..<5).map { try harness.memory.read(UInt32.self, at: VirtioHarness.used + 4 + 8 * UInt64($0) + 4) }
        let heads = try (0..<5).map { try harness.memory.read(UInt32.self, at: VirtioHarness.used + 4 + 8 * UInt64($0)) }
        #expect(Dictionary(uniqueKeysWithValues: zip(heads, lengths)) == [0: 1, 3: 1025, 6: 1025, 9: 1025, 12: 1025])
    }

    /// The I/O thread leaving (the VM ends) waits for the transfers still in flight and drops
    /// them: none is left to write into guest memory, and none is reported half-done.
    @Test func quiesceLeavesNoTransferInFlight() throws {
        let disk = try Disk(size: 1 << 20)
        // O_DIRECT (on the test directory's ext4): the reads go to the disk, so most are
        // still in flight when the notify returns, where cached reads would complete inline.
        let device = try VirtioBlock(path: disk.path, readOnly: false, serial: "quiesce", direct: true)
        try #require(device.blockEngine == .ioUring, "io_uring refused: \(device.ringRefusal ?? "")")
        _ = try #require(device.startAsynchronousCompletions())
        let harness = try VirtioHarness(device: device)
        for index in UInt16(0)..<5 { try chain(harness, index, type: 0, sector: 64 * UInt64(index), length: 32768) }
        try submit(harness, heads: (0..<5).map { 3 * $0 })
        #expect(harness.transport.lastError == nil)
        let before = device.inFlight
        harness.transport.quiesce()
        #expect(device.inFlight == 0, "\(before) were in flight before")
        // Those the kernel completed during the notify went back then; the rest were dropped
        // with their status byte untouched.
        let statuses = try (UInt16(0)..<5).map { try harness.memory.read(UInt8.self, at: status($0)) }
        #expect(statuses.allSatisfy { $0 == 0 || $0 == 0xFF }, "\(statuses)")
        #expect(statuses.filter { $0 == 0 }.count == Int(harness.usedIndex))
    }

    /// A driver that resets the device with reads in flight and sets it up again: the reads
    /// complete in the kernel, but none is returned to the new rings (their heads mean
    /// nothing there), and the device serves the new requests.
    @Test func aTransferInFlightAcrossADriverResetIsDropped() throws {
        let disk = try Disk(size: 1 << 20)
        let device = try VirtioBlock(path: disk.path, readOnly: false, serial: "reset", direct: true)
        try #require(device.blockEngine == .ioUring, "io_uring refused: \(device.ringRefusal ?? "")")
        let event = try #require(device.startAsynchronousCompletions())
        let harness = try VirtioHarness(device: device)
        for index in UInt16(0)..<5 { try chain(harness, index, type: 0, sector: 64 * UInt64(index), length: 32768) }
        try submit(harness, heads: (0..<5).map { 3 * $0 })
        let early = Int(harness.usedIndex)
        try #require(device.inFlight > 0, "all five O_DIRECT reads completed during the notify: nothing crosses the reset")
        try harness.memory.write([UInt8](repeating: 0, count: 4 + 8 * Int(VirtioHarness.queueSize)), at: VirtioHarness.used)
        harness.initialize()
        var fds = [pollfd(fd: event, events: Int16(POLLIN), revents: 0)]
        while device.inFlight > 0 {
            try #require(poll(&fds, 1, 10_000) == 1, "no completion within 10 s; \(device.inFlight) in flight")
            harness.transport.completeAsynchronously()
        }
        #expect(harness.usedIndex == 0, "a completion from before the reset reached the new ring")
        #expect(try harness.memory.read(UInt64.self, at: VirtioHarness.used + 4) == 0)
        let statuses = try (UInt16(0)..<5).map { try harness.memory.read(UInt8.self, at: status($0)) }
        #expect(statuses.filter { $0 == 0 }.count == early, "\(statuses)")
        // The new rings work: a read of sector 1.
        try chain(harness, 0, type: 0, sector: 1)
        try submit(harness, heads: [0])
        repeat {
            try #require(poll(&fds, 1, 10_000) == 1, "the read after the reset did not complete within 10 s")
            harness.transport.completeAsynchronously()
        } while harness.usedIndex < 1
        #expect(try harness.memory.read(UInt8.self, at: status(0)) == 0)
        #expect(try harness.memory.bytes(at: data(0), length: 512) == (512..<1024).map { UInt8($0 % 251) })
    }

    /// A write and a FLUSH behind one notify: the flush's fdatasync runs only once the write
    /// completed (its bytes are in the file) and before the driver sees either.
    @Test(arguments: engines)
    func aFlushWaitsForTheWritesBeforeIt(engine: BlockEngine) throws {
        let disk = try Disk()
        let device = try disk.device(engine)
        let harness = try VirtioHarness(device: device)
        var seenAtSync: [(used: UInt16, written: Bool)] = []
        device.synchronize = { [unowned harness] fd in
            var sector = [UInt8](repeating: 0, count: 512)
            _ = pread(fd, &sector, 512, 5 * 512)
            seenAtSync.append((harness.usedIndex, sector.allSatisfy { $0 == 0x5A }))
            return fdatasync(fd)
        }
        try chain(harness, 0, type: 1, sector: 5)
        try harness.memory.write([UInt8](repeating: 0x5A, count: 512), at: data(0))
        let flush: UInt64 = 0x10000 + 16 * 1
        try harness.memory.write(UInt32(4), at: flush)
        try harness.memory.write(UInt64(0), at: flush + 8)
        try harness.descriptor(3, address: flush, length: 16, flags: Self.next, next: 4)
        try harness.descriptor(4, address: status(1), length: 1, flags: Self.writable)
        try submit(harness, heads: [0, 3])
        #expect(seenAtSync.count == 1)
        #expect(seenAtSync.first?.used == 0, "the batch was not yet shown to the driver")
        #expect(seenAtSync.first?.written == true, "the write had completed before the flush")
        #expect(harness.usedIndex == 2)
        #expect(try harness.memory.read(UInt8.self, at: status(1)) == 0)
    }
}
