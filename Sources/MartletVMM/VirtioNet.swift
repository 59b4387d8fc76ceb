import CKVM
import MartletSystem
import MartletVMMProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// virtio-net over a tap device opened with a 12-byte virtio-net header (IFF_VNET_HDR), so
/// frames pass between the tap and the guest's buffers unchanged, offload requests (partial
/// checksums, TSO) included. Two engines: vhost-net, where the kernel moves the frames
/// (`VhostNet`, one per queue pair), and userspace, where each pair's receive queue is fed
/// by a thread polling that pair's tap queue and its transmit queue is handled by the thread
/// that got the notification. vhost-net is used when it opened and every step of handing it
/// the rings works; any failure falls back to userspace for the device's life, with one line
/// on stderr saying why.
///
/// More than one queue pair (VIRTIO_NET_F_MQ): queues rx0, tx0, rx1, tx1, ..., then the
/// control queue, served in userspace whatever the engine; each pair has its own queue of a
/// multi-queue tap, and the pairs the driver does not use are detached from the tap, so the
/// tap steers no frame to a receive queue nobody fills.
public final class VirtioNet: VirtioDevice {
    static let featureMAC: UInt64 = 1 << 5
    /// VIRTIO_NET_F_MRG_RXBUF: a received frame may span several of the driver's buffers, so
    /// Linux posts page-sized buffers instead of chains of 17 pages for every frame (which
    /// fill a 256-entry ring with 15 frames): the host-to-guest rate depends on it.
    static let featureMergeableBuffers: UInt64 = 1 << 15
    /// VIRTIO_NET_F_CSUM, GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, HOST_TSO4, HOST_TSO6: the header
    /// carries them and the tap does the work, so they cost nothing on either engine. Offered
    /// only when the tap takes TUNSETOFFLOAD.
    static let featureOffloads: UInt64 = (1 << 0) | (1 << 1) | (1 << 7) | (1 << 8) | (1 << 11) | (1 << 12)
    /// VIRTIO_NET_F_CTRL_VQ and VIRTIO_NET_F_MQ, offered only with more than one pair.
    static let featureControlQueue: UInt64 = 1 << 17
    static let featureMultiQueue: UInt64 = 1 << 22
    public static let headerSize = 12
    public static let maxFrame = 65_562
    static let controlQueueSize: UInt16 = 64
    /// The control queue's answers (VIRTIO_NET_OK, VIRTIO_NET_ERR) and the one command served:
    /// VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET with a le16 pair count.
    public static let controlOK: UInt8 = 0
    public static let controlError: UInt8 = 1
    static let controlClassMQ: UInt8 = 4
    static let controlPairsSet: UInt8 = 0

    let deviceID: UInt32 = 1
    let features: UInt64
    let queueSizes: [UInt16]
    let tap: String
    let mac: [UInt8]
    let kind = "net"
    let counters = VirtioCounters()
    /// Queue pairs offered (max_virtqueue_pairs).
    let pairs: Int
    /// One tap queue per pair.
    private let fds: [Int32]
    /// Whether each tap queue is attached (multi-queue taps only), under the transport's lock.
    private var attached: [Bool]
    /// Pairs the driver can use: 1 until it negotiated MQ and set more (under the transport's lock).
    private(set) var activePairs = 1
    /// The driver accepted VIRTIO_NET_F_MQ (the control queue then follows the last pair) and
    /// VIRTIO_NET_F_CTRL_VQ (under the transport's lock).
    private var negotiatedMQ = false
    private var negotiatedControl = false
    /// One wake pipe and receive thread per pair.
    private var wakes: [[Int32]] = []
    private var threads: [pthread_t?]
    private let state = ConditionLock()
    private var stopping = false
    /// Delivers into a receive queue (by queue index) under the transport's lock (set by the transport).
    var deliver: ((_ queue: Int, _ body: (VirtQueue, GuestMemory) throws -> Bool) -> Bool?)?
    /// The kernel engines (one per pair) and what they need from the machine
    /// (`attachKernelEngine`); nil once they failed or when they never opened. Used under the
    /// transport's lock.
    private var vhost: (engines: [VhostNet], kicks: [Int32], call: Int32, engineChanged: () -> Void)?
    private var pendingVhost: [VhostNet]
    /// The queues the kernel serves now (data queues of the pairs started), 0 when none.
    private let kernelQueues = Atomic<Int>(0)
    /// The driver accepted MRG_RXBUF (the userspace engine's receive needs to know).
    private let mergeable = Atomic<Bool>(false)

