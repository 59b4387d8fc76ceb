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
    private var vmmInput: FileHandle?
    private var consoleLog: FileHandle?
    private var stopRequested = false
    private var signalSources: [DispatchSourceSignal] = []

    /// Exit statuses of `martlet-vmm` (Sources/martlet-vmm/main.swift).
    enum VMMExit: Int32 {
        case powerOff = 0
        case failed = 1
        case badConfig = 2
        case reset = 3
        case stopped = 4
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
        let definition = try host.definition(name)
        try FileManager.default.createDirectory(atPath: paths.state(name), withIntermediateDirectories: true)
        if let other = host.runnerPID(name), other != getpid() {
            throw MartletError(.refused, "VM '\(name)' is already running (runner pid \(other))")
        }
        unlink(stopMarker)
        try "\(getpid())\n".write(toFile: paths.runnerPID(name), atomically: true, encoding: .utf8)
        defer { unlink(paths.runnerPID(name)) }
        FileManager.default.createFile(atPath: paths.consoleLog(name), contents: nil)
        consoleLog = FileHandle(forWritingAtPath: paths.consoleLog(name))
        let listener = try UnixSocket.listen(paths.consoleSocket(name))
        defer {
            close(listener)
            unlink(paths.consoleSocket(name))
        }
        Thread.detachNewThread { [self] in acceptConsoleClients(listener) }
        installSignalHandlers()

        var crashes: [Date] = []
        while true {
            let status = try runOnce(definition)
            let stopping = lock.withLock { stopRequested } || FileManager.default.fileExists(atPath: stopMarker)
            switch VMMExit(rawValue: status) {
            case .powerOff?:
                logger.info("VM '\(name)' powered off")
                return 0
            case .stopped?:
                logger.info("VM '\(name)' stopped")
                return 0
            case .badConfig?:
                logger.error("VM '\(name)': the VMM refused its configuration (\(paths.vmmConfig(name)))")
                return 1
            default:
                if stopping { return 0 }
                logger.error("VM '\(name)': the VMM ended with status \(status)")
                guard definition.onCrash == .restart else { return 1 }
                crashes = crashes.filter { $0.timeIntervalSinceNow > -60 } + [Date()]
                guard crashes.count <= 5 else {
                    logger.error("VM '\(name)' crashed \(crashes.count) times in a minute; giving up")
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
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: paths.vmmConfig(name)))
        let user = vmmUser()
        if let user {
            // The VMM runs unprivileged: it needs its disks and its run directory, nothing else.
            var devices = (config["disks"] as? [[String: Any]] ?? []).compactMap { $0["path"] as? String }
            devices.append(paths.state(name))
            for path in devices {
                let resolved = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)).map {
                    $0.hasPrefix("/") ? $0 : ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent($0)
                } ?? path
                if chown(resolved, user.uid, user.gid) != 0 {
                    logger.warning("chown \(resolved) to \(paths.vmmUser) failed: \(String(cString: strerror(errno)))")
                }
            }
        }
        let taps = try createTaps(definition, user: user)
        defer { removeTaps(taps) }

        let vmm = try Tool.resolve(paths.vmm)
        let process = Process()
        if let user {
            process.executableURL = URL(fileURLWithPath: try Tool.resolve("setpriv"))
            process.arguments = [
                "--reuid=\(user.uid)", "--regid=\(user.gid)", "--init-groups", "--inh-caps=-all", "--",
                vmm, "--config", paths.vmmConfig(name),
            ]
        } else {
            process.executableURL = URL(fileURLWithPath: vmm)
            process.arguments = ["--config", paths.vmmConfig(name)]
        }
        let output = Pipe()
        let input = Pipe()
        process.standardOutput = output
        process.standardInput = input
        process.standardError = FileHandle.standardError
        logger.info("VM '\(name)': starting \(vmm) --config \(paths.vmmConfig(name))\(user == nil ? "" : " as \(paths.vmmUser)")")
        try process.run()
        lock.withLock { vmmInput = input.fileHandleForWriting }
        let relayDone = DispatchSemaphore(value: 0)
        let reader = output.fileHandleForReading
        Thread.detachNewThread { [self] in
            while true {
                let chunk = reader.availableData
                if chunk.isEmpty { break }
                broadcast(chunk)
            }
            relayDone.signal()
        }
        process.waitUntilExit()
        relayDone.wait()
        lock.withLock { vmmInput = nil }
        try? input.fileHandleForWriting.close()
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }

    struct User { var uid: uid_t; var gid: gid_t }

    func vmmUser() -> User? {
        guard geteuid() == 0, !paths.vmmUser.isEmpty, let entry = getpwnam(paths.vmmUser) else { return nil }
        return User(uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
    }

    func createTaps(_ definition: VMDefinition, user: User?) throws -> [String] {
        var created: [String] = []
        do {
            for (index, nic) in definition.nics.enumerated() {
                let tap = VMDefinition.tapName(vm: name, index: index)
                guard FileManager.default.fileExists(atPath: "/sys/class/net/\(nic.bridge)/bridge") else {
                    throw MartletError(
                        .notFound, "VM '\(name)': NIC \(index + 1) wants bridge '\(nic.bridge)', which does not exist",
                        hint: "create the bridge (the installer sets up br0) or fix [[nic]] bridge")
                }
                _ = try? Command("ip", ["link", "delete", tap]).runAllowingFailure()
                var arguments = ["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]
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
            if let result = try? Command("ip", ["link", "delete", tap]).runAllowingFailure(), result.status != 0 {
                logger.warning("could not remove tap \(tap): \(result.stderr)")
            }
        }
    }

    // MARK: Console

    func broadcast(_ chunk: Data) {
        let bytes = [UInt8](chunk)
        lock.withLock {
            consoleLog?.write(chunk)
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
            let history = (try? Data(contentsOf: URL(fileURLWithPath: paths.consoleLog(name)))) ?? Data()
            lock.withLock {
                UnixSocket.writeAll(client, [UInt8](history.suffix(16384)))
                clients.append(client)
            }
            Thread.detachNewThread { [self] in forwardInput(client) }
        }
    }

    /// Keys typed on a console go to the guest's serial port (the VMM's stdin).
    func forwardInput(_ client: Int32) {
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(client, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            let data = Data(chunk.prefix(count))
            lock.withLock { try? vmmInput?.write(contentsOf: data) }
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
                _ = try? UnixSocket.request(control, grace > 0 ? "shutdown" : "stop", timeout: 2)
                DispatchQueue.global().asyncAfter(deadline: .now() + grace) {
                    _ = try? UnixSocket.request(control, "stop", timeout: 2)
                }
            }
            source.resume()
            signalSources.append(source)
        }
    }
}
