import Foundation
import Testing

@testable import MartletVMM

/// A minimal client of the control socket: one JSON line out, one JSON line back.
func control(_ path: String, _ command: String) throws -> JSON {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    #expect(fd >= 0)
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
    }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard connected == 0 else { throw VMMError(.control, "connect \(path): \(errno)") }
    let request = Array("{\"command\": \"\(command)\"}\n".utf8)
    _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    var reply: [UInt8] = []
    var byte: UInt8 = 0
    while read(fd, &byte, 1) == 1 && byte != 0x0A { reply.append(byte) }
    return try JSON(parsing: String(decoding: reply, as: UTF8.self))
}

@Suite(.serialized)
struct ControlTests {
    @Test func pauseResumeStopThroughTheSocket() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let socketPath = directory.appendingPathComponent("control.sock").path
        var config = VMConfig()
        config.kernel = try TestSupport.guestELF.get()
        config.cmdline = "test=bench-pio n=100000000000"
        config.memoryMiB = 16
        config.serial = .none
        let machine = try Machine(config: config)
        let server = try ControlServer(path: socketPath, machine: machine)
        try server.start()
        defer { server.close() }

        final class Outcome: @unchecked Sendable { var exit: Machine.Exit? }
        let outcome = Outcome()
        let runner = Thread { outcome.exit = try? machine.run(timeout: 30) }
        runner.start()
        defer { machine.stop() }

        var waited = 0
        while machine.portIOExits < 1000 && waited < 500 {
            usleep(10_000)
            waited += 1
        }
        #expect(try control(socketPath, "state")["state"] == .string("running"))
        #expect(try control(socketPath, "pause")["state"] == .string("paused"))
        let pausedAt = machine.portIOExits
        usleep(200_000)
        #expect(machine.portIOExits == pausedAt, "the guest kept running while paused")
        let info = try control(socketPath, "info")
        #expect(info["vcpus"] == .number(1))
        #expect(info["state"] == .string("paused"))
        #expect(try control(socketPath, "resume")["state"] == .string("running"))
        usleep(200_000)
        #expect(machine.portIOExits > pausedAt, "the guest did not resume")
        #expect(try control(socketPath, "bogus")["ok"] == .bool(false))
        _ = try control(socketPath, "stop")
        while !runner.isFinished { usleep(10_000) }
        #expect(outcome.exit == .stopped)
    }
}

/// The martlet-vmm executable itself: flags, config errors, exit codes, selftest.
@Suite(.serialized)
struct CLITests {
    @Test func versionAndHelp() throws {
        let version = try TestSupport.run(TestSupport.vmmBinary, ["--version"])
        #expect(version.status == 0 && version.output.hasPrefix("martlet-vmm "))
        let help = try TestSupport.run(TestSupport.vmmBinary, ["--help"])
        #expect(help.status == 0)
        for flag in ["--config", "--kernel", "--disk", "--control-socket", "selftest", "EXIT CODES"] {
            #expect(help.output.contains(flag), "--help lacks \(flag)")
        }
    }

    @Test func selftestPasses() throws {
        let result = try TestSupport.run(TestSupport.vmmBinary, ["selftest", "--json"], timeout: 30)
        #expect(result.status == 0, "\(result.output)")
        let report = try JSON(parsing: result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(report["passed"] == .bool(true))
    }

    @Test func badConfigIsRejectedNamingTheField() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("vm.json")
        try #"{"vcpus": 2, "memory_mib": "lots", "kernel": "/nonexistent"}"#.write(to: config, atomically: true, encoding: .utf8)
        let result = try TestSupport.run(TestSupport.vmmBinary, ["--config", config.path])
        #expect(result.status == 2)
        #expect(result.output.contains("memory_mib: expected an integer, got \"lots\""), "\(result.output)")

        try #"{"kernel": "/k", "disks": [{"path": "/d", "readonly": true}]}"#.write(to: config, atomically: true, encoding: .utf8)
        let unknown = try TestSupport.run(TestSupport.vmmBinary, ["--config", config.path])
        #expect(unknown.status == 2)
        #expect(unknown.output.contains("disks[0].readonly: unknown key"), "\(unknown.output)")

        let missingKernel = try TestSupport.run(TestSupport.vmmBinary, ["--kernel", directory.appendingPathComponent("nope").path])
        #expect(missingKernel.status == 2)
        #expect(missingKernel.output.contains("cannot open kernel"), "\(missingKernel.output)")
    }

