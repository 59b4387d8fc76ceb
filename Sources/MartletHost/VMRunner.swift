import Foundation
import Logging
import MartletCore
import MartletSystem
import MartletVMMProtocol
import Synchronization

/// `martlet vm run NAME`: the process that owns one running VM. It prepares the host side
/// (taps on the bridge, device ownership), renders the VMM configuration, runs `martlet-vmm`
/// (as the unprivileged VMM user when it exists), keeps the serial console in a log and
/// serves it on a unix socket, removes the taps afterwards, and applies the on-crash policy.
/// systemd runs it as `martlet-vm@NAME.service`; without systemd `vm start` spawns it.
public final class VMRunner: Sendable {
    let host: VMHost
    let name: String
    let logger: Logger
    /// What the signal handlers, the console threads and the supervising thread share.
    private struct Shared {
        /// The attached consoles; the relay writes the guest's output to each.
        var clients: [FileDescriptor] = []
        /// The end of what the relay has sent (`consoleReplay` bytes): a new console's
        /// history, taken with its joining under one lock so no byte shows twice or not at all.
        var recent: [UInt8] = []
        /// The VMM's serial socket while connected: where console keys go.
        var vmmInput: FileDescriptor?
        var stopRequested = false
        var vmmPID: pid_t?
    }
    private let shared = Mutex(Shared())

    /// A console that takes longer than this to accept output is dropped, so one stuck
    /// client cannot stall the guest's other consoles.
    static let consoleSendTimeout = 2.0
    /// How much recent output a new console sees first.
    static let consoleReplay = 16384
    /// How long keys typed before the runner reaches the VMM's serial socket wait for it: a
    /// jailed VMM on a loaded host can take seconds to start listening.
    static let consoleInputWait = 30.0

    public init(host: VMHost, name: String, logger: Logger) {
        self.host = host
        self.name = name
        self.logger = logger
    }

    var paths: HostPaths { host.paths }
    var stopMarker: String { "\(paths.state(name))/stopping" }

    /// Runs the VM until it powers off or is stopped; returns the process exit status.
    public func run() throws -> Int32 {
        // Whoever started us may have blocked signals (a thread of a concurrency pool);
        // the VMM and tap commands are watched through SIGCHLD.
        var empty = sigset_t()
        sigemptyset(&empty)
        pthread_sigmask(SIG_SETMASK, &empty, nil)
        let definition = try host.definition(name)
        try FileManager.default.createDirectory(
            atPath: paths.vmmDirectory(name), withIntermediateDirectories: true)
        if let other = host.runnerPID(name), other != getpid() {
            throw MartletError(.refused, "VM '\(name)' is already running (runner pid \(other))")
        }
        unlink(stopMarker)
        try "\(getpid())\n".write(toFile: paths.runnerPID(name), atomically: true, encoding: .utf8)
        defer { unlink(paths.runnerPID(name)) }
        // The VMM appends the guest's output to it (`serial_log`), even when it is over
        // before the runner connects to the serial socket; one log per run of the runner.
        FileManager.default.createFile(atPath: paths.consoleLog(name), contents: nil)
        let listener: FileDescriptor
        do {
            listener = try UnixSocket.listen(paths.consoleSocket(name), mode: 0o600)
        } catch let error as SystemError {
            throw MartletError(error, hint: "is another runner serving VM '\(name)'?")
        }
        defer {
            listener.shutdown()
            unlink(paths.consoleSocket(name))
        }
        Thread.detachNewThread { [self] in acceptConsoleClients(listener) }
        let signalSources = installSignalHandlers()
        defer { for source in signalSources { source.cancel() } }

        let status: Int32
        do { status = try supervise(definition) } catch {
            recordExit(1)
            throw error
        }
        recordExit(status)
        return status
    }

    /// Writes the runner's exit status for `VMHost.start`, which waits on it.
    func recordExit(_ status: Int32) {
        try? "\(status)\n".write(toFile: paths.runnerExit(name), atomically: true, encoding: .utf8)
    }

