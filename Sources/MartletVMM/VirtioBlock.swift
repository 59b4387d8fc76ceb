import CKVM
import MartletSystem
import MartletValidation

#if canImport(Glibc)
    import Glibc
#endif

/// virtio-blk over a raw image file or a block device: read, write, flush, get ID, discard and
/// write-zeroes; read-only on request. Request buffers come from the guest and are checked like everything else.
/// Public for the fuzz target (Sources/martlet-fuzz), which drives `process` on rings it lays out.
public final class VirtioBlock: VirtioDevice {
    static let featureSizeMax: UInt64 = 1 << 1
    static let featureSegMax: UInt64 = 1 << 2
    static let featureReadOnly: UInt64 = 1 << 5
    static let featureBlockSize: UInt64 = 1 << 6
    static let featureFlush: UInt64 = 1 << 9
    static let featureMultiQueue: UInt64 = 1 << 12
    static let featureDiscard: UInt64 = 1 << 13
    static let featureWriteZeroes: UInt64 = 1 << 14
    static let sectorSize: UInt64 = 512
    /// The largest data segment and the most segments per request the driver may send: the
    /// queue bounds a chain anyway (two descriptors go to the header and the status).
    static let maxSegmentBytes: UInt32 = 1 << 20
    static let maxSegments: UInt32 = 254
    /// One DISCARD or WRITE_ZEROES range of up to 4 GiB per request: one fallocate each.
    static let maxReleaseSectors: UInt32 = 1 << 23

    let deviceID: UInt32 = 2
    let kind = "blk"
    let counters = VirtioCounters()
    /// One ring per request queue; the device's I/O thread serves them all (requests from
    /// different vCPUs no longer share one ring, the image file serves them alike).
    let queueSizes: [UInt16]
    let path: String
    let readOnly: Bool
    let serial: [UInt8]
    private let file: FileDescriptor
    private var fd: Int32 { file.raw }
    /// With `cache: none`, the image opened again with O_DIRECT for transfers whose buffer,
    /// offset and length are sector-aligned (a Linux guest's always are); anything else, and
    /// flush, discard and write-zeroes, use `file`, which the kernel keeps coherent with it.
    private let directFile: FileDescriptor?
    let capacityBytes: UInt64
    /// A block device gets BLKDISCARD / BLKZEROOUT, a file fallocate.
    private let isBlockDevice: Bool
    /// fdatasync(2) on the image: a FLUSH completes only after it returned, and on the ring
    /// only after every transfer before it completed. Tests replace it to see that order.
    var synchronize: (Int32) -> Int32 = { fdatasync($0) }
    /// The io_uring the transfers go through; nil when the kernel refused one (`engine` says
    /// `sync`, and transfers use preadv/pwritev).
    private var ring: BlockRing?
    /// Why there is no ring, for the VMM's log.
    private(set) var ringRefusal: String?
    /// The ring whose eventfd the I/O thread waits on, set when completions become
    /// asynchronous: they reach the driver when the kernel posts them (`completeAsynchronously`,
    /// on the I/O thread) rather than at the end of the `process` that submitted them, so the
    /// queue never drains to empty while the guest keeps it full. Kept open after a failure of
    /// the ring leaves the device on preadv/pwritev (the thread still polls the descriptor).
    private var completionRing: BlockRing?
    private var asynchronous: Bool { completionRing != nil }
    /// Transfers on the ring (queued or submitted), by tag: a slot of this table, nil when free.
    private var slots: [Transfer?] = []
    private var freeSlots: [Int] = []
    /// Transfers queued or submitted and not yet completed.
    public var inFlight: Int { slots.count - freeSlots.count }
    /// Slots queued since the last io_uring_enter: a bad chain later in the same drain drops them.
    private var unsubmitted: [Int] = []
    /// Transfers in flight at most: the submission queue's entries, so a transfer always finds
    /// one, and the completion queue (twice as large) never overflows.
    private let ringEntries: Int
    /// Driver resets so far: a transfer from before one is dropped when it completes, never
    /// returned to rings the driver has laid out anew.
    private var generation = 0
    /// The most transfers in flight at once (tests see a guest's queue depth).
    private(set) var largestInFlight = 0

