import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

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