    @Test func onRebootRestartStartsTheGuestAgain() throws {
        let elf = try TestSupport.guestELF.get()
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let disk = directory.appendingPathComponent("state.raw")
        try Data(count: 4096).write(to: disk)
        let result = try TestSupport.run(TestSupport.vmmBinary, [
            "--kernel", elf, "--cmdline", "test=reset-once", "--memory", "16", "--disk", disk.path,
            "--on-reboot", "restart", "--timeout", "20",
        ])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("first boot, resetting"))
        #expect(result.output.contains("second boot after reset"))
    }

    @Test func controlClientTalksToARunningVM() throws {
        let elf = try TestSupport.guestELF.get()
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = directory.appendingPathComponent("vm.sock").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestSupport.vmmBinary)
        process.arguments = ["--kernel", elf, "--cmdline", "test=halt", "--memory", "16", "--serial", "none", "--control-socket", socket, "--timeout", "20"]
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        var waited = 0
        while !FileManager.default.fileExists(atPath: socket) && waited < 200 {
            usleep(10_000)
            waited += 1
        }
        let state = try TestSupport.run(TestSupport.vmmBinary, ["control", socket, "state"])
        #expect(state.status == 0 && state.output.contains(#""state":"running""#), "\(state.output)")
        let bad = try TestSupport.run(TestSupport.vmmBinary, ["control", socket, "explode"])
        #expect(bad.status == 1 && bad.output.contains("unknown command"), "\(bad.output)")
        let stop = try TestSupport.run(TestSupport.vmmBinary, ["control", socket, "stop"])
        #expect(stop.status == 0, "\(stop.output)")
        process.waitUntilExit()
        #expect(process.terminationStatus == 4)
        #expect(!FileManager.default.fileExists(atPath: socket))
    }

    @Test func consoleInputReachesTheGuest() throws {
        let elf = try TestSupport.guestELF.get()
        let result = try TestSupport.run(TestSupport.vmmBinary, ["--kernel", elf, "--cmdline", "test=echo", "--memory", "16", "--timeout", "20"], input: "typed on the console\n")
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("echo: typed on the console"))
    }

    @Test func guestResetExitsWithCode3AndPowerOffWith0() throws {
        let elf = try TestSupport.guestELF.get()
        let reset = try TestSupport.run(TestSupport.vmmBinary, ["--kernel", elf, "--cmdline", "test=reset", "--memory", "16"])
        #expect(reset.status == 3, "\(reset.output)")
        #expect(reset.output.contains("resetting"))
        let serial = try TestSupport.run(TestSupport.vmmBinary, ["--kernel", elf, "--cmdline", "test=serial", "--memory", "16"])
        #expect(serial.status == 0, "\(serial.output)")
        #expect(serial.output.contains("hello from the martlet test guest"))
    }
}

struct ConfigTests {
    @Test func decodesTheDocumentedExample() throws {
        let text = """
            {
              "vcpus": 2,
              "memory_mib": 512,
              "kernel": "/var/lib/martlet/vm1/vmlinuz",
              "initrd": "/var/lib/martlet/vm1/initrd.img",
              "cmdline": "console=ttyS0 root=/dev/vda rw",
              "disks": [{"path": "/dev/vg0/vm1-root", "id": "root"}, {"path": "/srv/iso.raw", "read_only": true}],
              "rng": true,
              "serial": "file:/var/log/martlet/vm1.console",
              "on_reboot": "restart",
              "control_socket": "/run/martlet/vm1.sock"
            }
            """
        let config = try VMConfig(json: text, source: "vm.json")
        #expect(config.vcpus == 2 && config.memoryMiB == 512)
        #expect(config.disks == [VMConfig.Disk(path: "/dev/vg0/vm1-root", id: "root"), VMConfig.Disk(path: "/srv/iso.raw", readOnly: true)])
        #expect(config.serial == .file("/var/log/martlet/vm1.console"))
        #expect(config.onReboot == .restart)
        #expect(config.controlSocket == "/run/martlet/vm1.sock")
    }

    @Test func errorsNameTheFieldAndPosition() {
        #expect(throws: VMMError(.config, "vm.json: vcpus: 0 is out of range; use 1 to 64")) {
            try VMConfig(json: #"{"kernel": "k", "vcpus": 0}"#, source: "vm.json")
        }
        #expect(throws: VMMError(.config, "vm.json: JSON 2:3: expected a string key")) {
            try VMConfig(json: "{\n  ,}", source: "vm.json")
        }
        #expect(throws: VMMError(.config, "vm.json: on_reboot: \"never\" is not one of \"exit\", \"restart\"")) {
            try VMConfig(json: #"{"kernel": "k", "on_reboot": "never"}"#, source: "vm.json")
        }
    }

    @Test func jsonRoundTrip() throws {
        let value = try JSON(parsing: #"{"a": [1, 2.5, "x\n\u0041"], "b": {"c": null, "d": false}}"#)
        #expect(value.text == #"{"a":[1,2.5,"x\nA"],"b":{"c":null,"d":false}}"#)
        #expect(try JSON(parsing: value.text) == value)
        #expect(throws: VMMError.self) { try JSON(parsing: #"{"a": 1} x"#) }
        #expect(throws: VMMError.self) { try JSON(parsing: String(repeating: "[", count: 100)) }
    }
}
