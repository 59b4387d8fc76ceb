import Foundation
import Testing

import MartletSystem
import MartletVMMProtocol
import Synchronization

@testable import MartletVMM

/// A raw client of the control socket: one line out (any text, to test refusals), one
/// reply line back.
func control(_ path: String, line: String) throws -> ControlReply {
    let socket = try UnixSocket.connect(path)
    socket.setTimeouts(receive: 10)
    #expect(socket.writeAll((line + "\n").utf8))
    var reply: [UInt8] = []
    var byte = [UInt8](repeating: 0, count: 1)
    while socket.read(into: &byte) == 1 && byte[0] != 0x0A { reply.append(byte[0]) }
    return try ControlReply(line: String(decoding: reply, as: UTF8.self))
}

func control(_ path: String, _ request: ControlRequest) throws -> ControlReply {
    try control(path, line: request.json.text)
}

@Suite(.serialized, .timeLimit(.minutes(30)))
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

        let outcome = Mutex<Machine.Exit?>(nil)
        let runner = Thread { outcome.withLock { $0 = try? machine.run(timeout: 30) } }
        runner.start()
        defer { machine.stop() }

        #expect(Poll.until(timeout: 10) { machine.portIOExits >= 1000 }, "the guest did not start")
        #expect(try control(socketPath, .state).state == .running)
        #expect(try control(socketPath, .pause).state == .paused)
        // `pause` answers once every vCPU is parked, so from then on not one more exit may
        // happen: the guest makes thousands a millisecond when it runs, and the info round
        // trip below is the window (no sleep: a parked vCPU cannot catch up later).
        let pausedAt = machine.portIOExits
        let info = try control(socketPath, .info)
        #expect(info.info?.vcpus == 1)
        #expect(info.state == .paused)
        #expect(machine.portIOExits == pausedAt, "the guest kept running while paused")
        #expect(try control(socketPath, .resume).state == .running)
        #expect(Poll.until(timeout: 10) { machine.portIOExits > pausedAt }, "the guest did not resume")
        let bogus = try control(socketPath, line: #"{"command": "bogus"}"#)
        #expect(!bogus.ok && bogus.error?.contains("unknown command 'bogus'") == true, "\(bogus)")
        _ = try control(socketPath, .stop)
        #expect(Poll.until(timeout: 10) { runner.isFinished }, "the VM did not stop")
        #expect(outcome.withLock { $0 } == .stopped)
    }
}

/// The martlet-vmm executable itself: flags, config errors, exit codes, selftest.
@Suite(.serialized, .timeLimit(.minutes(30)))
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
        #expect(missingKernel.output.contains("kernel: cannot use"), "\(missingKernel.output)")
        #expect(missingKernel.output.contains("No such file or directory"), "\(missingKernel.output)")
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
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        let pid = try ChildProcess.spawn(
            [TestSupport.vmmBinary, "--kernel", elf, "--cmdline", "test=halt", "--memory", "16", "--serial", "none", "--control-socket", socket, "--timeout", "20"],
            stdin: null.raw, stdout: null.raw, stderr: null.raw)
        var ended: ChildProcess.Termination?
        defer { if ended == nil { kill(pid, SIGKILL); _ = ChildProcess.wait(pid) } }
        #expect(Poll.until(timeout: 10) { FileManager.default.fileExists(atPath: socket) }, "no control socket")
        let state = try TestSupport.controlState(socket)
        #expect(state.status == 0 && state.output.contains(#""state":"running""#), "\(state.output)")
        let bad = try TestSupport.run(TestSupport.vmmBinary, ["control", socket, "explode"])
        #expect(bad.status == 1 && bad.output.contains("unknown command"), "\(bad.output)")
        let stop = try TestSupport.run(TestSupport.vmmBinary, ["control", socket, "stop"])
        #expect(stop.status == 0, "\(stop.output)")
        #expect(Poll.until(timeout: 10) { ended = ChildProcess.termination(pid); return ended != nil }, "the VMM did not end")
        #expect(ended == .exited(VMMExitCode.stopped.rawValue))
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
        #expect(throws: ProtocolError("vm.json: vcpus: 0 is out of range; use 1 to 64")) {
            try VMConfig(json: #"{"kernel": "k", "vcpus": 0}"#, source: "vm.json")
        }
        #expect(throws: ProtocolError("vm.json: JSON 2:3: expected a string key")) {
            try VMConfig(json: "{\n  ,}", source: "vm.json")
        }
        #expect(throws: ProtocolError("vm.json: on_reboot: \"never\" is not one of \"exit\", \"restart\"")) {
            try VMConfig(json: #"{"kernel": "k", "on_reboot": "never"}"#, source: "vm.json")
        }
    }

    @Test func jsonRoundTrip() throws {
        let value = try JSON(parsing: #"{"a": [1, 2.5, "x\n\u0041"], "b": {"c": null, "d": false}}"#)
        #expect(value.text == #"{"a":[1,2.5,"x\nA"],"b":{"c":null,"d":false}}"#)
        #expect(try JSON(parsing: value.text) == value)
        #expect(throws: ProtocolError.self) { try JSON(parsing: #"{"a": 1} x"#) }
        #expect(throws: ProtocolError.self) { try JSON(parsing: String(repeating: "[", count: 100)) }
    }
}