    /// Opens `path` (O_RDONLY when `readOnly`), an image file or a block device and nothing
    /// else (a FIFO would block, a directory or /dev/null is no disk); errors name the path.
    /// `engine` `.sync` keeps the device off io_uring (tests compare both engines); with
    /// `.ioUring` it still falls back to `.sync` when the kernel refuses a ring.
    public init(path: String, readOnly: Bool, serial: String, direct: Bool = false, queues: Int = 1, engine: BlockEngine = .ioUring) throws {
        let mode = readOnly ? O_RDONLY : O_RDWR
        do {
            file = try FilePath.open(path, mode, field: "path", kind: .disk)
            directFile = direct ? try FilePath.open(path, mode | CKVM_O_DIRECT, field: "cache", kind: .disk) : nil
        } catch {
            throw VMMError(.config, "\(error.description)\(direct ? "; cache none needs O_DIRECT, which tmpfs and some other file systems refuse: use cache writeback there" : "")")
        }
        let size = lseek(file.raw, 0, SEEK_END)
        guard size >= 0 else { throw VMMError.syscall("lseek", path: path, errno: errno) }
        var info = stat()
        guard fstat(file.raw, &info) == 0 else { throw VMMError.syscall("fstat", path: path, errno: errno) }
        isBlockDevice = info.st_mode & S_IFMT == S_IFBLK
        self.path = path
        self.readOnly = readOnly
        self.capacityBytes = UInt64(size)
        self.serial = Array(serial.utf8.prefix(20))
        self.queueSizes = Array(repeating: 256, count: queues)
        ringEntries = Int(queueSizes[0])
        if engine == .ioUring {
            do {
                ring = try BlockRing(entries: UInt32(ringEntries))
            } catch {
                ringRefusal = "\(error)"
            }
        }
    }

    /// Which engine executes the transfers.
    public var blockEngine: BlockEngine { ring == nil ? .sync : .ioUring }
    /// `blockEngine` as `info` reports it.
    public var engine: String? { blockEngine.rawValue }

    /// Leaves io_uring for preadv/pwritev: when the requests will run on vCPU threads, whose
    /// seccomp filter has no io_uring calls (no ioeventfd), or the ring failed.
    func useSynchronousTransfers(reason: String) {
        ring = nil
        ringRefusal = reason
    }

    var features: UInt64 {
        VirtioBlock.featureFlush | VirtioBlock.featureSizeMax | VirtioBlock.featureSegMax | VirtioBlock.featureBlockSize
            | VirtioBlock.featureMultiQueue
            | (readOnly ? VirtioBlock.featureReadOnly : VirtioBlock.featureDiscard | VirtioBlock.featureWriteZeroes)
    }

    /// The virtio_blk_config layout (virtio 1.2, 5.2.4).
    func readConfig(offset: Int, size: Int) -> UInt64 {
        var config = [UInt8](repeating: 0, count: 64)
        config.put(capacityBytes / VirtioBlock.sectorSize, at: 0)
        config.put(VirtioBlock.maxSegmentBytes, at: 8)
        config.put(VirtioBlock.maxSegments, at: 12)
        config.put(UInt32(VirtioBlock.sectorSize), at: 20)
        config.put(UInt16(queueSizes.count), at: 34)  // num_queues
        config.put(VirtioBlock.maxReleaseSectors, at: 36)  // max_discard_sectors
        config.put(UInt32(1), at: 40)  // max_discard_seg
        config.put(UInt32(1), at: 44)  // discard_sector_alignment
        config.put(VirtioBlock.maxReleaseSectors, at: 48)  // max_write_zeroes_sectors
        config.put(UInt32(1), at: 52)  // max_write_zeroes_seg
        config[56] = 1  // write_zeroes_may_unmap
        guard offset >= 0, offset + size <= config.count else { return 0 }
        return config.le(UInt64.self, at: offset) & (size >= 8 ? ~0 : (1 << (8 * UInt64(size))) - 1)
    }

