import CKVM
import MartletSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// virtio-net over a tap device opened with a 12-byte virtio-net header (IFF_VNET_HDR), so
/// frames pass between the tap and the guest's buffers unchanged, offload requests (partial
/// checksums, TSO) included. Two engines: vhost-net, where the kernel moves the frames
/// (`VhostNet`), and userspace, where queue 0 receives (a thread polls the tap) and queue 1
/// transmits (handled by the thread that got the notification). vhost-net is used when it
/// opened and every step of handing it the rings works; any failure falls back to userspace
/// for the device's life, with one line on stderr saying why.
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
    public static let headerSize = 12
    public static let maxFrame = 65_562

    let deviceID: UInt32 = 1
    let features: UInt64
    let queueSizes: [UInt16] = [256, 256]
    let tap: String
    let mac: [UInt8]
    let kind = "net"
    let counters = VirtioCounters()
    private let fd: Int32
    private var wake: [Int32] = [-1, -1]
    private var thread: pthread_t?
    private let state = ConditionLock()
    private var stopping = false
    /// Delivers into the receive queue under the transport's lock (set by the transport).
    var deliver: ((_ body: (VirtQueue, GuestMemory) throws -> Bool) -> Bool?)?
    /// The kernel engine and what it needs from the machine (`attachKernelEngine`); nil once
    /// it failed or when it never opened. Used under the transport's lock.
    private var vhost: (engine: VhostNet, kicks: [Int32], call: Int32, engineChanged: () -> Void)?
    private var pendingVhost: VhostNet?
    private let kernelServing = Atomic<Bool>(false)
    /// The driver accepted MRG_RXBUF (the userspace engine's receive needs to know).
    private let mergeable = Atomic<Bool>(false)

    /// Opens the tap `tap`; `vhost` is the kernel engine, if it opened, which serves the
    /// device once `attachKernelEngine` gave it the queues' eventfds.
    init(tap: String, mac: [UInt8], vhost: VhostNet? = nil) throws {
        let result = ckvm_open_tap(tap, Int32(VirtioNet.headerSize))
        guard result >= 0 else {
            throw VMMError(.io, "cannot open tap '\(tap)': \(errnoText(-result)); it must be a tap device (ip tuntap add dev \(tap) mode tap vnet_hdr) and the VMM needs CAP_NET_ADMIN or ownership of it")
        }
        fd = result
        self.tap = tap
        self.mac = mac
        // A tap that cannot hand over partial checksums and TSO frames gets no offloads offered.
        let offloads = VirtioNet.setTapOffloads(fd, guestFeatures: VirtioNet.featureOffloads)
        _ = VirtioNet.setTapOffloads(fd, guestFeatures: 0)
        features = VirtioNet.featureMAC | VirtioNet.featureMergeableBuffers | (offloads ? VirtioNet.featureOffloads : 0)
        pendingVhost = vhost
        guard pipe(&wake) == 0 else {
            close(fd)
            throw VMMError(.io, "pipe for tap '\(tap)' failed: \(errnoText(errno))")
        }
        for end in wake {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, O_NONBLOCK)
        }
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

    /// Gives the kernel engine the queues' ioeventfds (`kicks`, by queue index), the device's
    /// irqfd (`call`) and a way to make the queue notifier look again at `servedInKernel`.
    /// Without them (KVM refused ioeventfd or irqfd) the device stays in userspace.
    func attachKernelEngine(kicks: [Int32]?, call: Int32?, engineChanged: @escaping () -> Void) {
        guard let engine = pendingVhost else { return }
        pendingVhost = nil
        guard let kicks, let call else {
            Machine.trace("martlet-vmm: tap '\(tap)': vhost-net needs KVM's ioeventfd and irqfd, which it refused; virtio-net runs in userspace\n")
            return
        }
        vhost = (engine, kicks, call, engineChanged)
    }

    /// "vhost-net" when the kernel moves the frames, else "userspace" (for `info`).
    var engine: String? { vhost == nil ? "userspace" : "vhost-net" }

    /// Whether the kernel serves the queues now: their eventfds are its to wait on, and it
    /// interrupts the guest without the transport knowing.
    var servedInKernel: Bool { kernelServing.load(ordering: .acquiring) }

    func driverReady(features driverFeatures: UInt64, queues: [VirtQueue], memory: GuestMemory) {
        _ = VirtioNet.setTapOffloads(fd, guestFeatures: driverFeatures)
        mergeable.store(driverFeatures & VirtioNet.featureMergeableBuffers != 0, ordering: .releasing)
        guard let vhost else { return }
        do {
            try vhost.engine.start(features: driverFeatures, queues: queues, memory: memory, kicks: vhost.kicks, call: vhost.call, tap: fd)
            kernelServing.store(true, ordering: .releasing)
        } catch {
            Machine.trace("martlet-vmm: tap '\(tap)': \(error); virtio-net runs in userspace\n")
            self.vhost = nil
        }
        vhost.engineChanged()
    }

    func reset() {
        mergeable.store(false, ordering: .releasing)
        guard let vhost, servedInKernel else { return }
        vhost.engine.stop(queueCount: queueSizes.count)
        kernelServing.store(false, ordering: .releasing)
        vhost.engineChanged()
    }

    deinit {
        stop()
        close(fd)
        close(wake[0])
        close(wake[1])
    }

    func readConfig(offset: Int, size: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<size where offset + i < mac.count {
            value |= UInt64(mac[offset + i]) << (8 * UInt64(i))
        }
        return value
    }

    func process(queue: Int, _ virtQueue: VirtQueue, memory: GuestMemory) throws -> Bool {
        guard !servedInKernel else { return false }
        if queue == 0 {
            startReceiving()
            var byte: UInt8 = 1
            _ = write(wake[1], &byte, 1)
            return false
        }
        return try Self.transmit(virtQueue, memory: memory) { frame in
            _ = frame.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }  // a full tap drops the frame, like a wire
            counters.bytes.add(frame.count, ordering: .relaxed)
        }
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

    private func startReceiving() {
        state.withLock {
            guard thread == nil, !stopping else { return }
            thread = try? startThread { [unowned self] in receiveLoop() }
        }
    }

    /// Stops the kernel engine or the receive thread (when the VM ends).
    func stop() {
        if let vhost { vhost.engine.stop(queueCount: queueSizes.count) }
        let running: pthread_t? = state.withLock {
            stopping = true
            return thread
        }
        var byte: UInt8 = 1
        _ = write(wake[1], &byte, 1)
        if let running {
            pthread_join(running, nil)
            state.withLock { thread = nil }
        }
    }

    private func receiveLoop() {
        Seccomp.confineThreadOrExit(.io)
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
            let delivered = deliver? { queue, memory in
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
