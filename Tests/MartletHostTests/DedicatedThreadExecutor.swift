import Foundation

/// A task executor with one thread of its own, for async test code that must keep running
/// while the rest of the test process is busy.
///
/// Swift Testing runs synchronous tests on the cooperative pool, which has one thread per
/// core: on the 2-core build machines two tests that wait on QEMU for minutes take all of it,
/// and every other task in the process waits. A WebSocket client answers the server's pings
/// only from a task; the API closes a socket whose ping is unanswered for 30 s (1001, "Ping
/// timeout"), which is what ended both console viewers in whole `make test` runs. Tasks run
/// under `withTaskExecutorPreference(executor)` (and their child tasks) run here instead.
final class DedicatedThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    /// Guarded by `condition`.
    private var jobs: [UnownedJob] = []

    init(name: String) {
        let thread = Thread { [unowned self] in run() }
        thread.name = name
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// The thread's loop; the executor lives as long as the test process (a static).
    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
