#if canImport(Glibc)
    import Glibc
#endif

/// Waiting for something another process or thread does, with a deadline.
public enum Poll {
    /// Checks `condition` every `interval` seconds until it holds or `timeout` seconds have
    /// passed (on CLOCK_MONOTONIC); returns whether it held. Callers turn `false` into an
    /// error or a recorded test failure, never into carrying on.
    public static func until(
        timeout: Double, interval: Double = 0.02, _ condition: () throws -> Bool
    ) rethrows -> Bool {
        let deadline = ChildProcess.monotonicSeconds() + timeout
        while true {
            if try condition() { return true }
            if ChildProcess.monotonicSeconds() >= deadline { return false }
            usleep(useconds_t(interval * 1_000_000))
        }
    }
}
