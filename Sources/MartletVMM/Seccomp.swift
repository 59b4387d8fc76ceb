import CKVM
import CSeccomp
import MartletVMMProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The VMM's seccomp filters (libseccomp): one allow-list per kind of thread, so a guest that
/// takes over a vCPU thread through a device bug can make only the syscalls that thread needs.
///
/// Filters stack: the process filter is installed by the main thread before any KVM resource
/// exists, and every thread inherits it; each vCPU and I/O thread then adds its own narrower
/// list when it starts, before it runs guest code or reads outside input. A syscall outside a
/// list ends the process with SIGSYS after a line on stderr naming it ("killed by seccomp:
/// NAME"), which the runner keeps in the VM's log.
public enum Seccomp {
    /// The threads of the VMM, each with its allow-list.
    public enum ThreadKind: String, Sendable {
        /// Start-up, the main thread (waits for the guest, re-executes on a reset with
        /// `on_reboot: restart`) and the control server: everything the VMM ever does.
        case process
        /// A vCPU: KVM_RUN and the device emulation that runs on its exits.
        case vcpu
        /// The threads serving the serial socket, the console's stdin and a tap's receive side.
        case io
        /// A virtio device's I/O thread: its queues' eventfds (KVM_IOEVENTFD), the requests'
        /// disk or tap I/O, the interrupt back through an irqfd.
        case device
    }

    /// One allowed syscall, optionally only with these argument values (all must match).
    struct Rule {
        let name: String
        let arguments: [(index: UInt32, value: UInt64)]
        init(_ name: String, _ arguments: [(index: UInt32, value: UInt64)] = []) {
            self.name = name
            self.arguments = arguments
        }
    }

    private static let activeMode = Mutex<VMConfig.SeccompMode>(.off)

    /// The mode `installProcessFilter` set; `.off` in processes that never called it (tests
    /// that run a `Machine` in-process).
    public static var mode: VMConfig.SeccompMode { activeMode.withLock { $0 } }

    /// Installs the violation handler and the process filter, and remembers `mode` for the
    /// threads started later. `Jail.forbidNewPrivileges` must have run (seccomp requires
    /// no_new_privs without CAP_SYS_ADMIN). A process re-executed after a guest reset inherits its filter and
    /// does not stack a second copy.
    public static func installProcessFilter(mode: VMConfig.SeccompMode, restartable: Bool) throws {
        activeMode.withLock { $0 = mode }
        guard mode != .off else { return }
        let result = cseccomp_install_violation_handler()
        guard result == 0 else {
            throw VMMError(.io, "seccomp: cannot install the SIGSYS handler: \(errnoText(Int32(-result)))")
        }
        StartupTrace.mark("process-filter.handler")
        guard cseccomp_thread_mode() != 2 else { return }
        try install(rules(for: .process, restartable: restartable), kind: .process, mode: mode)
    }

    /// Drops the calling thread's capabilities if it still holds any (threads started before
    /// `Jail.lockDown`) and adds the allow-list of `kind`; no filter with seccomp off.
    public static func confineThread(_ kind: ThreadKind) throws {
        if Jail.isActive { try Jail.dropCapabilities() }
        let mode = self.mode
        guard mode != .off else { return }
        try install(rules(for: kind, restartable: false), kind: kind, mode: mode)
    }

    /// `confineThread` for threads with nobody to report to: one that cannot be confined must
    /// not run unconfined, so the VMM ends with exit code 1.
    static func confineThreadOrExit(_ kind: ThreadKind) {
        do {
            try confineThread(kind)
        } catch {
            let text = "martlet-vmm: \(error)\n"
            _ = text.withCString { write(2, $0, strlen($0)) }
            exit(1)
        }
    }

