import MartletFuzzing
import MartletVMM
import MartletVMMProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// The decoders a guest reaches (its rings, its fw_cfg accesses) and the VMM's own inputs
/// (its configuration and control socket): Foundation-free and apart from the host's
/// targets, so their sanitizer build takes under a minute and runs in every `make test`.
let targets: [FuzzTarget] = [
    FuzzTarget(name: "vmm-config", summary: "martlet-vmm's JSON configuration, then its validation") { bytes in
        if let config = try? VMConfig(json: String(decoding: bytes, as: UTF8.self), source: "fuzz") {
            _ = try? config.validate()
        }
    },
    FuzzTarget(name: "control", summary: "a request line on the VMM's control socket, and a reply line") { bytes in
        let line = String(decoding: bytes, as: UTF8.self)
        _ = try? ControlRequest(line: line)
        _ = try? ControlReply(line: line)
    },
    FuzzTarget(name: "virtqueue", summary: "the virtqueue chain walk over guest memory the guest wrote") { bytes in
        VirtQueueInput.run(bytes)
    },
    FuzzTarget(name: "virtio-blk", summary: "virtio-blk requests on a ring in guest memory the guest wrote, on a small disk") { bytes in
        BlockInput.run(bytes)
    },
    FuzzTarget(name: "virtio-net", summary: "virtio-net transmit and receive chains on a ring in guest memory the guest wrote") { bytes in
        NetInput.run(bytes)
    },
    FuzzTarget(name: "fw-cfg", summary: "fw_cfg port and DMA accesses, descriptors in guest memory the guest wrote") { bytes in
        FwCfgInput.run(bytes)
    },
]

/// A firmware's conversation with fw_cfg, as any guest could hold it: the bytes are both the
/// first 64 KiB of guest RAM (where DMA descriptors and buffers point) and a script of port
/// accesses, five bytes each (operation, then a little-endian value).
enum FwCfgInput {
    static func run(_ bytes: [UInt8]) {
        guard let memory = try? GuestMemory(size: 1 << 20), let ram = try? memory.buffer(at: 0, length: 64 << 10) else { return }
        ram.initializeMemory(as: UInt8.self, repeating: 0)
        ram.copyBytes(from: bytes.prefix(ram.count))
        let device = FwCfg(memory: memory)
        // Items of the sizes the VMM gives SeaBIOS: e820 entries, a boot order, ACPI blobs.
        try? device.addFile("etc/e820", [UInt8](repeating: 0x11, count: 40))
        try? device.addFile("bootorder", Array("/virtio-mmio@d0000000/virtio-blk@0\n".utf8))
        try? device.addFile("etc/acpi/tables", [UInt8](repeating: 0x22, count: 4096))
        device.set(0x03, [0, 0, 0, 8, 0, 0, 0, 0])
        var index = 0
        while index + 5 <= bytes.count {
            let operation = bytes[index]
            let value = UInt32(bytes[index + 1]) | UInt32(bytes[index + 2]) << 8
                | UInt32(bytes[index + 3]) << 16 | UInt32(bytes[index + 4]) << 24
            let size = 1 << Int(bytes[index + 1] % 3)
            index += 5
            switch operation % 6 {
            case 0: device.write(port: FwCfg.selectorPort, size: 2, value: value & 0xFFFF)
            case 1: _ = device.read(port: FwCfg.dataPort, size: size)
            case 2: device.write(port: FwCfg.dmaPort, size: 4, value: value)
            // The low half starts the transfer; mostly at a descriptor inside the RAM the
            // input filled (big-endian, as the guest writes it), sometimes anywhere.
            case 3: device.write(port: FwCfg.dmaPort + 4, size: 4, value: operation & 0x80 == 0 ? (value & 0xFFF0).bigEndian : value)
            case 4: _ = device.read(port: FwCfg.dmaPort + UInt16(bytes[index - 4] % 8), size: size)
            default: device.write(port: FwCfg.dataPort, size: size, value: value)
            }
        }
    }
}

/// Lays fuzz bytes out as a guest would: a small header sets the queue (size and ring
/// addresses, possibly bogus; bit 4 of its flags byte negotiates indirect descriptors), the
/// rest is guest RAM from address 0; nil when the queue is one a driver could not make ready
/// (the transport refuses it before any device sees it).
enum GuestRing {
    static let headerSize = 8

    static func layout(_ bytes: [UInt8]) -> (memory: GuestMemory, queue: VirtQueue)? {
        guard bytes.count >= headerSize, let memory = try? GuestMemory(size: 2 << 20) else { return nil }
        func half(_ index: Int) -> UInt16 { UInt16(bytes[index]) | UInt16(bytes[index + 1]) << 8 }
        let queue = VirtQueue(maxSize: 256)
        queue.size = half(0) % 512
        // Ring addresses near the data, sometimes misaligned or beyond RAM (bit 15 set).
        queue.descriptorTable = UInt64(half(2)) << 4
        queue.availableRing = UInt64(half(4)) << 4 | UInt64(bytes[6] & 1) << 1
        queue.usedRing = UInt64(half(6)) << 4 | (bytes[6] & 2 == 0 ? 0 : 0x10_0000_0000)
        let ram = try! memory.buffer(at: 0, length: 64 << 10)
        ram.initializeMemory(as: UInt8.self, repeating: 0)
        ram.copyBytes(from: bytes.dropFirst(headerSize).prefix(ram.count))
        guard (try? queue.validate(memory)) != nil else { return nil }
        queue.ready = true
        queue.indirect = bytes[6] & 0x10 != 0
        return (memory, queue)
    }
}

