import CKVM
import MartletSystem

#if canImport(Glibc)
    import Glibc
#endif

/// An eventfd (a counter the kernel can signal), owned like any other descriptor.
struct EventFD {
    let file: FileDescriptor

    /// eventfd(2), non-blocking and close-on-exec.
    init() throws {
        let fd = ckvm_eventfd()
        guard fd >= 0 else { throw VMMError(.io, "eventfd failed: \(errnoText(-fd))") }
        file = FileDescriptor(fd)
    }

    var raw: Int32 { file.raw }

    func signal() {
        var one: UInt64 = 1
        _ = write(file.raw, &one, 8)
    }

    /// Resets the counter; returns whether it had been signalled.
    @discardableResult
    func drain() -> Bool {
        var count: UInt64 = 0
        return read(file.raw, &count, 8) == 8
    }
}

/// The I/O thread of one virtio device: KVM signals one eventfd per queue when the guest
/// writes that queue's index to QueueNotify (KVM_IOEVENTFD), so a notification costs the vCPU
/// no exit to the VMM, and this thread processes the queue while the vCPU runs on. A device
/// whose requests complete later (a disk's io_uring) gives it one more eventfd to wait on.
final class QueueNotifier: @unchecked Sendable {
    let transport: VirtioMMIOTransport
    private let queueEvents: [EventFD]
    /// Signalled to make the thread look at the run state (pause, stop).
    private let wakeEvent: EventFD
    /// Readable when some of the device's asynchronous requests completed (not owned here).
    private let completionEvent: Int32?

    /// Registers an eventfd for each queue of `transport` with KVM; throws when KVM refuses.
    init(transport: VirtioMMIOTransport, vm: VirtualMachineHandle) throws {
        self.transport = transport
        var events: [EventFD] = []
        for index in transport.queues.indices {
            let event = try EventFD()
            try vm.addIOEventFD(event.raw, address: transport.mmioBase + VirtioMMIOTransport.queueNotifyOffset, datamatch: UInt64(index))
            events.append(event)
        }
        queueEvents = events
        wakeEvent = try EventFD()
        completionEvent = transport.device.startAsynchronousCompletions()
    }

    /// The queues' eventfds, by queue index (a kernel engine waits on them itself).
    var queueEventFDs: [Int32] { queueEvents.map(\.raw) }

    /// Makes the thread call its `mayContinue` soon.
    func wake() { wakeEvent.signal() }

    /// Serves notifications and completions until `mayContinue` (asked after every wake-up;
    /// it blocks while the machine is paused) returns false; the device's requests still
    /// running end before this returns.
    func run(mayContinue: () -> Bool) {
        defer { transport.quiesce() }
        let completionSlot = completionEvent.map { _ in queueEvents.count + 1 }
        let all = ([wakeEvent] + queueEvents).map { pollfd(fd: $0.raw, events: Int16(POLLIN), revents: 0) }
            + (completionEvent.map { [pollfd(fd: $0, events: Int16(POLLIN), revents: 0)] } ?? [])
        let device = transport.device
        // The wake event first, then the queues this thread serves, then the completions
        // (slots into `all`).
        var watched = Array(all.indices)
        var fds = all
        while true {
            // While a kernel engine (vhost-net) serves queues, their eventfds are its; a
            // device may keep one (virtio-net's control queue) for this thread.
            if device.servedInKernel {
                watched = [0] + queueEvents.indices.filter { !device.servedInKernel(queue: $0) }.map { $0 + 1 }
                    + (completionSlot.map { [$0] } ?? [])
                fds = watched.map { all[$0] }
            } else if fds.count != all.count {
                watched = Array(all.indices)
                fds = all
            }
            for index in fds.indices { fds[index].revents = 0 }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                return
            }
            wakeEvent.drain()
            guard mayContinue() else { return }
            for (slot, entry) in zip(fds, watched).dropFirst() where slot.revents != 0 {
                if entry == completionSlot {
                    transport.completeAsynchronously()
                } else if queueEvents[entry - 1].drain() {
                    transport.notify(queue: entry - 1)
                }
            }
        }
    }
}