    enum Status: UInt8 { case ok = 0, ioError = 1, unsupported = 2 }

    /// Executes every request the guest made available on `virtQueue`; returns whether the used
    /// ring changed. A malformed request throws (the transport then stops the device).
    /// On the ring, the transfers of all chains the queue holds are submitted together; they
    /// complete before this returns, unless completions are asynchronous, when the I/O thread
    /// returns them as the kernel posts them (`completeAsynchronously`).
    public func process(queue: Int, _ virtQueue: VirtQueue, memory: GuestMemory) throws -> Bool {
        var used = false
        do {
            while let chain = try virtQueue.pop(memory) {
                if let written = try handle(chain, queue: virtQueue, memory: memory) {
                    try virtQueue.push(memory, head: chain.head, length: written)
                }
                used = true
            }
            try reap(waitingFor: asynchronous ? 0 : inFlight, memory: memory)
        } catch {
            // The device stops on a malformed chain: the transfers queued before it are
            // dropped unsubmitted, so a batch with a bad chain moves no data at all.
            abandonUnsubmitted()
            throw error
        }
        return used
    }

    /// Completions become asynchronous: the I/O thread waits on the returned eventfd with the
    /// queues' and calls `completeAsynchronously` when it fires. Nil on preadv/pwritev.
    public func startAsynchronousCompletions() -> Int32? {
        guard let ring else { return nil }
        completionRing = ring
        return ring.completionEvent
    }

    /// Returns the transfers the kernel completed since the last call to their queues, or
    /// drops them when the transport says the device cannot take them (it failed); never waits.
    public func completeAsynchronously(memory: GuestMemory, deliver: Bool) throws {
        // Drained first: a completion posted after this signals the eventfd again.
        completionRing?.drainCompletionEvent()
        try reap(waitingFor: 0, memory: memory, deliver: deliver)
    }

    /// The driver reset the device. A transfer still in flight completes in the kernel; the
    /// transfer is then dropped (the guest reset with requests outstanding, and like on
    /// hardware their data may still land in the buffers it gave).
    func reset() {
        generation += 1
    }

    /// Waits for every transfer still in flight and drops it: the VM ends, and no transfer
    /// may write into guest memory once the I/O thread has left.
    public func quiesce(memory: GuestMemory) {
        try? reap(waitingFor: inFlight, memory: memory, deliver: false)
    }

