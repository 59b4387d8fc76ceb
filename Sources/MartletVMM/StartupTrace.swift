import MartletSystem

#if canImport(Glibc)
    import Glibc
#endif

/// Where a VMM's start-up spends its time: with MARTLET_VMM_STARTUP_TRACE=1 each phase's end
/// is a line "martlet-vmm: startup PHASE NS" (CLOCK_MONOTONIC) on stderr, which
/// scripts/bench-vmm --trace turns into a breakdown. Off (one load of a cached flag per
/// phase) otherwise.
public enum StartupTrace {
    /// Read once: getenv before the first thread, never again.
    private static let enabled: Bool = getenv("MARTLET_VMM_STARTUP_TRACE").map { String(cString: $0) == "1" } ?? false

    /// Marks the end of `phase` now.
    public static func mark(_ phase: StaticString) {
        guard enabled else { return }
        mark(phase, at: ChildProcess.monotonicNanoseconds())
    }

    /// Marks the end of `phase` at `nanoseconds` (a time taken earlier, such as main's start).
    public static func mark(_ phase: StaticString, at nanoseconds: UInt64) {
        guard enabled else { return }
        var line = "martlet-vmm: startup "
        line += phase.withUTF8Buffer { String(decoding: $0, as: UTF8.self) }
        line += " \(nanoseconds)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}