    /// Opens `pairs` queues of the tap `tap` (a multi-queue tap when more than one); `vhost`
    /// are the kernel engines, one per pair, if they opened, which serve the device once
    /// `attachKernelEngine` gave them the queues' eventfds.
    init(tap: String, mac: [UInt8], pairs: Int = 1, vhost: [VhostNet] = []) throws {
        precondition((1...VMConfig.NIC.maxQueues).contains(pairs))
        var fds: [Int32] = []
        var fdsToClean = true
        defer { if fdsToClean { for fd in fds { close(fd) } } }
        for _ in 0..<pairs {
            var result = ckvm_open_tap(tap, Int32(VirtioNet.headerSize), pairs > 1 ? 1 : 0)
            // A tap made with multi_queue opens only as one, one queue or more.
            if result == -EINVAL && pairs == 1 { result = ckvm_open_tap(tap, Int32(VirtioNet.headerSize), 1) }
            guard result >= 0 else {
                let kind = pairs > 1 ? "a multi-queue tap device (ip tuntap add dev \(tap) mode tap vnet_hdr multi_queue) for \(pairs) queue pairs" : "a tap device (ip tuntap add dev \(tap) mode tap vnet_hdr)"
                throw VMMError(.io, "cannot open tap '\(tap)'\(pairs > 1 ? " queue \(fds.count)" : ""): \(errnoText(-result)); it must be \(kind) and the VMM needs CAP_NET_ADMIN or ownership of it")
            }
            fds.append(result)
        }
        self.fds = fds
        self.pairs = pairs
        self.tap = tap
        self.mac = mac
        attached = Array(repeating: true, count: pairs)
        threads = Array(repeating: nil, count: pairs)
        queueSizes = Array(repeating: 256, count: 2 * pairs) + (pairs > 1 ? [VirtioNet.controlQueueSize] : [])
        // A tap that cannot hand over partial checksums and TSO frames gets no offloads offered.
        let offloads = fds.allSatisfy { VirtioNet.setTapOffloads($0, guestFeatures: VirtioNet.featureOffloads) }
        for fd in fds { _ = VirtioNet.setTapOffloads(fd, guestFeatures: 0) }
        features = VirtioNet.featureMAC | VirtioNet.featureMergeableBuffers | (offloads ? VirtioNet.featureOffloads : 0)
            | (pairs > 1 ? VirtioNet.featureControlQueue | VirtioNet.featureMultiQueue : 0)
        pendingVhost = vhost
        // Every property is set: a throw from here on runs deinit, which closes the taps and the pipes made.
        fdsToClean = false
        for _ in 0..<pairs {
            var wake: [Int32] = [-1, -1]
            guard pipe(&wake) == 0 else {
                throw VMMError(.io, "pipe for tap '\(tap)' failed: \(errnoText(errno))")
            }
            for end in wake {
                _ = fcntl(end, F_SETFD, FD_CLOEXEC)
                _ = fcntl(end, F_SETFL, O_NONBLOCK)
            }
            wakes.append(wake)
        }
        setActivePairs(1)
    }

    /// TUNSETOFFLOAD with the TUN_F_* flags matching the driver's GUEST_* offloads: which
    /// unfinished frames (partial checksum, TSO) the tap may pass to the guest.
    private static func setTapOffloads(_ fd: Int32, guestFeatures: UInt64) -> Bool {
        var flags: UInt32 = 0
        if guestFeatures & (1 << 1) != 0 {
            flags |= CKVM_TUN_F_CSUM
            if guestFeatures & (1 << 7) != 0 { flags |= CKVM_TUN_F_TSO4 }
            if guestFeatures & (1 << 8) != 0 { flags |= CKVM_TUN_F_TSO6 }
        }
        return ckvm_ioctl(fd, CKVM_TUNSETOFFLOAD, UInt(flags)) >= 0
    }

    /// Gives the kernel engines the queues' ioeventfds (`kicks`, by queue index), the device's
    /// irqfd (`call`) and a way to make the queue notifier look again at which queues the
    /// kernel serves. Without them (KVM refused ioeventfd or irqfd) the device stays in userspace.
    func attachKernelEngine(kicks: [Int32]?, call: Int32?, engineChanged: @escaping () -> Void) {
        guard !pendingVhost.isEmpty else { return }
        let engines = pendingVhost
        pendingVhost = []
        guard let kicks, let call else {
            Machine.trace("martlet-vmm: tap '\(tap)': vhost-net needs KVM's ioeventfd and irqfd, which it refused; virtio-net runs in userspace\n")
            return
        }
        vhost = (engines, kicks, call, engineChanged)
    }