    /// Runs the VMM again and again as the on-crash policy says; returns the exit status.
    func supervise(_ definition: VMDefinition) throws -> Int32 {
        var crashes: [Date] = []
        while true {
            if shared.withLock({ $0.stopRequested }) { return 0 }
            let status = try runOnce(definition)
            let stopping =
                shared.withLock { $0.stopRequested }
                || FileManager.default.fileExists(atPath: stopMarker)
            switch VMMExitCode(rawValue: status) {
            case .powerOff?:
                logger.info("VM '\(name)' powered off")
                return 0
            case .stopped?:
                logger.info("VM '\(name)' stopped")
                return 0
            case .badConfig?:
                logger.error(
                    "VM '\(name)': the VMM refused its configuration (\(paths.vmmConfig(name)))")
                return 1
            case .noBootableDevice?:
                // Nothing on the disks boots; restarting would only print the same again.
                logger.error(
                    "VM '\(name)': no bootable device: the firmware found no boot sector on its first disk; not restarting it")
                return status
            case .hostCannotRunVMs?:
                // The VMM said why (KVM missing or not permitted); a restart cannot help.
                logger.error("VM '\(name)': this host cannot run VMs now; not restarting it")
                return 1
            default:
                if stopping { return 0 }
                if status == 128 + SIGSYS {
                    // The VMM's SIGSYS handler wrote "killed by seccomp: NAME" just before.
                    logger.error(
                        "VM '\(name)': the VMM was killed by seccomp (SIGSYS): it made a syscall outside its allow-list, named in the line before; report it (Sources/SECURITY.md)")
                } else if status != VMStatus.outOfMemoryRunnerStatus {  // runOnce logged that, with the limit
                    logger.error("VM '\(name)': the VMM ended with status \(status)")
                }
                // A seccomp or OOM kill keeps its status, so `vm show` can say what ended the VM.
                guard definition.onCrash == .restart else {
                    return [128 + SIGSYS, VMStatus.outOfMemoryRunnerStatus].contains(status) ? status : 1
                }
                crashes = crashes.filter { $0.timeIntervalSinceNow > -60 } + [Date()]
                guard crashes.count <= 5 else {
                    logger.error(
                        "VM '\(name)' crashed \(crashes.count) times in a minute; giving up")
                    return 1
                }
                logger.notice("VM '\(name)': restarting (on-crash = \"restart\")")
                sleep(1)
            }
        }
    }

