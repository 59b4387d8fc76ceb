import MartletSystem
import MartletVMMProtocol

/// A virtio device behind the MMIO transport.
protocol VirtioDevice: AnyObject {
    var deviceID: UInt32 { get }
    /// "blk", "net" or "rng", for `info`.
    var kind: String { get }
    /// What the device served; the device adds its payload bytes, the transport the rest.
    var counters: VirtioCounters { get }
    /// Device feature bits (VIRTIO_F_VERSION_1 is added by the transport).
    var features: UInt64 { get }
    var queueSizes: [UInt16] { get }
    /// Reads `size` bytes of the device configuration space at `offset`.
    func readConfig(offset: Int, size: Int) -> UInt64
    /// Handles every available chain of `queue`; returns whether the used ring changed.
    func process(queue: Int, _ virtQueue: VirtQueue, memory: GuestMemory) throws -> Bool
    /// Stops background work (receive threads) when the VM ends.
    func stop()
    /// The driver set DRIVER_OK with `features` accepted and `queues` set up (under the
    /// transport's lock): the moment to hand the rings to a kernel engine.
    func driverReady(features: UInt64, queues: [VirtQueue], memory: GuestMemory)
    /// The driver reset the device (under the transport's lock): a kernel engine lets go of the rings.
    func reset()
    /// Whether a kernel engine serves the queues now: it interrupts the guest through the
    /// irqfd itself, so the transport cannot set InterruptStatus before each interrupt.
    var servedInKernel: Bool { get }
    /// Whether a kernel engine waits on `queue`'s notifications now (a device may leave one,
    /// such as virtio-net's control queue, to userspace).
    func servedInKernel(queue: Int) -> Bool
    /// Which engine moves the data, for devices that have a choice ("vhost-net", "userspace").
    var engine: String? { get }
    /// The queue pairs the driver uses, for a NIC (for `info`).
    var queuePairs: Int? { get }
    /// Lets requests complete after `process` returned: an eventfd that becomes readable when
    /// some did (the I/O thread then calls `completeAsynchronously`), or nil when `process`
    /// finishes every request itself.
    func startAsynchronousCompletions() -> Int32?
    /// Returns the requests completed since the last call to their queues, or drops them when
    /// `deliver` is false (the device failed); never waits (under the transport's lock).
    func completeAsynchronously(memory: GuestMemory, deliver: Bool) throws
    /// Waits for the requests still running and drops them: the I/O thread leaves.
    func quiesce(memory: GuestMemory)
}

extension VirtioDevice {
    func stop() {}
    func driverReady(features: UInt64, queues: [VirtQueue], memory: GuestMemory) {}
    func reset() {}
    var servedInKernel: Bool { false }
    func servedInKernel(queue: Int) -> Bool { servedInKernel }
    var engine: String? { nil }
    var queuePairs: Int? { nil }
    func startAsynchronousCompletions() -> Int32? { nil }
    func completeAsynchronously(memory: GuestMemory, deliver: Bool) throws {}
    func quiesce(memory: GuestMemory) {}
}

/// The virtio-mmio transport, version 2 ("modern"), one device per 4 KiB window.
final class VirtioMMIOTransport: MMIODevice {
    static let magic: UInt32 = 0x7472_6976  // "virt"
    static let versionOne: UInt64 = 1 << 32
    static let statusNeedsReset: UInt32 = 0x40
    static let statusDriverOK: UInt32 = 0x04
    /// The QueueNotify register: the driver writes a queue index to it.
    static let queueNotifyOffset: UInt64 = 0x050

    let mmioBase: UInt64
    let mmioSize: UInt64 = 0x1000
    let irq: UInt32
    let device: VirtioDevice
    let queues: [VirtQueue]
    private let memory: GuestMemory
    private let lock = ConditionLock()
    private let interrupt: (UInt32) -> Void
    private var status: UInt32 = 0
    private var interruptStatus: UInt32 = 0
    private var deviceFeaturesSelect: UInt32 = 0
    private var driverFeaturesSelect: UInt32 = 0
    private(set) var driverFeatures: UInt64 = 0
    private var queueSelect: UInt32 = 0
    /// The last malformed-input error; the device stops until the driver resets it.
    private(set) var lastError: VMMError?

    init(device: VirtioDevice, base: UInt64, irq: UInt32, memory: GuestMemory, interrupt: @escaping (UInt32) -> Void) {
        self.device = device
        self.mmioBase = base
        self.irq = irq
        self.memory = memory
        self.interrupt = interrupt
        self.queues = device.queueSizes.map { VirtQueue(maxSize: $0) }
        if let net = device as? VirtioNet {
            net.deliver = { [unowned self] queue, body in deliver(queue: queue, body) }
        }
    }

