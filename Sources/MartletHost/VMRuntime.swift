import Foundation
import Logging
import MartletCore
import MartletSystem
import MartletVMMProtocol

/// Starting and stopping VMs. On a host booted with systemd a VM is the instance
/// `martlet-vm@NAME.service`, whose ExecStart is `martlet vm run NAME` (the `VMRunner`);
/// where systemd is not PID 1 (containers, CI) the same runner is spawned directly in its
/// own session. Either way the runner writes its pid to the VM's run directory, so state,
/// stop and console work the same.
extension VMHost {
    /// True when systemd manages services here (the check `sd_booted()` makes).
    public static var systemdIsRunning: Bool {
        var info = stat()
        return lstat("/run/systemd/system", &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// True when VMs run as systemd units here: systemd is running and MARTLET_NO_SYSTEMD
    /// (tests, containers) does not ask for directly spawned runners.
    static var usesSystemd: Bool {
        systemdIsRunning && ProcessInfo.processInfo.environment["MARTLET_NO_SYSTEMD"] == nil
    }

    /// The `martlet` executable to start runners with: this program.
    static var martletExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
    }

    /// Starts a stopped VM and waits until its VMM answers on the control socket.
    public func start(_ name: String, timeout: Double = 15) throws -> VMStatus {
        let definition = try definition(name)
        if try isRunning(name) {
            throw MartletError(
                .refused, "VM '\(name)' is already running", hint: "see 'martlet vm show \(name)'")
        }
        try checkReferences(definition)
        try FileManager.default.createDirectory(
            atPath: paths.state(name), withIntermediateDirectories: true)
        // Explicitly 0755 whatever the umask of the process that made it: the VMM runs as its
        // own user and reads its configuration from here.
        guard chmod(paths.state(name), 0o755) == 0 else { throw MartletError.system("chmod", path: paths.state(name)) }
        unlink(paths.runnerPID(name))
        unlink(paths.controlSocket(name))
        unlink(paths.runnerExit(name))
        let began = Date()
        let systemd = Self.usesSystemd
        if systemd {
            try Command("systemctl", ["start", "--no-block", "martlet-vm@\(name).service"]).run()
        } else {
            try Self.spawnDetached(
                [Self.martletExecutable, "vm", "run", name], log: paths.runnerLog(name))
        }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if runnerPID(name) != nil,
                let reply = try? ControlClient.send(.state, to: paths.controlSocket(name), timeout: 1),
                reply.ok
            {
                return try status(name)
            }
            // The runner ended before its VMM answered: a guest that powered off at once,
            // or a VM that cannot run (KVM missing, a disk gone); say why without waiting.
            if let status = runnerExitStatus(name) {
                if status == 0 { return try self.status(name) }
                throw MartletError(
                    .failed,
                    "VM '\(name)' could not start: \(VMStatus.problem(runnerStatus: status) ?? "")",
                    hint: systemd
                        ? "see: journalctl -u martlet-vm@\(name)" : "see \(paths.runnerLog(name))",
                    cause: runnerLogTail(name, systemd: systemd, since: began))
            }
            usleep(50_000)
        }
        throw MartletError(
            .failed, "VM '\(name)' did not come up within \(Int(timeout)) s",
            hint: systemd
                ? "see: journalctl -u martlet-vm@\(name)" : "see \(paths.runnerLog(name))",
            cause: runnerLogTail(name, systemd: systemd, since: began))
    }

