import Foundation
import MartletCore
import MartletSystem
import Testing

@testable import MartletHost

/// A network namespace with a bridge, so taps are created for real without touching the
/// host's own interfaces; deleted with everything in it.
final class BridgeNamespace {
    let name = "mhtest-\(UUID().uuidString.prefix(8).lowercased())"
    let bridge = "br-test"

    init() throws {
        try Command("ip", ["netns", "add", name]).run()
        do {
            try Command("ip", ["-n", name, "link", "add", bridge, "type", "bridge"]).run()
            try Command("ip", ["-n", name, "link", "set", bridge, "up"]).run()
        } catch {
            _ = try? Command("ip", ["netns", "delete", name]).runAllowingFailure()
            throw error
        }
    }

    /// `ip -n NS link show DEVICE`, or nil when it does not exist.
    func link(_ device: String) -> String? {
        guard let result = try? ChildProcess.run(["ip", "-n", name, "-o", "link", "show", device]),
            result.status == 0
        else { return nil }
        return result.stdout
    }

    deinit { _ = try? Command("ip", ["netns", "delete", name]).runAllowingFailure() }
}

@Suite(.serialized, .timeLimit(.minutes(30))) struct VMLifecycleTests {
    struct CLI {
        let fixture: HostFixture
        let namespace: BridgeNamespace?

        /// Runs `martlet ARGS` (inside the namespace when there is one).
        @discardableResult
        func callAsFunction(_ arguments: String...) throws -> ChildProcess.Output {
            let martlet = TestSupport.product("martlet")
            if let namespace {
                return try TestSupport.run(
                    "/usr/sbin/ip", ["netns", "exec", namespace.name, martlet] + arguments,
                    environment: fixture.environment)
            }
            return try TestSupport.run(martlet, arguments, environment: fixture.environment)
        }

        func json(_ arguments: String...) throws -> [String: Any] {
            let result = try TestSupport.run(
                namespace == nil ? TestSupport.product("martlet") : "/usr/sbin/ip",
                (namespace.map { ["netns", "exec", $0.name, TestSupport.product("martlet")] } ?? [])
                    + arguments + ["--json"],
                environment: fixture.environment)
            #expect(
                result.status == 0, "martlet \(arguments.joined(separator: " ")): \(result.stderr)")
            return
                (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
                ?? [:]
        }
    }

    @Test func createStartConsoleStopDeleteThroughTheCLI() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "life")
        let namespace = try BridgeNamespace()
        let martlet = CLI(fixture: fixture, namespace: namespace)

        let created = try martlet.json(
            "vm", "create", "life", "--kernel", guest, "--cmdline", "test=halt lifecycle-test",
            "--memory", "32MiB",
            "--new-disk", "local/life-root:16MiB", "--nic", namespace.bridge)
        #expect(created["state"] as? String == "stopped")
        #expect(FileManager.default.fileExists(atPath: fixture.paths.definition("life")))
        #expect(
            try martlet("vm", "create", "life", "--kernel", guest).status
                == MartletError.Code.refused.exitStatus)

        let started = try martlet.json("vm", "start", "life")
        #expect(started["state"] as? String == "running")
        #expect(started["pid"] is Int)
        let tap = VMDefinition.tapName(vm: "life", index: 0)
        let link = namespace.link(tap)
        #expect(link?.contains("master \(namespace.bridge)") == true, "tap: \(link ?? "missing")")
        #expect(try martlet("vm", "start", "life").status == MartletError.Code.refused.exitStatus)

        let list = try martlet("vm", "list")
        #expect(list.stdout.contains("life") && list.stdout.contains("running"), "\(list.stdout)")

        let console = try martlet(
            "vm", "console", "life", "--expect",
            "halting, cmdline: test=halt lifecycle-test", "--timeout", "10")
        #expect(console.status == 0, "console: \(console.stdout) \(console.stderr)")

        // Refusals while it runs: delete the VM, delete or grow its disk.
        #expect(try martlet("vm", "delete", "life").status == MartletError.Code.refused.exitStatus)
        #expect(
            try martlet("volume", "delete", "local/life-root").status
                == MartletError.Code.refused.exitStatus)
        #expect(
            try martlet("volume", "resize", "local/life-root", "--size", "32MiB").status
                == MartletError.Code.refused.exitStatus)

        let stopped = try martlet.json("vm", "stop", "life")
        #expect(stopped["state"] as? String == "stopped")
        #expect(namespace.link(tap) == nil, "the tap is removed after the VM stops")
        #expect(
            try martlet("vm", "console", "life", "--timeout", "1").status
                == MartletError.Code.refused.exitStatus)

        #expect(try martlet("vm", "delete", "life", "--volumes").status == 0)
        #expect(!FileManager.default.fileExists(atPath: fixture.paths.definition("life")))
        #expect(try fixture.host.pool("local").volumes().isEmpty)
        #expect(try martlet("vm", "show", "life").status == MartletError.Code.notFound.exitStatus)
    }

    @Test func powerOffEndsTheVMWithoutARestart() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "crash")
        let martlet = CLI(fixture: fixture, namespace: nil)
        // "test=poweroff" makes the guest power off at once: a clean end, never restarted.
        try martlet.json(
            "vm", "create", "off", "--kernel", guest, "--cmdline", "test=poweroff", "--memory",
            "16MiB")
        // It may be gone before start sees it answer; either way it must end, once.
        _ = try martlet("vm", "start", "off", "--timeout", "3")
        #expect(Poll.until(timeout: 10) { fixture.host.runnerPID("off") == nil })
        let log = try String(contentsOfFile: fixture.paths.consoleLog("off"), encoding: .utf8)
        #expect(log.components(separatedBy: "powering off").count == 2, "one boot only: \(log)")
    }

    /// The VMM runs as an unprivileged user in group kvm (a temporary system user here,
    /// `martlet-vm` on a host) owning only its disk and its own run directory.
    @Test func vmmRunsAsTheUnprivilegedUser() throws {
        let guest = try TestSupport.guest.get()
        let user = "mhvm\(UUID().uuidString.prefix(6).lowercased())"
        try Command(
            "useradd",
            ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", "kvm", user]
        ).run()
        defer { _ = try? ChildProcess.run(["userdel", user]) }
        let fixture = try HostFixture(label: "user")
        var environment = fixture.environment
        environment["MARTLET_VMM_USER"] = user
        let martlet = TestSupport.product("martlet")
        let created = try TestSupport.run(
            martlet,
            [
                "vm", "create", "unpriv", "--kernel", guest, "--cmdline", "test=halt", "--memory",
                "16MiB", "--new-disk", "local/unpriv-root:8MiB",
            ],
            environment: environment)
        #expect(created.status == 0, "\(created.stderr)")
        let started = try TestSupport.run(
            martlet, ["vm", "start", "unpriv"], environment: environment)
        #expect(started.status == 0, "\(started.stderr)")
        let vmm = try ChildProcess.run(["ps", "-o", "user=", "-C", "martlet-vmm"]).stdout
        #expect(
            vmm.split(separator: "\n").contains { $0.trimmingCharacters(in: .whitespaces) == user },
            "\(vmm)")
        var info = stat()
        #expect(stat(fixture.root + "/pool/unpriv-root.raw", &info) == 0)
        #expect(info.st_uid == getpwnam(user)?.pointee.pw_uid, "the disk belongs to the VMM user")
        #expect(
            stat(fixture.paths.state("unpriv"), &info) == 0 && info.st_uid == 0,
            "the run directory stays root's")
        let console = try TestSupport.run(
            martlet,
            [
                "vm", "console", "unpriv", "--expect", "halting, cmdline: test=halt", "--timeout",
                "10",
            ],
            environment: environment)
        #expect(console.status == 0, "\(console.stdout) \(console.stderr)")
        #expect(
            try TestSupport.run(martlet, ["vm", "stop", "unpriv"], environment: environment).status
                == 0)
    }

    @Test func sigtermToTheRunnerStopsTheVM() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "term")
        let martlet = CLI(fixture: fixture, namespace: nil)
        try martlet.json(
            "vm", "create", "term", "--kernel", guest, "--cmdline", "test=halt", "--memory",
            "16MiB")
        let started = try martlet.json("vm", "start", "term")
        let pid = try #require(started["pid"] as? Int)
        // What systemctl stop does: SIGTERM; the guest ignores the power button, so the
        // runner stops the VMM hard after MARTLET_STOP_GRACE (1 s here).
        #expect(kill(pid_t(pid), SIGTERM) == 0)
        #expect(Poll.until(timeout: 10) { fixture.host.runnerPID("term") == nil }, "the runner ended")
        let log = try String(contentsOfFile: fixture.paths.runnerLog("term"), encoding: .utf8)
        #expect(log.contains("signal 15"), "\(log)")
        #expect(try fixture.host.status("term").state == .stopped)
    }

    /// A host where KVM cannot be used (VT-x off in the firmware, kvm module not loaded):
    /// the real martlet-vmm, run in a mount namespace whose /dev has no kvm, exits 5; the
    /// runner does not retry, and `vm start` fails at once with the VMM's reason.
    @Test func startFailsAtOnceWhenTheHostCannotRunVMs() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "nokvm")
        let withoutKVM = fixture.root + "/vmm-without-kvm"
        try """
            #!/bin/sh
            exec unshare -m --propagation private sh -c 'mount -t tmpfs none /dev && exec "$0" "$@"' \
                "\(fixture.paths.vmm)" "$@"

            """.write(toFile: withoutKVM, atomically: true, encoding: .utf8)
        chmod(withoutKVM, 0o755)
        var environment = fixture.environment
        environment["MARTLET_VMM"] = withoutKVM
        let martlet = TestSupport.product("martlet")
        let created = try TestSupport.run(
            martlet, ["vm", "create", "nokvm", "--kernel", guest, "--memory", "16MiB"],
            environment: environment)
        #expect(created.status == 0, "\(created.stderr)")
        try fixture.runUnjailed("nokvm")

        let began = Date()
        let started = try TestSupport.run(
            martlet, ["vm", "start", "nokvm", "--timeout", "60"], environment: environment)
        let seconds = Date().timeIntervalSince(began)
        #expect(started.status == MartletError.Code.failed.exitStatus, "\(started.stderr)")
        #expect(started.stderr.contains("could not start"), "\(started.stderr)")
        #expect(started.stderr.contains("/dev/kvm does not exist"), "\(started.stderr)")
        #expect(started.stderr.contains("Enable virtualization"), "\(started.stderr)")
        // Not the 60 s timeout: the runner's exit status ended the wait.
        #expect(seconds < 30, "vm start took \(Int(seconds)) s")
        let log = try String(contentsOfFile: fixture.paths.runnerLog("nokvm"), encoding: .utf8)
        #expect(log.components(separatedBy: "/dev/kvm does not exist").count == 2, "one try: \(log)")
        #expect(!log.contains("': restarting"), "\(log)")
        #expect(fixture.host.runnerPID("nokvm") == nil)
    }

    @Test func editValidatesBeforeSaving() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "edit")
        let martlet = CLI(fixture: fixture, namespace: nil)
        try martlet.json("vm", "create", "ed", "--kernel", guest, "--cmdline", "test=halt")
        let boot = "[boot]\nkernel = \"\(guest)\"\ncmdline = \"test=halt\"\n"
        let bad = try TestSupport.run(
            TestSupport.product("martlet"), ["vm", "edit", "ed", "--from", "-"],
            environment: fixture.environment, input: "vcpus = 2\nbogus = 1\n" + boot)
        #expect(bad.status == MartletError.Code.invalidInput.exitStatus)
        #expect(bad.stderr.contains("ed.toml:2:1"), "\(bad.stderr)")
        #expect(try fixture.host.definition("ed").vcpus == 1, "a bad edit changes nothing")
        let good = try TestSupport.run(
            TestSupport.product("martlet"), ["vm", "edit", "ed", "--from", "-"],
            environment: fixture.environment, input: "vcpus = 2\nautostart = true\n" + boot)
        #expect(good.status == 0, "\(good.stderr)")
        #expect(try fixture.host.definition("ed").vcpus == 2)
        // Autostart starts it; a second autostart leaves it alone.
        let first = try martlet.json("vm", "autostart")
        #expect(first["ed"] as? String == "started")
        #expect(try fixture.host.isRunning("ed"))
        #expect(try martlet.json("vm", "autostart")["ed"] as? String == "already running")
        _ = try fixture.host.stop("ed")
    }
}