    /// Executes one request; returns the number of bytes written into guest buffers, or nil
    /// when its transfer went onto the ring (`reap` finishes it).
    private func handle(_ chain: DescriptorChain, queue virtQueue: VirtQueue, memory: GuestMemory) throws -> UInt32? {
        guard let header = chain.buffers.first, !header.writable, header.length >= 16 else {
            throw VMMError(.device, "virtio-blk request \(chain.head): the first descriptor must be a device-readable 16-byte header")
        }
        guard let statusBuffer = chain.buffers.last, statusBuffer.writable, statusBuffer.length >= 1, chain.buffers.count >= 2 else {
            throw VMMError(.device, "virtio-blk request \(chain.head): the last descriptor must be a device-writable status byte")
        }
        let type: UInt32 = try memory.read(at: header.address)
        let sector: UInt64 = try memory.read(at: header.address + 8)
        var data = Array(chain.buffers.dropFirst().dropLast())
        // The status byte may share the last data descriptor.
        let statusAddress = statusBuffer.address + UInt64(statusBuffer.length) - 1
        if statusBuffer.length > 1 {
            data.append(DescriptorBuffer(address: statusBuffer.address, length: statusBuffer.length - 1, writable: true))
        }
        var status = Status.ok
        var written: UInt32 = 0
        switch type {
        case 0, 1:  // IN, OUT
            let isRead = type == 0
            guard data.allSatisfy({ $0.writable == isRead }) else {
                throw VMMError(.device, "virtio-blk request \(chain.head): \(isRead ? "read" : "write") data buffers have the wrong direction")
            }
            let length = data.reduce(UInt64(0)) { $0 + UInt64($1.length) }
            let (start, overflow) = sector.multipliedReportingOverflow(by: VirtioBlock.sectorSize)
            if overflow || start > capacityBytes || length > capacityBytes - start {
                status = .ioError
            } else if !isRead && readOnly {
                status = .ioError
            } else if let ring {
                let buffers = try data.map { try memory.buffer(at: $0.address, length: UInt64($0.length)) }
                try queueTransfer(Transfer(queue: virtQueue, generation: generation, head: chain.head, statusAddress: statusAddress, isRead: isRead, offset: Int(start), buffers: buffers, length: Int(length)), on: ring, memory: memory)
                return nil
            } else {
                var offset = Int(start)
                for buffer in data {
                    let bytes = try memory.buffer(at: buffer.address, length: UInt64(buffer.length))
                    guard transfer(bytes, at: offset, read: isRead) else {
                        status = .ioError
                        break
                    }
                    offset += Int(buffer.length)
                    if isRead { written += buffer.length }
                }
                if status == .ok { counters.bytes.add(Int(length), ordering: .relaxed) }
            }
        case 4:  // FLUSH: acknowledged only once the data is durable
            try reap(waitingFor: inFlight, memory: memory)
            if synchronize(fd) != 0 { status = .ioError }
        case 11, 13:  // DISCARD, WRITE_ZEROES
            status = try release(data, zeroes: type == 13, chain: chain.head, memory: memory)
        case 8:  // GET_ID
            guard let target = data.first, target.writable else {
                throw VMMError(.device, "virtio-blk request \(chain.head): GET_ID needs a device-writable buffer")
            }
            var id = serial + [UInt8](repeating: 0, count: 20 - serial.count)
            id = Array(id.prefix(Int(min(target.length, 20))))
            try memory.write(id, at: target.address)
            written += UInt32(id.count)
        default:
            status = .unsupported
        }
        try memory.write(status.rawValue, at: statusAddress)
        return written + 1
    }

    /// Executes the ranges (16-byte virtio_blk_discard_write_zeroes segments) of a DISCARD or
    /// WRITE_ZEROES request.
    private func release(_ data: [DescriptorBuffer], zeroes: Bool, chain head: UInt16, memory: GuestMemory) throws -> Status {
        guard !data.isEmpty, data.allSatisfy({ !$0.writable && $0.length % 16 == 0 }) else {
            throw VMMError(.device, "virtio-blk request \(head): \(zeroes ? "write-zeroes" : "discard") ranges must be device-readable 16-byte segments")
        }
        guard !readOnly else { return .ioError }
        for buffer in data {
            for entry in stride(from: UInt64(0), to: UInt64(buffer.length), by: 16) {
                let sector: UInt64 = try memory.read(at: buffer.address + entry)
                let count: UInt32 = try memory.read(at: buffer.address + entry + 8)
                let flags: UInt32 = try memory.read(at: buffer.address + entry + 12)
                // Bit 0 is "unmap", allowed for WRITE_ZEROES only; other bits are reserved.
                guard flags & ~(zeroes ? 1 : 0) == 0, count <= VirtioBlock.maxReleaseSectors else { return .unsupported }
                let (start, overflow) = sector.multipliedReportingOverflow(by: VirtioBlock.sectorSize)
                let length = UInt64(count) * VirtioBlock.sectorSize
                guard !overflow, start <= capacityBytes, length <= capacityBytes - start else { return .ioError }
                // In a file, a punched hole reads back as zeroes, so "unmap" may punch; on a
                // block device only BLKZEROOUT promises zeroes.
                let punch = !zeroes || (flags & 1 != 0 && !isBlockDevice)
                let result = ckvm_release_range(fd, isBlockDevice ? 1 : 0, punch ? 0 : 1, start, length)
                if result == -Int(EOPNOTSUPP) && !zeroes { continue }  // a discard is only a hint
                guard result == 0 else { return .ioError }
                counters.bytes.add(Int(length), ordering: .relaxed)
            }
        }
        return .ok
    }