/// The device side walks every chain the "guest" made available, as a virtio device does on
/// a notify.
enum VirtQueueInput {
    static func run(_ bytes: [UInt8]) {
        guard let (memory, queue) = GuestRing.layout(bytes) else { return }
        for _ in 0..<Int(queue.size) + 1 {
            guard let chain = try? queue.pop(memory) else { return }
            _ = chain.buffers.reduce(0) { $0 &+ UInt64($1.length) }
            guard (try? queue.push(memory, head: chain.head, length: 0)) != nil else { return }
        }
    }
}

/// virtio-blk's request handling on the ring the bytes lay out (`GuestRing`), over a 64 KiB
/// disk in /dev/shm (so FLUSH costs nothing); bit 2 of the header's flags byte makes it
/// read-only, bit 3 puts it on preadv/pwritev instead of io_uring, and bit 5 (on io_uring)
/// returns the completions as the I/O thread does, from the ring's eventfd. Reads, writes,
/// GET_ID, DISCARD and WRITE_ZEROES all reach the file.
enum BlockInput {
    /// The disk, made once per process and removed at exit; what one input writes stays for
    /// the next, as on a real disk.
    static let disk: String? = {
        let path = "/dev/shm/martlet-fuzz-disk-\(getpid()).raw"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard ftruncate(fd, 64 << 10) == 0 else { return nil }
        atexit { unlink("/dev/shm/martlet-fuzz-disk-\(getpid()).raw") }
        return path
    }()

    /// The devices, made once per process like the disk: read-write and read-only (bit 2 of
    /// the header's flags byte), each on io_uring and on preadv/pwritev (bit 3). A VMM makes
    /// its io_uring once per disk; a ring set up and torn down for every input once held one
    /// input 12 s in the kernel's teardown (a libFuzzer timeout) on a busy machine, and its
    /// replay took 8-33 ms. Unchecked: the fuzzer and the replayer run one input at a time on
    /// one thread.
    nonisolated(unsafe) static let devices: [VirtioBlock]? = disk.flatMap { disk in
        try? [(false, BlockEngine.ioUring), (true, .ioUring), (false, .sync), (true, .sync)].map {
            try VirtioBlock(path: disk, readOnly: $0.0, serial: "fuzz", engine: $0.1)
        }
    }

    /// Read-write and read-only on io_uring with asynchronous completions (bit 5).
    nonisolated(unsafe) static let asynchronous: [(device: VirtioBlock, event: Int32)]? = disk.flatMap { disk in
        try? [false, true].map { readOnly in
            let device = try VirtioBlock(path: disk, readOnly: readOnly, serial: "fuzz", engine: .ioUring)
            guard let event = device.startAsynchronousCompletions() else { throw FuzzSetupError() }
            return (device, event)
        }
    }

    struct FuzzSetupError: Error {}

    static func run(_ bytes: [UInt8]) {
        guard let devices, let asynchronous, let (memory, queue) = GuestRing.layout(bytes) else { return }
        guard bytes[6] & 0x28 == 0x20 else {
            _ = try? devices[Int(bytes[6] >> 2) & 3].process(queue: 0, queue, memory: memory)
            return
        }
        let (device, event) = asynchronous[Int(bytes[6] >> 2) & 1]
        _ = try? device.process(queue: 0, queue, memory: memory)
        var fds = [pollfd(fd: event, events: Int16(POLLIN), revents: 0)]
        while device.inFlight > 0, poll(&fds, 1, 1000) == 1 {
            guard (try? device.completeAsynchronously(memory: memory, deliver: true)) != nil else { break }
        }
        // This input's memory goes away: nothing may still be in flight into it.
        device.quiesce(memory: memory)
    }
}

/// virtio-net's transmit side takes every frame on the ring the bytes lay out (`GuestRing`);
/// then, with bit 2 of the header's flags byte, the same ring serves as the receive queue for
/// a frame cut from the input's end (its last byte says how long), chain after chain, spread
/// over several chains with bit 5 (MRG_RXBUF); with bit 3 it is the control queue of a device
/// with up to 8 queue pairs.
enum NetInput {
    static func run(_ bytes: [UInt8]) {
        guard let (memory, queue) = GuestRing.layout(bytes) else { return }
        if bytes[6] & 8 != 0 {
            _ = try? VirtioNet.control(queue, memory: memory, maxPairs: 8) { pairs in precondition((1...8).contains(pairs)) }
            return
        }
        if bytes[6] & 4 == 0 {
            _ = try? VirtioNet.transmit(queue, memory: memory) { frame in _ = frame.count }
            return
        }
        let frame = bytes.suffix(Int(bytes.last ?? 0) * 64)
        for _ in 0..<Int(queue.size) + 1 {
            guard (try? VirtioNet.receive(frame, into: queue, memory: memory, mergeable: bytes[6] & 0x20 != 0)) != nil else { return }
        }
    }
}