    private static func install(_ rules: [Rule], kind: ThreadKind, mode: VMConfig.SeccompMode) throws {
        guard let filter = seccomp_init(mode == .log ? CSECCOMP_ACT_LOG : CSECCOMP_ACT_TRAP) else {
            throw VMMError(.io, "seccomp: seccomp_init failed for the \(kind.rawValue) filter")
        }
        defer { seccomp_release(filter) }
        // no_new_privs is set once by `installProcessFilter`; libseccomp would call prctl again
        // for every filter, which the thread lists do not allow.
        seccomp_attr_set(filter, SCMP_FLTATR_CTL_NNP, 0)
        for rule in rules {
            let number = seccomp_syscall_resolve_name(rule.name)
            guard number != __NR_SCMP_ERROR else {
                throw VMMError(.io, "seccomp: libseccomp does not know the syscall '\(rule.name)' (\(kind.rawValue) filter)")
            }
            let comparisons = rule.arguments.map {
                scmp_arg_cmp(arg: $0.index, op: SCMP_CMP_EQ, datum_a: $0.value, datum_b: 0)
            }
            let result = seccomp_rule_add_array(filter, CSECCOMP_ACT_ALLOW, number, UInt32(comparisons.count), comparisons)
            guard result == 0 else {
                throw VMMError(.io, "seccomp: cannot add '\(rule.name)' to the \(kind.rawValue) filter: \(errnoText(-result))")
            }
        }
        let result = seccomp_load(filter)
        guard result == 0 else {
            throw VMMError(.io, "seccomp: cannot load the \(kind.rawValue) filter: \(errnoText(-result))")
        }
    }

