#if canImport(Glibc)
    import Glibc
#endif

/// SIGTERM stops the VM in order, as the control socket's `stop` does (exit code 4, the
/// serial log and sockets closed). A jailed VMM is pid 1 of its PID namespace, where the kernel
/// drops a signal that has no handler, so one is installed; the signal itself is taken by a
/// thread of its own with sigwait, because a handler may not take the machine's locks.
public enum StopSignal {
    /// Installs the (empty) handler and blocks SIGTERM in the calling thread and every thread
    /// it starts from now on, which inherit the mask: call before the first thread starts.
    public static func block() {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        sigaction(SIGTERM, &action, nil)
        var set = signals
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Starts the thread that stops `machine` at the first SIGTERM; one that arrived since
    /// `block` is pending and counts.
    public static func watch(_ machine: Machine) throws {
        _ = try startThread {
            var set = signals
            var number: Int32 = 0
            while sigwait(&set, &number) != 0 {}
            machine.stop()
        }
    }

    private static var signals: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        return set
    }
}
