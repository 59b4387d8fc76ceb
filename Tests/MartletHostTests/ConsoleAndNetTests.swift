import Foundation
import MartletCore
import MartletSystem
import MartletVMMProtocol
import Testing

@testable import MartletHost

/// The two things the runner hands the VMM besides disks: the serial console (a two-way
/// `martlet vm console` through the VMM's serial socket) and the NICs (taps on the bridge,
/// with the VM's stable MAC, opened by the VMM's virtio-net).
@Suite(.serialized, .timeLimit(.minutes(30))) struct ConsoleAndNetTests {
    /// Polls `path` until it contains `text` (or `timeout` passes); returns the file.
    func waitForText(_ text: String, in path: String, timeout: Double = 10) -> String {
        var content = ""
        let found = Poll.until(timeout: timeout, interval: 0.05) {
            content = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            return content.contains(text)
        }
        #expect(found, "'\(text)' did not appear in \(path) within \(timeout) s")
        return content
    }

    @Test func keysTypedOnTheConsoleReachTheGuestUntilTheDetachKey() throws {
        // The test guest with "test=echo" reads its UART up to a newline, prints
        // "echo: LINE" and powers off.
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "keys")
        let martlet = TestSupport.product("martlet")
        let created = try TestSupport.run(
            martlet,
            [
                "vm", "create", "keys", "--kernel", guest, "--cmdline", "test=echo", "--memory",
                "16MiB",
            ],
            environment: fixture.environment)
        #expect(created.status == 0, "\(created.stderr)")
        let started = try TestSupport.run(
            martlet, ["vm", "start", "keys"], environment: fixture.environment)
        #expect(started.status == 0, "\(started.stderr)")
        defer { _ = try? fixture.host.stop("keys") }
        let config = try VMConfig(
            json: String(contentsOfFile: fixture.paths.vmmConfig("keys"), encoding: .utf8),
            source: fixture.paths.vmmConfig("keys"))
        #expect(config.serial == .socket(fixture.paths.serialSocket("keys")))

        // Ctrl-] detaches: the keys before it reach the guest, the ones after it do not, and
        // the VM keeps running.
        let detached = try TestSupport.run(
            martlet, ["vm", "console", "keys", "--timeout", "15"],
            environment: fixture.environment, input: "ab\u{1D}cd\n")
        #expect(detached.status == 0, "\(detached.stdout) \(detached.stderr)")
        // Still running: the second console below gets its answer from this same boot.
        #expect(try fixture.host.isRunning("keys"), "still waiting for the end of the line")

        // A second console ends the line; the guest answers with what it received.
        let typed = try TestSupport.run(
            martlet, ["vm", "console", "keys", "--expect", "guest done", "--timeout", "15"],
            environment: fixture.environment, input: "\n")
        #expect(typed.status == 0, "\(typed.stdout) \(typed.stderr)")
        #expect(typed.stdout.contains("echo: ab\n"), "\(typed.stdout)")
        let log = waitForText("guest done", in: fixture.paths.consoleLog("keys"))
        #expect(log.contains("echo: ab\n") && !log.contains("cd"), "console.log: \(log)")
    }

    @Test func theConsoleLogKeepsBothBootsAcrossAGuestReboot() throws {
        // "test=reset-once": the first boot marks the disk and resets; the VMM re-executes
        // itself (on_reboot restart), its serial socket comes back, the second boot powers off.
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "reboot")
        let martlet = VMLifecycleTests.CLI(fixture: fixture, namespace: nil)
        try martlet.json(
            "vm", "create", "rb", "--kernel", guest, "--cmdline", "test=reset-once", "--memory",
            "16MiB", "--new-disk", "local/rb-root:8MiB")
        _ = try martlet("vm", "start", "rb", "--timeout", "5")
        #expect(Poll.until(timeout: 20) { fixture.host.runnerPID("rb") == nil }, "the runner ended with the second boot")
        let log = try String(contentsOfFile: fixture.paths.consoleLog("rb"), encoding: .utf8)
        #expect(log.contains("first boot, resetting"), "\(log)")
        #expect(log.contains("second boot after reset") && log.contains("guest done"), "\(log)")
        #expect(try martlet("vm", "delete", "rb", "--volumes").status == 0)
    }

    /// With `queues=2` the runner makes the tap a multi-queue one, which the VMM must open
    /// once per pair (the test guest's driver then stays on the first).
    @Test(arguments: [nil, 2])
    func guestFramesReachTheBridgeThroughTheVMsTap(queues: Int?) throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "net")
        let namespace = try BridgeNamespace()
        // The bridge answers the guest's ARP request for 10.77.0.1; no IPv6 chatter on the link.
        try Command(
            "ip",
            ["netns", "exec", namespace.name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]
        ).run()
        try Command(
            "ip",
            [
                "netns", "exec", namespace.name, "sysctl", "-qw",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]
        ).run()
        try Command(
            "ip", ["-n", namespace.name, "addr", "add", "10.77.0.1/24", "dev", namespace.bridge]
        ).run()
        let martlet = VMLifecycleTests.CLI(fixture: fixture, namespace: namespace)
        let created = try martlet.json(
            "vm", "create", "net", "--kernel", guest, "--cmdline", "test=net", "--memory", "16MiB",
            "--nic", "\(namespace.bridge),mac=02:4d:4c:0a:0b:0c" + (queues.map { ",queues=\($0)" } ?? ""))
        #expect(created["state"] as? String == "stopped")
        // The guest powers off once it has its reply; it may be gone before start sees it.
        _ = try martlet("vm", "start", "net", "--timeout", "5")
        #expect(Poll.until(timeout: 20) { fixture.host.runnerPID("net") == nil }, "the guest powered off")

        let log = try String(contentsOfFile: fixture.paths.consoleLog("net"), encoding: .utf8)
        let runnerLog =
            (try? String(contentsOfFile: fixture.paths.runnerLog("net"), encoding: .utf8)) ?? ""
        #expect(
            log.contains("net mac: 02:4d:4c:0a:0b:0c"),
            "the VMM gave the guest the VM's MAC: \(log)")
        #expect(
            log.contains("net rx: arp reply from 10.77.0.1"),
            "the frame crossed the bridge: \(log) \(runnerLog)")
        let config = try VMConfig(
            json: String(contentsOfFile: fixture.paths.vmmConfig("net"), encoding: .utf8),
            source: fixture.paths.vmmConfig("net"))
        let tap = VMDefinition.tapName(vm: "net", index: 0)
        #expect(config.nics == [VMConfig.NIC(tap: tap, mac: "02:4d:4c:0a:0b:0c", queues: queues)], "\(config)")
        #expect(namespace.link(tap) == nil, "the tap is removed after the VM ends")
    }
}