    /// A read or write on its way through the ring: the queue and driver generation it came
    /// from, the guest buffers it moves (already checked to lie in guest RAM) and the iovec
    /// array the kernel reads them from.
    private struct Transfer {
        let queue: VirtQueue
        let generation: Int
        let head: UInt16
        let statusAddress: UInt64
        let isRead: Bool
        let offset: Int
        let buffers: [UnsafeMutableRawBufferPointer]
        let length: Int
        var vectors: UnsafeMutablePointer<iovec>? = nil
    }

    /// Puts `transfer` on the ring, first waiting for one completion when `ringEntries` are in
    /// flight. With `cache: none` it goes through O_DIRECT when every buffer, the offset and
    /// the length are sector-aligned.
    private func queueTransfer(_ transfer: Transfer, on ring: BlockRing, memory: GuestMemory) throws {
        if inFlight >= ringEntries { try reap(waitingFor: 1, memory: memory) }
        var transfer = transfer
        let sector = Int(VirtioBlock.sectorSize)
        let aligned = transfer.buffers.allSatisfy { (Int(bitPattern: $0.baseAddress) | $0.count) % sector == 0 } && transfer.offset % sector == 0
        let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: max(transfer.buffers.count, 1))
        for (index, buffer) in transfer.buffers.enumerated() {
            vectors[index] = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        }
        transfer.vectors = vectors
        let fd = aligned ? directFile?.raw ?? self.fd : self.fd
        let slot = freeSlots.popLast() ?? slots.count
        if slot == slots.count { slots.append(nil) }
        guard ring.prepare(write: !transfer.isRead, fd: fd, vectors: vectors, count: transfer.buffers.count, offset: UInt64(transfer.offset), tag: UInt64(slot)) else {
            vectors.deallocate()
            freeSlots.append(slot)
            throw VMMError(.io, "virtio-blk '\(path)': the io_uring has no free submission entry with \(inFlight) transfers in flight")
        }
        slots[slot] = transfer
        unsubmitted.append(slot)
        largestInFlight = max(largestInFlight, inFlight)
    }

    /// Submits the queued transfers with one io_uring_enter, waits until `count` transfers in
    /// flight completed, and takes every completion there is. Each goes back to its queue
    /// (`deliver`, and from this generation) or is dropped: a short transfer is finished with
    /// preadv/pwritev (a read at the end of a file that shrank ends there: an I/O error), a
    /// failed one is the guest's VIRTIO_BLK_S_IOERR.
    private func reap(waitingFor count: Int, memory: GuestMemory, deliver: Bool = true) throws {
        guard let ring, inFlight > 0 else { return }
        var done = 0
        repeat {
            do {
                try ring.submit(waitingFor: max(count - done, 0))
            } catch {
                // The kernel may hold some of them: their iovec arrays stay allocated, the
                // ring is closed (which waits for them) and the device stops.
                slots.removeAll()
                freeSlots.removeAll()
                unsubmitted.removeAll()
                useSynchronousTransfers(reason: "\(error)")
                throw VMMError(.io, "virtio-blk '\(path)': \(error)")
            }
            unsubmitted.removeAll()
            while let completion = ring.takeCompletion() {
                guard completion.tag < UInt64(slots.count), let transfer = slots[Int(completion.tag)] else { continue }
                slots[Int(completion.tag)] = nil
                freeSlots.append(Int(completion.tag))
                done += 1
                transfer.vectors?.deallocate()
                guard deliver, transfer.generation == generation else { continue }
                var ok = completion.result >= 0
                if ok && Int(completion.result) < transfer.length {
                    ok = finish(transfer, from: Int(completion.result))
                }
                if ok { counters.bytes.add(transfer.length, ordering: .relaxed) }
                try memory.write((ok ? Status.ok : Status.ioError).rawValue, at: transfer.statusAddress)
                try transfer.queue.push(memory, head: transfer.head, length: (ok && transfer.isRead ? UInt32(transfer.length) : 0) + 1)
            }
        } while done < count
    }

    /// Drops the transfers queued since the last submit, which the kernel never saw.
    private func abandonUnsubmitted() {
        guard let ring, !unsubmitted.isEmpty else { return }
        ring.discardUnsubmitted()
        for slot in unsubmitted {
            slots[slot]?.vectors?.deallocate()
            slots[slot] = nil
            freeSlots.append(slot)
        }
        unsubmitted.removeAll()
    }

    /// Moves the bytes of `transfer` after the first `done` with preadv/pwritev.
    private func finish(_ transfer: Transfer, from done: Int) -> Bool {
        var skip = done
        var offset = transfer.offset + done
        for buffer in transfer.buffers {
            if skip >= buffer.count {
                skip -= buffer.count
                continue
            }
            let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[skip...])
            guard self.transfer(rest, at: offset, read: transfer.isRead) else { return false }
            offset += rest.count
            skip = 0
        }
        return true
    }

    private func transfer(_ bytes: UnsafeMutableRawBufferPointer, at offset: Int, read isRead: Bool) -> Bool {
        let sector = Int(VirtioBlock.sectorSize)
        let aligned = (Int(bitPattern: bytes.baseAddress) | offset | bytes.count) % sector == 0
        let fd = aligned ? directFile?.raw ?? self.fd : self.fd
        var done = 0
        while done < bytes.count {
            let pointer = bytes.baseAddress! + done
            let count = isRead ? pread(fd, pointer, bytes.count - done, offset + done) : pwrite(fd, pointer, bytes.count - done, offset + done)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { return false }
            done += count
        }
        return true
    }
}