    /// One VMM process from taps to teardown; returns its exit status.
    func runOnce(_ definition: VMDefinition) throws -> Int32 {
        // Written at every start: the guest sees the definition as it is now.
        try CloudInitSeed(definition)?.write(to: paths.cloudInitSeed(name))
        let config = try host.vmmConfiguration(definition)
        try (config.json.text + "\n").write(
            toFile: paths.vmmConfig(name), atomically: true, encoding: .utf8)
        // The VMM's user reads it, whatever the runner's umask.
        guard chmod(paths.vmmConfig(name), 0o644) == 0 else {
            throw MartletError.system("chmod", path: paths.vmmConfig(name))
        }
        let user = vmmUser()
        if let user {
            // The VMM runs unprivileged: it needs its disks, its run directory and the console
            // log, nothing else.
            var devices = config.disks.map(\.path)
            devices.append(paths.vmmDirectory(name))
            devices.append(paths.consoleLog(name))
            for path in devices {
                let resolved =
                    (try? FileManager.default.destinationOfSymbolicLink(atPath: path)).map {
                        $0.hasPrefix("/")
                            ? $0
                            : ((path as NSString).deletingLastPathComponent as NSString)
                                .appendingPathComponent($0)
                    } ?? path
                if chown(resolved, user.uid, user.gid) != 0 {
                    logger.warning(
                        "chown \(resolved) to \(paths.vmmUser) failed: \(String(cString: strerror(errno)))"
                    )
                }
            }
        }
        let taps = try createTaps(definition, user: user)
        defer { removeTaps(taps) }

        let vmm = try Tool.resolve(paths.vmm)
        var arguments = [vmm, "--config", paths.vmmConfig(name)]
        let null = try FileDescriptor.open("/dev/null", O_RDONLY)
        unlink(paths.serialSocket(name))
        // The console is the VMM's serial socket; its stdout (--stats, nothing else) joins
        // the runner's log.
        let pid: pid_t
        var cgroup: VMCgroup?
        defer { cgroup?.remove() }
        if definition.jail {
            var layout = try jailLayout(config, vmm: vmm, user: user)
            cgroup = vmmCgroup(config)
            layout.cgroupProcs = cgroup?.procsFiles ?? []
            layout.cgroupDirectory = cgroup?.unifiedDirectory
            if cgroup != nil {
                // The VMM starts up while it is moved into its cgroups and waits for the word
                // before it allocates its VM (on cgroup v1 the move takes an RCU grace period).
                layout.cgroupJoinedDescriptor = VMRunner.cgroupJoinedDescriptor
                arguments += ["--cgroup-joined-fd", "\(VMRunner.cgroupJoinedDescriptor)"]
            }
            // scripts/bench-vmm --jail: the VMM's exit statistics in this log, timed from here
            // (the jail's set-up included).
            if ProcessInfo.processInfo.environment["MARTLET_VMM_STATS"] == "1" {
                arguments += ["--stats", "--spawned-at", "\(ChildProcess.monotonicNanoseconds())"]
            }
            logger.info("VM '\(name)': starting \(arguments.joined(separator: " ")) jailed in \(layout.root)")
            do {
                pid = try ChildProcess.spawnJailed(
                    arguments, jail: layout, stdin: null.raw, stdout: STDERR_FILENO, stderr: STDERR_FILENO)
            } catch let error as SystemError {
                throw MartletError(
                    error,
                    hint: "the VMM's jail could not be set up; 'jail = false' in \(paths.definition(name)) runs it unjailed (debugging only)")
            }
        } else {
            if let user {
                arguments =
                    [
                        "setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--init-groups",
                        "--inh-caps=-all", "--",
                    ] + arguments
            }
            logger.warning("VM '\(name)': starting \(arguments.joined(separator: " ")) without a jail (jail = false)")
            pid = try ChildProcess.spawn(
                arguments, stdin: null.raw, stdout: STDERR_FILENO, stderr: STDERR_FILENO)
        }
        shared.withLock { $0.vmmPID = pid }
        let status = relaySerialConsole(vmm: pid)
        shared.withLock { $0.vmmPID = nil }
        if let cgroup, cgroup.memoryLimitKilled {
            logger.error(
                "VM '\(name)': out of memory: the VMM went over its memory limit (\(cgroup.limits.memoryBytes) bytes: guest RAM + \(VMCgroup.Limits.memoryOverhead >> 20) MiB) and the kernel's OOM killer ended it; nothing else was touched")
            return VMStatus.outOfMemoryRunnerStatus
        }
        return status
    }

    /// The jailed VMM's descriptor for the word that it is in its cgroups.
    static let cgroupJoinedDescriptor: Int32 = 3

    /// The VMM's cgroup with the limits of `config`, or nil (logged) where the runner cannot
    /// make one: the VM still runs, without them.
    func vmmCgroup(_ config: VMConfig) -> VMCgroup? {
        do {
            guard let hierarchy = try VMCgroup.hierarchy(forRunnerOf: name) else {
                logger.warning("VM '\(name)': no cgroup with the memory controller for the VMM; running it without cgroup limits")
                return nil
            }
            return try VMCgroup(
                name: "vmm-\(name)", limits: VMCgroup.Limits(vcpus: config.vcpus, memoryMiB: config.memoryMiB),
                under: hierarchy)
        } catch {
            logger.error("VM '\(name)': cgroup limits not set: \(error); running the VMM without them")
            return nil
        }
    }

