import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A pthread mutex with a condition variable: vCPU threads block in it while paused and the
/// main thread waits in it for the guest to end. (Synchronization's `Mutex` has no condition
/// variable; the pthread mutex here is what makes this type safe to share.)
final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits (the lock held) until `predicate` holds.
    func wait(until predicate: () -> Bool) {
        while !predicate() { pthread_cond_wait(condition, mutex) }
    }

    /// Waits (the lock held) until `predicate` holds or `seconds` passed; returns whether it holds.
    func wait(until predicate: () -> Bool, timeout seconds: Double) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let nanos = Int(now.tv_nsec) + Int((seconds - seconds.rounded(.down)) * 1e9)
        var deadline = timespec(tv_sec: now.tv_sec + Int(seconds) + nanos / 1_000_000_000, tv_nsec: nanos % 1_000_000_000)
        while !predicate() {
            if pthread_cond_timedwait(condition, mutex, &deadline) == ETIMEDOUT { return predicate() }
        }
        return true
    }

    func broadcast() { pthread_cond_broadcast(condition) }
}

/// Runs `body` on a new pthread (blocking loops such as KVM_RUN never run on the async pool).
func startThread(_ body: @escaping () -> Void) throws -> pthread_t {
    final class Box { let body: () -> Void; init(_ body: @escaping () -> Void) { self.body = body } }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    let result = pthread_create(&thread, nil, { argument in
        let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    guard result == 0 else {
        Unmanaged<Box>.fromOpaque(box).release()
        throw VMMError(.io, "pthread_create failed: \(errnoText(result))")
    }
    return thread
}

/// A thread started once and joined once, for objects that own a serving thread.
final class ThreadHandle: Sendable {
    private let thread = Mutex<pthread_t?>(nil)

    /// Starts `body` on a new thread (see `startThread`).
    func start(_ body: @escaping () -> Void) throws {
        let started = try startThread(body)
        thread.withLock { $0 = started }
    }

    /// Waits for the thread to end; does nothing when it never started or was joined.
    func join() {
        let running = thread.withLock { current -> pthread_t? in
            defer { current = nil }
            return current
        }
        if let running { pthread_join(running, nil) }
    }
}