    /// "vhost-net" when the kernel moves the frames, else "userspace" (for `info`).
    var engine: String? { vhost == nil ? "userspace" : "vhost-net" }

    var queuePairs: Int? { activePairs }

    /// Whether the kernel serves the data queues now: their eventfds are its to wait on, and
    /// it interrupts the guest without the transport knowing.
    var servedInKernel: Bool { kernelQueues.load(ordering: .acquiring) > 0 }

    /// The control queue stays in userspace while the kernel serves the data queues.
    func servedInKernel(queue: Int) -> Bool { queue < kernelQueues.load(ordering: .acquiring) }

    /// The control queue's index: after the last pair with MQ negotiated, else after the
    /// first (the spec's layout for a driver that took CTRL_VQ but not MQ); nil without one.
    private var controlQueue: Int? {
        guard negotiatedControl else { return nil }
        return negotiatedMQ ? 2 * pairs : 2
    }

    func driverReady(features driverFeatures: UInt64, queues: [VirtQueue], memory: GuestMemory) {
        for fd in fds { _ = VirtioNet.setTapOffloads(fd, guestFeatures: driverFeatures) }
        mergeable.store(driverFeatures & VirtioNet.featureMergeableBuffers != 0, ordering: .releasing)
        negotiatedMQ = pairs > 1 && driverFeatures & VirtioNet.featureMultiQueue != 0
        negotiatedControl = pairs > 1 && driverFeatures & VirtioNet.featureControlQueue != 0
        setActivePairs(1)
        guard let vhost else { return }
        // Without MQ the driver has one pair (and queue 2 may be its control queue).
        let served = negotiatedMQ ? pairs : 1
        var started = 0
        do {
            for pair in 0..<served {
                try vhost.engines[pair].start(
                    features: driverFeatures, queues: Array(queues[2 * pair...2 * pair + 1]), memory: memory,
                    kicks: Array(vhost.kicks[2 * pair...2 * pair + 1]), call: vhost.call, tap: fds[pair])
                started += 1
            }
            kernelQueues.store(2 * served, ordering: .releasing)
        } catch {
            for engine in vhost.engines[0..<started] { engine.stop(queueCount: 2) }
            Machine.trace("martlet-vmm: tap '\(tap)': \(error); virtio-net runs in userspace\n")
            self.vhost = nil
        }
        vhost.engineChanged()
    }

    func reset() {
        mergeable.store(false, ordering: .releasing)
        negotiatedMQ = false
        negotiatedControl = false
        setActivePairs(1)
        guard let vhost, servedInKernel else { return }
        for engine in vhost.engines { engine.stop(queueCount: 2) }
        kernelQueues.store(0, ordering: .releasing)
        vhost.engineChanged()
    }

    /// Attaches the tap queues of the first `count` pairs and detaches the others, so the
    /// tap spreads frames over the receive queues the driver fills (TUNSETQUEUE; a
    /// single-queue tap has nothing to steer).
    private func setActivePairs(_ count: Int) {
        activePairs = count
        guard pairs > 1 else { return }
        for pair in 1..<pairs where attached[pair] != (pair < count) {
            if ckvm_tap_set_queue(fds[pair], pair < count ? 1 : 0) >= 0 { attached[pair] = pair < count }
        }
    }

    deinit {
        stop()
        for fd in fds { close(fd) }
        for wake in wakes {
            close(wake[0])
            close(wake[1])
        }
    }

    /// mac, status (not offered: 0), max_virtqueue_pairs (le16 at 8), byte by byte.
    func readConfig(offset: Int, size: Int) -> UInt64 {
        let space = mac + [0, 0, UInt8(pairs & 0xFF), UInt8(pairs >> 8)]
        var value: UInt64 = 0
        for i in 0..<size where offset + i < space.count {
            value |= UInt64(space[offset + i]) << (8 * UInt64(i))
        }
        return value
    }

