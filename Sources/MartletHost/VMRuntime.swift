import Foundation
import Logging
import MartletCore

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
        unlink(paths.runnerPID(name))
        unlink(paths.controlSocket(name))
        unlink(paths.runnerExit(name))
        let began = Date()
        let systemd = Self.usesSystemd
        if systemd {
            try ChildProcess.check([
                "systemctl", "start", "--no-block", "martlet-vm@\(name).service",
            ])
        } else {
            try Self.spawnDetached(
                [Self.martletExecutable, "vm", "run", name], log: paths.runnerLog(name))
        }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if runnerPID(name) != nil,
                let reply = try? UnixSocket.request(paths.controlSocket(name), "state", timeout: 1),
                reply["ok"] as? Bool == true
            {
                return try status(name)
            }
            // The runner ended before its VMM answered: a guest that powered off at once,
            // or a VM that cannot run (KVM missing, a disk gone); say why without waiting.
            if let text = try? String(contentsOfFile: paths.runnerExit(name), encoding: .utf8),
                let status = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
            {
                if status == 0 { return try self.status(name) }
                throw MartletError(
                    .failed, "VM '\(name)' could not start (its runner ended with status \(status))",
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
            log = (try? ChildProcess.run([
                "journalctl", "-u", "martlet-vm@\(name).service", "-n", String(lines), "-o", "cat",
                "--no-pager", "--since", "@\(Int(since.timeIntervalSince1970) - 1)",
            ]))?.stdout ?? ""
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
        let argv = ["/bin/sh", "-c", script, "sh"] + arguments
        var pid: pid_t = 0
        var cArguments = argv.map { strdup($0) } + [nil]
        defer { for pointer in cArguments { free(pointer) } }
        // posix_spawn rather than Foundation's Process: the latter waits for the pipes and
        // children it set up, which the detached runner would keep open.
        // The runner starts with default signal handling and nothing blocked, whatever the
        // calling thread had: Foundation's Process needs SIGCHLD to see its children exit.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let result = posix_spawn(&pid, "/bin/sh", nil, &attributes, &cArguments, environ)
        guard result == 0 else {
            throw MartletError.system("posix_spawn", path: "/bin/sh", errno: result)
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else {
            throw MartletError(
                .failed, "could not start '\(arguments.joined(separator: " "))' (status \(status))")
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
            _ = try? UnixSocket.request(control, "shutdown", timeout: 2)
            let deadline = Date().addingTimeInterval(grace)
            while runnerPID(name) != nil && Date() < deadline { usleep(50_000) }
        }
        if runnerPID(name) != nil {
            if Self.usesSystemd {
                try ChildProcess.check(["systemctl", "stop", "martlet-vm@\(name).service"])
            } else if (try? UnixSocket.request(control, "stop", timeout: 2)) == nil {
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

    /// Starts every VM whose definition says `autostart = true` and that is not running.
    public func autostart(logger: Logger) -> [String: String] {
        var results: [String: String] = [:]
        for definition in (try? definitions()) ?? [] where definition.autostart {
            if runnerPID(definition.name) != nil {
                results[definition.name] = "already running"
                continue
            }
            do {
                _ = try start(definition.name)
                results[definition.name] = "started"
            } catch {
                logger.error("autostart of VM '\(definition.name)' failed: \(error)")
                results[definition.name] = "failed: \(error)"
            }
        }
        return results
    }

    /// The VMM's JSON configuration for `definition`, with volumes resolved to device paths.
    public func vmmConfiguration(_ definition: VMDefinition) throws -> [String: Any] {
        func resolve(_ source: VMDefinition.FileSource) throws -> String {
            switch source {
            case .path(let path): path
            case .volume(let pool, let volume): try self.pool(pool).volume(volume).path
            }
        }
        var config: [String: Any] = [
            "vcpus": definition.vcpus,
            "memory_mib": Int(definition.memory.bytes >> 20),
            "kernel": try resolve(definition.boot.kernel),
            "cmdline": definition.boot.cmdline,
            // The runner is the serial socket's one client: it serves console.sock to any
            // number of `vm console` clients. The VMM itself keeps console.log.
            "serial": "socket:\(paths.serialSocket(definition.name))",
            "serial_log": paths.consoleLog(definition.name),
            "control_socket": paths.controlSocket(definition.name),
            // A guest reboot restarts the VMM in place; a crash is the runner's business.
            "on_reboot": "restart",
            "disks": try definition.disks.enumerated().map { index, disk -> [String: Any] in
                [
                    "path": try self.pool(disk.pool).volume(disk.volume).path,
                    "read_only": disk.readOnly, "id": "\(disk.volume.prefix(20))",
                ]
            },
        ]
        if let initrd = definition.boot.initrd { config["initrd"] = try resolve(initrd) }
        if !definition.nics.isEmpty {
            // The runner creates these taps on the NICs' bridges before it starts the VMM.
            config["nics"] = definition.nics.enumerated().map { index, nic -> [String: Any] in
                ["tap": VMDefinition.tapName(vm: definition.name, index: index), "mac": nic.mac]
            }
        }
        return config
    }
}