    /// Runs `body` on a queue from a device thread (received frames), under the transport's
    /// lock, and interrupts the guest when it used a buffer. Returns nil when the queue is not live.
    func deliver(queue index: Int, _ body: (VirtQueue, GuestMemory) throws -> Bool) -> Bool? {
        var raise = false
        let result: Bool? = lock.withLock {
            guard index < queues.count, queues[index].ready,
                status & VirtioMMIOTransport.statusDriverOK != 0,
                status & VirtioMMIOTransport.statusNeedsReset == 0
            else { return nil }
            do {
                guard try body(queues[index], memory) else { return false }
                interruptStatus |= 1
                raise = try queues[index].publishUsed(memory)
                return true
            } catch let error as VMMError {
                fail(error)
                return nil
            } catch {
                return nil
            }
        }
        if raise { signal() }
        return result
    }

    /// Interrupts the guest; callers set the InterruptStatus bit first (under the lock), so
    /// a driver that reads it on the interrupt sees why.
    private func signal() {
        device.counters.interrupts.add(1, ordering: .relaxed)
        interrupt(irq)
    }

    /// The device's counters for `info`.
    var report: ControlReply.Device {
        // The engine changes under the lock (a DRIVER_OK write whose vhost-net set-up failed).
        let (requests, engine, pairs) = lock.withLock { (queues.reduce(0) { $0 + $1.completed }, device.engine, device.queuePairs) }
        return device.counters.report(kind: device.kind, requests: requests, engine: engine, queuePairs: pairs)
    }

    var offeredFeatures: UInt64 { device.features | VirtioMMIOTransport.versionOne | VirtQueue.featureEventIndex | VirtQueue.featureIndirect }

    private var selectedQueue: VirtQueue? {
        Int(queueSelect) < queues.count ? queues[Int(queueSelect)] : nil
    }

    func read(offset: UInt64, size: Int) -> UInt64 {
        lock.withLock {
            if offset >= 0x100 { return device.readConfig(offset: Int(offset - 0x100), size: size) }
            let value: UInt32
            switch offset {
            case 0x000: value = VirtioMMIOTransport.magic
            case 0x004: value = 2
            case 0x008: value = device.deviceID
            case 0x00C: value = 0x4D52_544C  // "LTRM"
            case 0x010:
                value = deviceFeaturesSelect < 2 ? UInt32(truncatingIfNeeded: offeredFeatures >> (32 * UInt64(deviceFeaturesSelect))) : 0
            case 0x034: value = UInt32(selectedQueue?.maxSize ?? 0)
            case 0x044: value = selectedQueue?.ready == true ? 1 : 0
            // A kernel engine's interrupts come through the irqfd with no chance to set the
            // VRING bit first; a driver that reads 0 would ignore them (Linux's vm_interrupt
            // does), so while it serves the queues the bit reads set, and the driver looks
            // at its used rings on every interrupt.
            case 0x060: value = interruptStatus | (device.servedInKernel ? 1 : 0)
            case 0x070: value = status
            case 0x0FC: value = 0
            default: value = 0
            }
            return UInt64(value)
        }
    }