/// virtio-rng: fills device-writable buffers from /dev/urandom.
final class VirtioRNG: VirtioDevice {
    let deviceID: UInt32 = 4
    let kind = "rng"
    let counters = VirtioCounters()
    let features: UInt64 = 0
    let queueSizes: [UInt16] = [64]
    private let fd: Int32

    init() throws {
        fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMMError(.io, "rng: cannot open '/dev/urandom': \(errnoText(errno))") }
    }

    deinit { close(fd) }

    func readConfig(offset: Int, size: Int) -> UInt64 { 0 }

    func process(queue: Int, _ virtQueue: VirtQueue, memory: GuestMemory) throws -> Bool {
        var used = false
        while let chain = try virtQueue.pop(memory) {
            guard chain.buffers.allSatisfy(\.writable) else {
                throw VMMError(.device, "virtio-rng request \(chain.head) has a device-readable buffer")
            }
            var written: UInt32 = 0
            for buffer in chain.buffers {
                let bytes = try memory.buffer(at: buffer.address, length: UInt64(buffer.length))
                var done = 0
                while done < bytes.count {
                    let count = read(fd, bytes.baseAddress! + done, bytes.count - done)
                    if count < 0 && errno == EINTR { continue }
                    guard count > 0 else { break }
                    done += count
                }
                written += UInt32(done)
            }
            counters.bytes.add(Int(written), ordering: .relaxed)
            try virtQueue.push(memory, head: chain.head, length: written)
            used = true
        }
        return used
    }
}
