#if canImport(Glibc)
    import Glibc
#endif

/// State shared between threads, with a condition variable to wait for it to change.
///
/// Synchronization's `Mutex` has no condition variable, and a thread that must sleep until
/// another one changes something (a vCPU parked while the VM is paused, a caller waiting for a
/// child to exit) needs one. Every access to the state holds the pthread mutex, and every
/// `withLock` wakes the waiters afterwards, so a waiter cannot miss a change.
public final class ConditionLock<State>: @unchecked Sendable {
    // Safe to share: `state` is read and written only with `mutex` held.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var state: State

    public init(_ initial: State) {
        state = initial
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        // Deadlines on the monotonic clock: setting the wall clock must not end a wait early.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// Runs `body` with the state, then wakes the threads waiting for it to change.
    public func withLock<T>(_ body: (inout State) throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
        return try body(&state)
    }

    /// Waits until `predicate` holds, or `timeout` seconds passed, then runs `body` with the
    /// state and whether the predicate held, in the same hold of the lock (nothing can change
    /// in between). Wakes the other waiters afterwards.
    public func wait<T>(
        until predicate: (State) -> Bool, timeout: Double? = nil,
        then body: (inout State, _ satisfied: Bool) throws -> T
    ) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
        var satisfied = predicate(state)
        if let timeout {
            var deadline = Self.monotonicDeadline(after: timeout)
            while !satisfied {
                let result = pthread_cond_timedwait(condition, mutex, &deadline)
                satisfied = predicate(state)
                if result == ETIMEDOUT { break }
            }
        } else {
            while !satisfied {
                pthread_cond_wait(condition, mutex)
                satisfied = predicate(state)
            }
        }
        return try body(&state, satisfied)
    }

    private static func monotonicDeadline(after seconds: Double) -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let whole = Int(seconds.rounded(.down))
        let nanos = Int(now.tv_nsec) + Int((seconds - Double(whole)) * 1e9)
        return timespec(tv_sec: now.tv_sec + whole + nanos / 1_000_000_000, tv_nsec: nanos % 1_000_000_000)
    }
}

extension ConditionLock where State == Void {
    /// A lock that guards its owner's fields rather than a value of its own.
    public convenience init() { self.init(()) }

    /// Runs `body` with the lock held, then wakes the waiters.
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        try withLock { (_: inout Void) in try body() }
    }
}
