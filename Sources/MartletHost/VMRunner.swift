import Foundation
import Logging
import MartletCore

/// `martlet vm run NAME`: the process that owns one running VM. It prepares the host side
/// (taps on the bridge, device ownership), renders the VMM configuration, runs `martlet-vmm`
/// (as the unprivileged VMM user when it exists), keeps the serial console in a log and
/// serves it on a unix socket, removes the taps afterwards, and applies the on-crash policy.
/// systemd runs it as `martlet-vm@NAME.service`; without systemd `vm start` spawns it.
public final class VMRunner: @unchecked Sendable {
    let host: VMHost
    let name: String
    let logger: Logger
    private let lock = NSLock()
    private var clients: [Int32] = []
    private var vmmInput: Int32?
    private var stopRequested = false
    private var vmmPID: pid_t?
    private var signalSources: [DispatchSourceSignal] = []

    /// Exit statuses of `martlet-vmm` (Sources/martlet-vmm/main.swift).
    enum VMMExit: Int32 {
        case powerOff = 0
        case failed = 1
        case badConfig = 2
        case reset = 3
        case stopped = 4
        case hostCannotRunVMs = 5
    }

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
        // A console that goes away mid-write must not take the VM down with it.
        signal(SIGPIPE, SIG_IGN)
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
        let listener = try UnixSocket.listen(paths.consoleSocket(name))
        defer {
            close(listener)
            unlink(paths.consoleSocket(name))
        }
        Thread.detachNewThread { [self] in acceptConsoleClients(listener) }
        installSignalHandlers()

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
            if lock.withLock({ stopRequested }) { return 0 }
            let status = try runOnce(definition)
            let stopping =
                lock.withLock { stopRequested }
                || FileManager.default.fileExists(atPath: stopMarker)
            switch VMMExit(rawValue: status) {
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
            case .hostCannotRunVMs?:
                // The VMM said why (KVM missing or not permitted); a restart cannot help.
                logger.error("VM '\(name)': this host cannot run VMs now; not restarting it")
                return 1
            default:
                if stopping { return 0 }
                logger.error("VM '\(name)': the VMM ended with status \(status)")
                guard definition.onCrash == .restart else { return 1 }
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
        let config = try host.vmmConfiguration(definition)
        let data = try JSONSerialization.data(
            withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: paths.vmmConfig(name)))
        let user = vmmUser()
        if let user {
            // The VMM runs unprivileged: it needs its disks, its run directory and the console
            // log, nothing else.
            var devices = (config["disks"] as? [[String: Any]] ?? []).compactMap {
                $0["path"] as? String
            }
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
        if let user {
            arguments =
                [
                    "setpriv", "--reuid=\(user.uid)", "--regid=\(user.gid)", "--init-groups",
                    "--inh-caps=-all", "--",
                ] + arguments
        }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard null >= 0 else { throw MartletError.system("open", path: "/dev/null") }
        defer { close(null) }
        unlink(paths.serialSocket(name))
        logger.info("VM '\(name)': starting \(arguments.joined(separator: " "))")
        // The console is the VMM's serial socket; its stdout (--stats, nothing else) joins
        // the runner's log.
        let pid = try ChildProcess.spawn(
            arguments, stdin: null, stdout: STDERR_FILENO, stderr: STDERR_FILENO)
        lock.withLock { vmmPID = pid }
        let status = relaySerialConsole(vmm: pid)
        lock.withLock { vmmPID = nil }
        return status
    }

    /// Connects to the VMM's serial socket and copies the guest's output to every attached
    /// console until the VMM ends; returns its exit status. The
    /// socket comes back after a guest reboot (`on_reboot: restart` re-executes the VMM), so
    /// the runner reconnects whenever it closes while the VMM runs.
    func relaySerialConsole(vmm pid: pid_t) -> Int32 {
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            if let status = ChildProcess.exitStatus(pid) { return status }
            guard let serial = try? UnixSocket.connect(paths.serialSocket(name)) else {
                usleep(20_000)
                continue
            }
            lock.withLock { vmmInput = serial }
            while true {
                let count = buffer.withUnsafeMutableBytes { read(serial, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { break }
                broadcast(Data(buffer.prefix(count)))
            }
            lock.withLock {
                vmmInput = nil
                close(serial)
            }
        }
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
                _ = try? ChildProcess.run(["ip", "link", "delete", tap])
                var arguments = ["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]
                if let user { arguments += ["user", "\(user.uid)", "group", "\(user.gid)"] }
                try ChildProcess.check(["ip"] + arguments)
                created.append(tap)
                try ChildProcess.check([
                    "ip", "link", "set", "dev", tap, "master", nic.bridge, "up",
                ])
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
            if let result = try? ChildProcess.run(["ip", "link", "delete", tap]), result.status != 0
            {
                logger.warning("could not remove tap \(tap): \(result.stderr)")
            }
        }
    }

    // MARK: Console

    /// Live output to every attached console (console.log is the VMM's `serial_log`).
    func broadcast(_ chunk: Data) {
        let bytes = [UInt8](chunk)
        lock.withLock {
            clients.removeAll { fd in
                if UnixSocket.writeAll(fd, bytes) { return false }
                close(fd)
                return true
            }
        }
    }

    func acceptConsoleClients(_ listener: Int32) {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            // A new console first sees what the guest printed so far (the last 16 KiB).
            let history =
                (try? Data(contentsOf: URL(fileURLWithPath: paths.consoleLog(name)))) ?? Data()
            lock.withLock {
                UnixSocket.writeAll(client, [UInt8](history.suffix(16384)))
                clients.append(client)
            }
            Thread.detachNewThread { [self] in forwardInput(client) }
        }
    }

    /// Keys typed on a console go to the guest's serial port (the VMM's serial socket).
    func forwardInput(_ client: Int32) {
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(client, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            let data = Data(chunk.prefix(count))
            lock.withLock { if let vmmInput { UnixSocket.writeAll(vmmInput, [UInt8](data)) } }
        }
        lock.withLock {
            if let index = clients.firstIndex(of: client) {
                clients.remove(at: index)
                close(client)
            }
        }
    }

    // MARK: Signals

    /// SIGTERM (systemctl stop, host shutdown): ask the guest to power off, then stop it
    /// hard after `MARTLET_STOP_GRACE` seconds (default 30).
    func installSignalHandlers() {
        let grace = Double(ProcessInfo.processInfo.environment["MARTLET_STOP_GRACE"] ?? "") ?? 30
        for number in [SIGTERM, SIGINT] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in
                lock.withLock { stopRequested = true }
                let control = paths.controlSocket(name)
                logger.info("VM '\(name)': signal \(number), shutting down (grace \(Int(grace)) s)")
                // Without an answering VMM (still starting, or hung) signal it instead.
                if (try? UnixSocket.request(control, grace > 0 ? "shutdown" : "stop", timeout: 2))
                    == nil
                {
                    if let pid = lock.withLock({ vmmPID }) { kill(pid, SIGTERM) }
                }
                DispatchQueue.global().asyncAfter(deadline: .now() + grace) { [self] in
                    if (try? UnixSocket.request(control, "stop", timeout: 2)) == nil,
                        let pid = lock.withLock({ vmmPID })
                    {
                        kill(pid, SIGKILL)
                    }
                }
            }
            source.resume()
            signalSources.append(source)
        }
    }
}
