import MartletVMMProtocol
import Synchronization

/// What one virtio device served and what it cost, updated on the threads that serve it and
/// read by the control socket's `info` while they run.
final class VirtioCounters: Sendable {
    /// Payload bytes moved between the guest and the backend (added by the device).
    let bytes = Atomic<Int>(0)
    /// Queue notifications, whether they came as a VM exit or through an ioeventfd.
    let notifications = Atomic<Int>(0)
    /// Queue notifications that were MMIO exits on a vCPU thread.
    let notifyExits = Atomic<Int>(0)
    let interrupts = Atomic<Int>(0)

    /// The counters as `info` reports them, with `requests` counted by the transport and the
    /// device's `engine` where it has a choice.
    func report(kind: String, requests: Int, engine: String? = nil, queuePairs: Int? = nil) -> ControlReply.Device {
        ControlReply.Device(
            kind: kind, requests: requests, bytes: bytes.load(ordering: .relaxed),
            notifications: notifications.load(ordering: .relaxed), notifyExits: notifyExits.load(ordering: .relaxed),
            interrupts: interrupts.load(ordering: .relaxed), engine: engine, queuePairs: queuePairs)
    }
}