    /// The last lines the runner (and the VMM under it) logged: the journal under systemd,
    /// from this start on.
    func runnerLogTail(_ name: String, systemd: Bool, since: Date, lines: Int = 10) -> String {
        let log: String
        if systemd {
            log =
                (try? Command(
                    "journalctl",
                    [
                        "-u", "martlet-vm@\(name).service", "-n", String(lines), "-o", "cat",
                        "--no-pager", "--since", "@\(Int(since.timeIntervalSince1970) - 1)",
                    ]
                ).runAllowingFailure())?.stdoutText ?? ""
        } else {
            log = (try? String(contentsOfFile: paths.runnerLog(name), encoding: .utf8)) ?? ""
        }
        return log.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    /// Starts `arguments` in a new session, detached from this process (a double fork
    /// through `setsid -f`, so nobody has to reap it), output appended to `log`.
    static func spawnDetached(_ arguments: [String], log: String) throws {
        let script =
            "exec setsid -f \"$@\" </dev/null >>'\(log.replacingOccurrences(of: "'", with: "'\\''"))' 2>&1"
        // The runner starts with default signal handling and nothing blocked, whatever the
        // calling thread had, and with none of this process's fds (the process layer's rule).
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        let pid = try ChildProcess.spawn(
            ["/bin/sh", "-c", script, "sh"] + arguments, stdin: null.raw, stdout: null.raw,
            stderr: STDERR_FILENO)
        let termination = ChildProcess.wait(pid)
        guard termination == .exited(0) else {
            throw MartletError(
                .failed, "could not start '\(arguments.joined(separator: " "))': setsid \(termination)")
        }
    }

    /// Stops a running VM: asks the guest to power off (ACPI power button) and waits
    /// `grace` seconds, then stops the VMM hard. `grace` 0 stops it at once.
    public func stop(_ name: String, grace: Double = 0, timeout: Double = 15) throws -> VMStatus {
        _ = try definition(name)
        guard let pid = runnerPID(name) else {
            throw MartletError(.refused, "VM '\(name)' is not running")
        }
        let control = paths.controlSocket(name)
        // Tell the runner this end is wanted, so the on-crash policy does not restart it.
        FileManager.default.createFile(atPath: "\(paths.state(name))/stopping", contents: nil)
        if grace > 0 {
            _ = try? ControlClient.send(.shutdown, to: control, timeout: 2)
            let deadline = Date().addingTimeInterval(grace)
            while runnerPID(name) != nil && Date() < deadline { usleep(50_000) }
        }
        if runnerPID(name) != nil {
            if Self.usesSystemd {
                try Command("systemctl", ["stop", "martlet-vm@\(name).service"]).run()
            } else if (try? ControlClient.send(.stop, to: control, timeout: 2)) == nil {
                kill(pid, SIGTERM)
            }
        }
        let deadline = Date().addingTimeInterval(timeout)
        while runnerPID(name) != nil && Date() < deadline { usleep(50_000) }
        if runnerPID(name) != nil {
            throw MartletError(
                .failed, "VM '\(name)' did not stop within \(Int(timeout)) s (runner pid \(pid))")
        }
        return try status(name)
    }

    /// How long autostart waits for each VM to answer: at boot its unit, taps and the VMM's
    /// set-up compete with the rest of the host's start (an installed host under QEMU/TCG
    /// took over 15 s, `start`'s default, while the VM came up moments later).
    static let autostartTimeout = 120.0

    /// Starts every VM whose definition says `autostart = true` and that is not running.
    public func autostart(logger: Logger) -> [String: String] {
        var results: [String: String] = [:]
        for definition in (try? definitions()) ?? [] where definition.autostart {
            if runnerPID(definition.name) != nil {
                results[definition.name] = "already running"
                continue
            }
            do {
                _ = try start(definition.name, timeout: Self.autostartTimeout)
                results[definition.name] = "started"
            } catch {
                logger.error("autostart of VM '\(definition.name)' failed: \(error)")
                results[definition.name] = "failed: \(error)"
            }
        }
        return results
    }

    /// The VMM's configuration for `definition`, with volumes resolved to device paths.
    public func vmmConfiguration(_ definition: VMDefinition) throws -> VMConfig {
        func resolve(_ source: VMDefinition.FileSource) throws -> String {
            switch source {
            case .path(let path): path
            case .volume(let pool, let volume): try self.pool(pool).volume(volume).path
            }
        }
        var config = VMConfig()
        config.vcpus = definition.vcpus
        config.memoryMiB = Int(definition.memory.bytes >> 20)
        switch definition.boot.mode {
        case .kernel:
            config.kernel = try definition.boot.kernel.map(resolve) ?? ""
            config.initrd = try definition.boot.initrd.map(resolve)
            config.cmdline = definition.boot.cmdline
        case .disk:
            config.firmware = definition.boot.firmwarePath
        }
        // The runner is the serial socket's one client: it serves console.sock to any
        // number of `vm console` clients. The VMM itself keeps console.log.
        config.serial = .socket(paths.serialSocket(definition.name))
        config.serialLog = paths.consoleLog(definition.name)
        config.controlSocket = paths.controlSocket(definition.name)
        // A guest reboot restarts the VMM in place; a crash is the runner's business.
        config.onReboot = .restart
        config.disks = try definition.disks.map { disk in
            VMConfig.Disk(
                path: try self.pool(disk.pool).volume(disk.volume).path, readOnly: disk.readOnly,
                id: String(disk.volume.prefix(20)))
        }
        // After the VM's own disks, so they keep their names (/dev/vda …) and the first
        // one stays the one firmware boots.
        if definition.cloudInit != nil {
            config.disks.append(
                VMConfig.Disk(
                    path: paths.cloudInitSeed(definition.name), readOnly: true,
                    id: CloudInitSeed.volumeLabel))
        }
        // The runner creates these taps on the NICs' bridges before it starts the VMM.
        config.nics = definition.nics.enumerated().map { index, nic in
            VMConfig.NIC(tap: VMDefinition.tapName(vm: definition.name, index: index), mac: nic.mac, queues: nic.queues)
        }
        return config
    }
}