    /// Connects to the VMM's serial socket and copies the guest's output to every attached
    /// console until the VMM ends; returns its exit status. The
    /// socket comes back after a guest reboot (`on_reboot: restart` re-executes the VMM), so
    /// the runner reconnects whenever it closes while the VMM runs.
    func relaySerialConsole(vmm pid: pid_t) -> Int32 {
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            if let termination = ChildProcess.termination(pid) { return termination.status }
            guard let serial = try? UnixSocket.connect(paths.serialSocket(name)) else {
                usleep(20_000)
                continue
            }
            shared.withLock { $0.vmmInput = serial }
            while true {
                let count = serial.read(into: &buffer)
                guard count > 0 else { break }
                broadcast(buffer.prefix(count))
            }
            // Console input threads may still hold it; it closes when the last one lets go.
            shared.withLock { $0.vmmInput = nil }
        }
    }

    /// The VMM's jail (`VMJail`); its root is an empty directory of the runner's.
    func jailLayout(_ config: VMConfig, vmm: String, user: User?) throws -> JailLayout {
        guard geteuid() == 0 else {
            throw MartletError(
                .refused, "VM '\(name)': the VMM's jail needs root (namespaces, mounts)",
                hint: "run 'martlet vm run' as root, or set 'jail = false' in \(paths.definition(name)) (debugging only)")
        }
        let root = paths.jailRoot(name)
        if mkdir(root, 0o700) != 0 {
            let entries = try? FileManager.default.contentsOfDirectory(atPath: root)
            var info = stat()
            guard errno == EEXIST, lstat(root, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR,
                entries?.isEmpty == true
            else {
                throw MartletError(
                    .refused, "VM '\(name)': the jail root \(root) exists and is not an empty directory",
                    hint: "remove what is there; the runner creates it empty")
            }
        }
        return try VMJail.layout(
            config: config, configFile: paths.vmmConfig(name), vmmDirectory: paths.vmmDirectory(name),
            vmm: vmm, root: root,
            credentials: user.map { VMJail.credentials(user: paths.vmmUser, uid: $0.uid, gid: $0.gid) })
    }

    struct User {
        var uid: uid_t
        var gid: gid_t
    }

    func vmmUser() -> User? {
        guard geteuid() == 0, !paths.vmmUser.isEmpty, let entry = getpwnam(paths.vmmUser) else {
            return nil
        }
        return User(uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
    }

    func createTaps(_ definition: VMDefinition, user: User?) throws -> [String] {
        var created: [String] = []
        do {
            for (index, nic) in definition.nics.enumerated() {
                let tap = VMDefinition.tapName(vm: name, index: index)
                guard FileManager.default.fileExists(atPath: "/sys/class/net/\(nic.bridge)/bridge")
                else {
                    throw MartletError(
                        .notFound,
                        "VM '\(name)': NIC \(index + 1) wants bridge '\(nic.bridge)', which does not exist",
                        hint: "create the bridge (the installer sets up br0) or fix [[nic]] bridge")
                }
                _ = try? Command("ip", ["link", "delete", tap]).runAllowingFailure()
                var arguments = ["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]
                // One tap queue per virtio-net queue pair; the VMM opens each.
                if (nic.queues ?? 1) > 1 { arguments.append("multi_queue") }
                if let user { arguments += ["user", "\(user.uid)", "group", "\(user.gid)"] }
                try Command("ip", arguments).run()
                created.append(tap)
                try Command("ip", ["link", "set", "dev", tap, "master", nic.bridge, "up"]).run()
                logger.info("VM '\(name)': tap \(tap) on \(nic.bridge) for NIC \(nic.mac)")
            }
        } catch {
            removeTaps(created)
            throw error
        }
        return created
    }

    func removeTaps(_ taps: [String]) {
        for tap in taps {
            if let result = try? Command("ip", ["link", "delete", tap]).runAllowingFailure(),
                result.status != 0
            {
                logger.warning("could not remove tap \(tap): \(result.stderr)")
            }
        }
    }

    // MARK: Console

    /// Live output to every attached console (console.log is the VMM's `serial_log`). Each
    /// send waits at most `consoleSendTimeout`; a console that is gone or stuck is shut down
    /// (its input thread then ends and lets go of it) and no longer written to.
    func broadcast(_ chunk: ArraySlice<UInt8>) {
        let clients = shared.withLock { state in
            state.recent.append(contentsOf: chunk)
            // Trimmed at twice the size, not on every chunk (a guest prints a line at a time).
            if state.recent.count >= 2 * Self.consoleReplay {
                state.recent.removeFirst(state.recent.count - Self.consoleReplay)
            }
            return state.clients
        }
        let failed = clients.filter { !$0.writeAll(chunk) }
        guard !failed.isEmpty else { return }
        for client in failed { client.shutdown() }
        shared.withLock { state in state.clients.removeAll { client in failed.contains { $0 === client } } }
    }

    func acceptConsoleClients(_ listener: FileDescriptor) {
        while let client = UnixSocket.accept(listener) {
            client.setTimeouts(send: Self.consoleSendTimeout)
            // A new console first sees the recent output, then joins the live output in the
            // same step: the relay's own record, not console.log, which the VMM writes before
            // the relay sends the same bytes (its serial socket keeps what the guest printed
            // before the runner connected, so the relay has every byte the log has). A console
            // that has already gone (a script that typed and detached) still gets its keys
            // forwarded: its input thread reads what it sent up to the end. The relay waits
            // for this write at most `consoleSendTimeout`, as for any console.
            shared.withLock { state in
                if client.writeAll(state.recent.suffix(Self.consoleReplay)) { state.clients.append(client) }
            }
            Thread.detachNewThread { [self] in forwardInput(client) }
        }
    }

    /// Keys typed on a console go to the guest's serial port (the VMM's serial socket).
    func forwardInput(_ client: FileDescriptor) {
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = client.read(into: &chunk)
            guard count > 0 else { break }
            // Keys typed while the runner is still connecting to the VMM's serial socket (just
            // after start, or during a guest reboot) wait for it rather than being dropped.
            var input: FileDescriptor?
            _ = Poll.until(timeout: Self.consoleInputWait) {
                input = shared.withLock { $0.vmmInput }
                return input != nil
            }
            input?.writeAll(chunk.prefix(count))
        }
        shared.withLock { state in state.clients.removeAll { $0 === client } }
    }

    // MARK: Signals

    /// SIGTERM (systemctl stop, host shutdown): ask the guest to power off, then stop it
    /// hard after `MARTLET_STOP_GRACE` seconds (default 30).
    func installSignalHandlers() -> [DispatchSourceSignal] {
        let grace = Double(ProcessInfo.processInfo.environment["MARTLET_STOP_GRACE"] ?? "") ?? 30
        var sources: [DispatchSourceSignal] = []
        for number in [SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in
                shared.withLock { $0.stopRequested = true }
                let control = paths.controlSocket(name)
                logger.info("VM '\(name)': signal \(number), shutting down (grace \(Int(grace)) s)")
                // Without an answering VMM (still starting, or hung) signal it instead.
                if (try? ControlClient.send(grace > 0 ? .shutdown : .stop, to: control, timeout: 2))
                    == nil
                {
                    if let pid = shared.withLock({ $0.vmmPID }) { kill(pid, SIGTERM) }
                }
                DispatchQueue.global().asyncAfter(deadline: .now() + grace) { [self] in
                    if (try? ControlClient.send(.stop, to: control, timeout: 2)) == nil,
                        let pid = shared.withLock({ $0.vmmPID })
                    {
                        kill(pid, SIGKILL)
                    }
                }
            }
            source.resume()
            sources.append(source)
        }
        return sources
    }
}
