import CKVM
import Synchronization

/// Counts the VM exits that reach the VMM, by reason, and for port I/O by port and direction,
/// for MMIO by address and direction: what a slow guest phase (a firmware's disk reads) spends
/// its exits on. Off unless `MARTLET_VMM_EXIT_STATS` is set; `Machine.run` prints the table to
/// stderr when the guest ends. Exits KVM handles itself (ioeventfd, in-kernel PIT and LAPIC)
/// never reach the VMM and are not counted here.
final class ExitStatistics: Sendable {
    /// The environment variable that turns the counting on.
    static let variable = "MARTLET_VMM_EXIT_STATS"

    struct Key: Hashable, Comparable {
        let reason: UInt32
        /// The port (I/O) or guest physical address (MMIO); 0 for other reasons.
        let location: UInt64
        let write: Bool

        static func < (a: Key, b: Key) -> Bool {
            (a.reason, a.location, a.write ? 1 : 0) < (b.reason, b.location, b.write ? 1 : 0)
        }
    }

    private let counts = Mutex<[Key: Int]>([:])

    /// Adds one exit.
    func record(reason: UInt32, location: UInt64 = 0, write: Bool = false) {
        counts.withLock { $0[Key(reason: reason, location: location, write: write), default: 0] += 1 }
    }

    /// Adds `exit`, with its port or address when it has one.
    func record(_ exit: ckvm_exit) {
        switch Int32(exit.reason) {
        case KVM_EXIT_IO: record(reason: exit.reason, location: UInt64(exit.io_port), write: exit.io_direction == UInt8(KVM_EXIT_IO_OUT))
        case KVM_EXIT_MMIO: record(reason: exit.reason, location: exit.mmio_address, write: exit.mmio_is_write != 0)
        default: record(reason: exit.reason)
        }
    }

    func count(of key: Key) -> Int { counts.withLock { $0[key] ?? 0 } }

    /// One line per kind of exit, the most frequent first, then the total.
    var table: String {
        let entries = counts.withLock { $0 }.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        var text = "martlet-vmm: VM exits handled by the VMM (\(ExitStatistics.variable)):\n"
        for (key, count) in entries {
            text += "  \(count)\t\(ExitStatistics.describe(key))\n"
        }
        text += "  \(entries.reduce(0) { $0 + $1.value })\tin all\n"
        return text
    }

    static func describe(_ key: Key) -> String {
        let direction = key.write ? "write" : "read"
        switch Int32(key.reason) {
        case KVM_EXIT_IO: return "io \(direction) port 0x\(String(key.location, radix: 16))"
        case KVM_EXIT_MMIO: return "mmio \(direction) 0x\(String(key.location, radix: 16))"
        case KVM_EXIT_HLT: return "hlt"
        default: return "exit reason \(key.reason)"
        }
    }
}