    /// The allow-list of `kind`. `restartable` adds execve to the process list: a guest reset
    /// with `on_reboot: restart` re-executes the VMM, whose start-up this list then covers.
    static func rules(for kind: ThreadKind, restartable: Bool) -> [Rule] {
        let pid = UInt64(getpid())
        // Every thread: memory, locks, signals (the vCPU kick, the SIGSYS handler's own kill),
        // time, reading and writing descriptors it already holds, ending.
        let common: [Rule] =
            [
                "read", "readv", "write", "writev", "close", "futex", "madvise", "mmap", "munmap",
                "mprotect", "mremap", "brk", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
                "clock_gettime", "clock_nanosleep", "nanosleep", "gettid", "getpid", "sched_yield",
                "exit", "exit_group", "restart_syscall", "rseq", "set_robust_list", "getrandom",
                // MartletSystem picks send (MSG_NOSIGNAL) or write by the descriptor's type.
                "fstat", "newfstatat",
                // Jail.dropCapabilities looks before it drops.
                "capget",
            ].map { Rule($0) } + [Rule("kill", [(0, pid)]), Rule("tgkill", [(0, pid)])]
        // The KVM ioctls a running VM needs: the run loop, interrupts from devices, registers
        // and special registers for crash reports.
        let runtimeKVM = [CKVM_RUN, CKVM_IRQ_LINE, CKVM_GET_REGS, CKVM_GET_SREGS].map { Rule("ioctl", [(1, UInt64($0))]) }
        // Sockets already accepted or connected: the serial and control clients.
        let connected = ["sendto", "recvfrom", "shutdown", "setsockopt", "accept4"].map { Rule($0) }
        // A virtio-blk request: reads, writes, FLUSH, and DISCARD / WRITE_ZEROES on files
        // (fallocate) and block devices (their ioctls).
        let blockIO =
            ["pread64", "pwrite64", "preadv", "pwritev", "fsync", "fdatasync", "fallocate"].map { Rule($0) }
            + [CKVM_BLKDISCARD, CKVM_BLKZEROOUT].map { Rule("ioctl", [(1, UInt64($0))]) }
        // A disk's io_uring: set up (liburing maps the rings with plain mmap) and restricted to
        // readv/writev with io_uring_register on the main thread when the device is made,
        // entered by the I/O thread that submits and reaps. The vCPU and io lists leave it
        // out: without ioeventfd a disk leaves the ring before the vCPUs start.
        let ringSetUp = ["io_uring_setup", "io_uring_register"].map { Rule($0) }
        let ringEnter = Rule("io_uring_enter")
        // vhost-net takes the rings when the driver sets DRIVER_OK and lets go of them on a
        // reset, both status writes handled on a vCPU's exit; the tap's offloads follow the
        // driver's features at the same moment, and its queues are attached or detached
        // (TUNSETQUEUE) as the driver's queue pairs. The process list has them too: filters
        // stack, so a vCPU thread runs only what both allow.
        let tapQueues = Rule("ioctl", [(1, UInt64(CKVM_TUNSETQUEUE))])
        let vhostRings = [
            CKVM_VHOST_SET_FEATURES, CKVM_VHOST_SET_VRING_NUM, CKVM_VHOST_SET_VRING_BASE, CKVM_VHOST_SET_VRING_ADDR,
            CKVM_VHOST_SET_VRING_KICK, CKVM_VHOST_SET_VRING_CALL, CKVM_VHOST_NET_SET_BACKEND, CKVM_TUNSETOFFLOAD,
        ].map { Rule("ioctl", [(1, UInt64($0))]) } + [tapQueues]
        switch kind {
        case .vcpu:
            // Device emulation on the vCPU's exits: disk reads and writes, frames to the tap,
            // the console's output; a NIC's receive thread starts when the guest enables it,
            // and adds its own filter (which only narrows what it may do).
            // (Without ioeventfd the requests run here too.)
            return common + runtimeKVM + blockIO + vhostRings + [Rule("seccomp", [(0, UInt64(SECCOMP_SET_MODE_FILTER))])]
                + ["sendto", "shutdown", "clone3", "clone", "poll", "ppoll"].map { Rule($0) }
        case .device:
            // A NIC's receive thread starts on the guest's first receive-queue notify, which
            // arrives here; it adds its own (io) filter. A NIC's control queue sets its queue
            // pairs here (TUNSETQUEUE).
            return common + blockIO + [ringEnter, tapQueues, Rule("ioctl", [(1, UInt64(CKVM_IRQ_LINE))])]
                + [Rule("seccomp", [(0, UInt64(SECCOMP_SET_MODE_FILTER))])]
                + ["poll", "ppoll", "sendto", "clone3", "clone"].map { Rule($0) }
        case .io:
            return common + [Rule("ioctl", [(1, UInt64(CKVM_IRQ_LINE))])] + connected
                + ["poll", "ppoll"].map { Rule($0) }
        case .process:
            let setupKVM = [
                CKVM_GET_API_VERSION, CKVM_CHECK_EXTENSION, CKVM_GET_VCPU_MMAP_SIZE, CKVM_CREATE_VM,
                CKVM_SET_USER_MEMORY_REGION, CKVM_SET_TSS_ADDR, CKVM_SET_IDENTITY_MAP_ADDR,
                CKVM_CREATE_IRQCHIP, CKVM_CREATE_PIT2, CKVM_IRQFD, CKVM_IOEVENTFD, CKVM_CREATE_VCPU, CKVM_SET_REGS,
                CKVM_GET_SREGS, CKVM_SET_SREGS, CKVM_SET_FPU, CKVM_SET_MP_STATE,
                CKVM_GET_SUPPORTED_CPUID, CKVM_SET_CPUID2, CKVM_SET_MSRS, CKVM_GET_LAPIC, CKVM_SET_LAPIC,
                CKVM_TUNSETIFF, CKVM_TUNSETVNETHDRSZ, UInt(TCGETS),
                CKVM_VHOST_SET_OWNER, CKVM_VHOST_GET_FEATURES, CKVM_VHOST_SET_MEM_TABLE,
            ].map { Rule("ioctl", [(1, UInt64($0))]) } + vhostRings
            // The VMM's own sockets are unix sockets; nothing else.
            let sockets = [Rule("socket", [(0, UInt64(AF_UNIX))]), Rule("bind"), Rule("listen")]
            let files = [
                "openat", "open", "statx", "lseek", "pread64", "pwrite64",
                "preadv", "pwritev", "fsync", "fdatasync", "fcntl", "unlink", "unlinkat", "fchmod",
                "fchmodat", "chmod", "umask", "readlink", "readlinkat", "pipe2", "pipe", "poll", "ppoll",
                "dup", "dup3", "access", "faccessat", "faccessat2", "getcwd", "getdents64", "eventfd2",
            ].map { Rule($0) } + blockIO
            // Threads, the runtime's start-up, signal handlers, and stacking the thread filters
            // (seccomp itself; libseccomp checks the kernel's support with prctl).
            let runtime = [
                "clone3", "clone", "set_tid_address", "arch_prctl", "prlimit64", "sched_getaffinity",
                "rt_sigaction", "uname", "prctl", "seccomp", "capset", "getuid", "geteuid", "getgid", "getegid",
                // StopSignal's thread waits for SIGTERM.
                "rt_sigtimedwait",
            ].map { Rule($0) }
            let restart = restartable ? [Rule("execve")] : []
            return common + runtimeKVM + setupKVM + sockets + connected + files + ringSetUp + [ringEnter] + runtime + restart
        }
    }
}