    func write(offset: UInt64, size: Int, value wide: UInt64) {
        let value = UInt32(truncatingIfNeeded: wide)
        var notify: Int?
        lock.withLock {
            switch offset {
            case 0x014: deviceFeaturesSelect = value
            case 0x020:
                if driverFeaturesSelect < 2 {
                    let shift = 32 * UInt64(driverFeaturesSelect)
                    driverFeatures = (driverFeatures & ~(0xFFFF_FFFF << shift)) | (UInt64(value) << shift)
                }
            case 0x024: driverFeaturesSelect = value
            case 0x030: queueSelect = value
            case 0x038: selectedQueue?.size = UInt16(truncatingIfNeeded: value)
            case 0x044:
                guard let queue = selectedQueue else { break }
                if value == 1 {
                    do {
                        try queue.validate(memory)
                        queue.eventIndex = driverFeatures & VirtQueue.featureEventIndex != 0
                        queue.indirect = driverFeatures & VirtQueue.featureIndirect != 0
                        queue.ready = true
                    } catch let error as VMMError {
                        fail(error)
                    } catch {}
                } else {
                    queue.ready = false
                }
            case VirtioMMIOTransport.queueNotifyOffset:
                device.counters.notifyExits.add(1, ordering: .relaxed)
                notify = Int(value)
            case 0x064: interruptStatus &= ~value
            case 0x070:
                if value == 0 {
                    reset()
                } else {
                    if value & 0x08 != 0, status & 0x08 == 0, driverFeatures & ~offeredFeatures != 0 {
                        // FEATURES_OK refused: the driver accepted bits we never offered.
                        status = value & ~0x08
                    } else {
                        let ready = value & VirtioMMIOTransport.statusDriverOK != 0 && status & VirtioMMIOTransport.statusDriverOK == 0
                        status = value | (status & VirtioMMIOTransport.statusNeedsReset)
                        if ready && status & VirtioMMIOTransport.statusNeedsReset == 0 {
                            device.driverReady(features: driverFeatures, queues: queues, memory: memory)
                        }
                    }
                }
            case 0x080: setAddress(&selectedQueue!.descriptorTable, low: true, value)
            case 0x084: setAddress(&selectedQueue!.descriptorTable, low: false, value)
            case 0x090: setAddress(&selectedQueue!.availableRing, low: true, value)
            case 0x094: setAddress(&selectedQueue!.availableRing, low: false, value)
            case 0x0A0: setAddress(&selectedQueue!.usedRing, low: true, value)
            case 0x0A4: setAddress(&selectedQueue!.usedRing, low: false, value)
            default: break
            }
        }
        if let notify { self.notify(queue: notify) }
    }

    private func setAddress(_ address: inout UInt64, low: Bool, _ value: UInt32) {
        address = low ? (address & 0xFFFF_FFFF_0000_0000) | UInt64(value) : (address & 0xFFFF_FFFF) | (UInt64(value) << 32)
    }

    private func reset() {
        status = 0
        interruptStatus = 0
        driverFeatures = 0
        queueSelect = 0
        lastError = nil
        device.reset()
        for queue in queues { queue.reset() }
    }

    /// Marks the device broken (DEVICE_NEEDS_RESET) and tells the driver with a config interrupt.
    private func fail(_ error: VMMError) {
        if stop(error) { signal() }
    }

    /// The driver notified `queue`: process it and interrupt if the used ring moved and the
    /// driver wants to hear about it.
    func notify(queue index: Int) {
        device.counters.notifications.add(1, ordering: .relaxed)
        let raise: Bool = lock.withLock {
            guard index < queues.count, queues[index].ready,
                status & VirtioMMIOTransport.statusDriverOK != 0,
                status & VirtioMMIOTransport.statusNeedsReset == 0
            else { return false }
            do {
                _ = try device.process(queue: index, queues[index], memory: memory)
                return try publishUsed()
            } catch {
                return stop(error)
            }
        }
        if raise { signal() }
    }

    /// Some of the device's asynchronous requests completed (its completion eventfd fired):
    /// they go back to the driver as a notification's would, unless the device failed or the
    /// driver is not running it.
    func completeAsynchronously() {
        let raise: Bool = lock.withLock {
            let live = status & VirtioMMIOTransport.statusDriverOK != 0 && status & VirtioMMIOTransport.statusNeedsReset == 0
            do {
                try device.completeAsynchronously(memory: memory, deliver: live)
                return live ? try publishUsed() : false
            } catch {
                return stop(error)
            }
        }
        if raise { signal() }
    }

    /// The I/O thread leaves: the device's requests still running end first.
    func quiesce() {
        lock.withLock { device.quiesce(memory: memory) }
    }

    /// Shows the driver the chains used since the last time on every queue (a device may
    /// complete one queue's requests while it serves another), with the VRING bit set first;
    /// returns whether the driver wants an interrupt.
    private func publishUsed() throws -> Bool {
        var raise = false
        for queue in queues where queue.ready && queue.hasUnpublished {
            interruptStatus |= 1
            if try queue.publishUsed(memory) { raise = true }
        }
        return raise
    }

    /// Stops the device on malformed input (DEVICE_NEEDS_RESET, with a config interrupt to
    /// tell the driver); returns whether to interrupt.
    private func stop(_ error: Error) -> Bool {
        guard let error = error as? VMMError else { return false }
        lastError = error
        status |= VirtioMMIOTransport.statusNeedsReset
        interruptStatus |= 2
        return true
    }

    /// Whether the device stopped on malformed input (for tests and `info`).
    var needsReset: Bool { lock.withLock { status & VirtioMMIOTransport.statusNeedsReset != 0 } }
}