    func process(queue: Int, _ virtQueue: VirtQueue, memory: GuestMemory) throws -> Bool {
        if queue == controlQueue {
            return try Self.control(virtQueue, memory: memory, maxPairs: negotiatedMQ ? pairs : 1) { count in
                setActivePairs(count)
            }
        }
        guard !servedInKernel(queue: queue), queue < 2 * pairs else { return false }
        let pair = queue / 2
        if queue % 2 == 0 {
            startReceiving(pair: pair)
            var byte: UInt8 = 1
            _ = write(wakes[pair][1], &byte, 1)
            return false
        }
        let fd = fds[pair]
        return try Self.transmit(virtQueue, memory: memory) { frame in
            _ = frame.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }  // a full tap drops the frame, like a wire
            counters.bytes.add(frame.count, ordering: .relaxed)
        }
    }

    /// Answers every command the driver made available on the control queue: class, command,
    /// data (device-readable), then an ack byte (device-writable) that gets VIRTIO_NET_OK or
    /// VIRTIO_NET_ERR. Only VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET with a count in 1...`maxPairs` is
    /// OK (`setPairs` applies it); anything else, a short or long command included, is ERR.
    /// A chain with no device-writable byte, or a device-readable one after it, throws.
    /// Public, without a tap, for the fuzz target.
    public static func control(_ virtQueue: VirtQueue, memory: GuestMemory, maxPairs: Int, setPairs: (Int) -> Void) throws -> Bool {
        var used = false
        while let chain = try virtQueue.pop(memory) {
            guard let ack = chain.writable.first(where: { $0.length > 0 }) else {
                throw VMMError(.device, "virtio-net control chain \(chain.head) has no device-writable ack byte")
            }
            // The one command served is 4 bytes; only that many are read of a longer one.
            var command: [UInt8] = []
            var length = 0
            for buffer in chain.readable {
                length += Int(buffer.length)
                let wanted = min(Int(buffer.length), 4 - command.count)
                if wanted > 0 { command += try memory.buffer(at: buffer.address, length: UInt64(wanted)) }
            }
            var answer = controlError
            if length == 4, command[0] == controlClassMQ, command[1] == controlPairsSet {
                let count = Int(command[2]) | Int(command[3]) << 8
                if (1...maxPairs).contains(count) {
                    setPairs(count)
                    answer = controlOK
                }
            }
            try memory.write(answer, at: ack.address)
            try virtQueue.push(memory, head: chain.head, length: 1)
            used = true
        }
        return used
    }

    /// Takes every frame the guest made available on the transmit queue (its virtio-net header
    /// first) and hands it to `send`; returns whether the used ring changed. A chain with a
    /// device-writable buffer, or shorter than the header or longer than `maxFrame`, throws.
    /// Public, without a tap, for the fuzz target.
    public static func transmit(_ virtQueue: VirtQueue, memory: GuestMemory, send: ([UInt8]) -> Void) throws -> Bool {
        var used = false
        while let chain = try virtQueue.pop(memory) {
            guard chain.buffers.allSatisfy({ !$0.writable }) else {
                throw VMMError(.device, "virtio-net transmit chain \(chain.head) has a device-writable buffer")
            }
            let total = chain.buffers.reduce(0) { $0 + Int($1.length) }
            guard total >= VirtioNet.headerSize, total <= VirtioNet.maxFrame else {
                throw VMMError(.device, "virtio-net transmit chain \(chain.head) is \(total) bytes, outside \(VirtioNet.headerSize)...\(VirtioNet.maxFrame)")
            }
            var frame: [UInt8] = []
            frame.reserveCapacity(total)
            for buffer in chain.buffers {
                frame += try memory.buffer(at: buffer.address, length: UInt64(buffer.length))
            }
            send(frame)
            try virtQueue.push(memory, head: chain.head, length: 0)
            used = true
        }
        return used
    }

    /// Copies one received frame (its virtio-net header first) into the chains the guest made
    /// available on the receive queue; returns the bytes delivered, or nil when there are not
    /// chains enough yet (none are used then). Without MRG_RXBUF the frame goes into one chain,
    /// cut to its size; with it (`mergeable`) into as many as it takes, their count in the
    /// header's num_buffers, and a frame larger than the whole ring is dropped (0). A chain
    /// with a device-readable buffer, or a first chain shorter than the header, throws.
    /// Public for the fuzz target.
    public static func receive(_ frame: ArraySlice<UInt8>, into queue: VirtQueue, memory: GuestMemory, mergeable: Bool = false) throws -> Int? {
        var chains: [DescriptorChain] = []
        var room = 0
        repeat {
            guard let chain = try queue.pop(memory) else {
                queue.rewind(chains.count)
                return nil
            }
            guard chain.buffers.allSatisfy(\.writable) else {
                throw VMMError(.device, "virtio-net receive chain \(chain.head) has a device-readable buffer")
            }
            room += chain.buffers.reduce(0) { $0 + Int($1.length) }
            chains.append(chain)
            if mergeable && chains.count == 1 && room < headerSize {
                throw VMMError(.device, "virtio-net receive chain \(chain.head) is \(room) bytes, shorter than the \(headerSize)-byte header")
            }
        } while mergeable && room < frame.count && chains.count < Int(queue.size)
        if mergeable && room < frame.count {
            // The whole ring cannot hold it: waiting would wait forever.
            queue.rewind(chains.count)
            return 0
        }
        // num_buffers: the chains this frame takes (1 without MRG_RXBUF, as the spec asks).
        var header = Array(frame.prefix(headerSize))
        if header.count == headerSize {
            header[10] = UInt8(chains.count & 0xFF)
            header[11] = UInt8(chains.count >> 8)
        }
        var written = [Int](repeating: 0, count: chains.count)
        var chainIndex = 0, bufferIndex = 0, bufferOffset = 0
        func put(_ bytes: ArraySlice<UInt8>) throws {
            var rest = bytes
            while !rest.isEmpty && chainIndex < chains.count {
                let buffers = chains[chainIndex].buffers
                guard bufferIndex < buffers.count else {
                    (chainIndex, bufferIndex, bufferOffset) = (chainIndex + 1, 0, 0)
                    continue
                }
                let buffer = buffers[bufferIndex]
                let count = min(Int(buffer.length) - bufferOffset, rest.count)
                try memory.write(rest.prefix(count), at: buffer.address + UInt64(bufferOffset))
                rest = rest.dropFirst(count)
                written[chainIndex] += count
                bufferOffset += count
                if bufferOffset == Int(buffer.length) { (bufferIndex, bufferOffset) = (bufferIndex + 1, 0) }
            }
        }
        try put(header[...])
        try put(frame.dropFirst(header.count))
        for (chain, length) in zip(chains, written) {
            try queue.push(memory, head: chain.head, length: UInt32(length))
        }
        return written.reduce(0, +)
    }

    private func startReceiving(pair: Int) {
        state.withLock {
            guard threads[pair] == nil, !stopping else { return }
            threads[pair] = try? startThread { [unowned self] in receiveLoop(pair: pair) }
        }
    }

    /// Stops the kernel engines or the receive threads (when the VM ends).
    func stop() {
        if let vhost { for engine in vhost.engines { engine.stop(queueCount: 2) } }
        let running: [pthread_t] = state.withLock {
            stopping = true
            return threads.compactMap { $0 }
        }
        var byte: UInt8 = 1
        for wake in wakes { _ = write(wake[1], &byte, 1) }
        for thread in running { pthread_join(thread, nil) }
        state.withLock { threads = threads.map { _ in nil } }
    }

    private func receiveLoop(pair: Int) {
        Seccomp.confineThreadOrExit(.io)
        let fd = fds[pair]
        let wake = wakes[pair]
        var frame = [UInt8](repeating: 0, count: VirtioNet.maxFrame)
        var pending = 0
        while !state.withLock({ stopping }) {
            var fds = [pollfd(fd: wake[0], events: Int16(POLLIN), revents: 0), pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            // With a frame waiting for guest buffers, only a notification can help.
            let ready = poll(&fds, pending > 0 ? 1 : 2, -1)
            if ready < 0 { if errno == EINTR { continue } else { return } }
            if fds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                _ = read(wake[0], &drain, drain.count)
            }
            if pending == 0 {
                let count = frame.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard count > 0 else { continue }
                pending = count
            }
            let length = pending
            let delivered = deliver?(2 * pair) { queue, memory in
                let mergeable = mergeable.load(ordering: .acquiring)
                guard let delivered = try Self.receive(frame[0..<length], into: queue, memory: memory, mergeable: mergeable) else { return false }
                counters.bytes.add(delivered, ordering: .relaxed)
                return true
            }
            if delivered == true { pending = 0 }
            if delivered == nil && pending > 0 { pending = 0 }  // queue not live: drop, like a link that is down
        }
    }
}

extension VirtioNet {
    /// A stable locally administered MAC derived from the tap name.
    static func defaultMAC(for tap: String) -> [UInt8] {
        var hash: UInt32 = 2_166_136_261
        for byte in tap.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return [0x52, 0x54, 0x00, UInt8(hash & 0xFF), UInt8((hash >> 8) & 0xFF), UInt8((hash >> 16) & 0xFF)]
    }
}
