@testable import MartletVMMProtocol
import Testing

@testable import MartletVMM

/// The host and the VMM share one model of what they say to each other; these check its
/// JSON coding both ways.
struct ProtocolTests {
    static var everyKeySet: VMConfig {
        var config = VMConfig()
        config.vcpus = 3
        config.memoryMiB = 768
        config.kernel = "/k/vmlinuz"
        config.initrd = "/k/initrd \"quoted\" \\ é"
        config.cmdline = "console=ttyS0 root=/dev/vda"
        config.disks = [VMConfig.Disk(path: "/dev/vg/root", readOnly: true, id: "root"), VMConfig.Disk(path: "/d2", cache: .none)]
        config.nics = [VMConfig.NIC(tap: "mtap0", mac: "52:54:00:aa:bb:cc"), VMConfig.NIC(tap: "mtap1")]
        config.rng = true
        config.serial = .socket("/run/vm/serial.sock")
        config.serialLog = "/var/log/vm.log"
        config.onReboot = .restart
        config.controlSocket = "/run/vm/control.sock"
        config.apStart = .entry
        return config
    }

    @Test func configRoundTripsThroughJSON() throws {
        let config = Self.everyKeySet
        let decoded = try VMConfig(json: config.json.text, source: "written")
        #expect(decoded == config)
        // Every key the decoder knows is written, so nothing set on the host side is lost.
        guard case .object(let members) = config.json else {
            Issue.record("not an object: \(config.json.text)")
            return
        }
        // "firmware" excludes "kernel": that boot is round-tripped on its own below.
        #expect(Set(members.map(\.0)).union(["firmware"]) == Set(VMConfig.fields.map(\.key)))
        var firmwareBoot = config
        firmwareBoot.kernel = ""
        firmwareBoot.firmware = "/usr/share/seabios/bios-microvm.bin"
        #expect(try VMConfig(json: firmwareBoot.json.text, source: "firmware") == firmwareBoot)
        #expect(try VMConfig(json: VMConfig.minimal.json.text, source: "minimal") == VMConfig.minimal)
    }

    @Test func unknownKeysAreRefusedNamingThem() {
        #expect(throws: ProtocolError("vm.json: firmwre: unknown key; known keys: \(VMConfig.fields.map(\.key).sorted().joined(separator: ", "))")) {
            try VMConfig(json: #"{"kernel": "k", "firmwre": "/x"}"#, source: "vm.json")
        }
        #expect(throws: ProtocolError("vm.json: nics[1].bridge: unknown key; known keys: mac, queues, tap")) {
            try VMConfig(json: #"{"kernel": "k", "nics": [{"tap": "a"}, {"tap": "b", "bridge": "br0"}]}"#, source: "vm.json")
        }
        #expect(throws: ProtocolError("vm.json: disks[0].read_only: expected true or false, got \"yes\"")) {
            try VMConfig(json: #"{"kernel": "k", "disks": [{"path": "/d", "read_only": "yes"}]}"#, source: "vm.json")
        }
        #expect(throws: ProtocolError("vm.json: disks[0].cache: \"unsafe\" is not one of \"writeback\", \"none\"")) {
            try VMConfig(json: #"{"kernel": "k", "disks": [{"path": "/d", "cache": "unsafe"}]}"#, source: "vm.json")
        }
    }

    @Test func controlRequestsAndReplies() throws {
        for request in ControlRequest.allCases {
            #expect(try ControlRequest(line: request.json.text) == request)
        }
        #expect(throws: ProtocolError("unknown command 'reboot'; use info, state, pause, resume, shutdown, stop")) {
            try ControlRequest(line: #"{"command": "reboot"}"#)
        }
        let info = ControlReply(
            state: .paused,
            info: ControlReply.Info(vcpus: 2, memoryMiB: 64, kernel: "/k", disks: ["/d"], nics: ["t0"], portIOExits: 9, deviceErrors: ["bad"],
                devices: [
                    ControlReply.Device(kind: "blk", requests: 3, bytes: 4096, notifications: 2, notifyExits: 1, interrupts: 2, engine: "io_uring"),
                    ControlReply.Device(kind: "rng", requests: 1, bytes: 64, notifications: 1, notifyExits: 0, interrupts: 1),
                    ControlReply.Device(kind: "net", requests: 0, bytes: 0, notifications: 0, notifyExits: 0, interrupts: 0, engine: "vhost-net"),
                ]))
        #expect(try ControlReply(line: info.json.text) == info)
        #expect(info.info?.devices[0].json["engine"] == .string("io_uring"), "a disk names its engine")
        #expect(info.info?.devices[1].json["engine"] == nil, "a device without an engine has no engine key")
        #expect(info.info?.devices[2].json["engine"] == .string("vhost-net"), "a NIC names its engine")
        #expect(info.json["memory_mib"] == .number(64), "info members sit next to ok and state")
        #expect(throws: ProtocolError.self, "a device counter of the wrong type is refused") {
            try ControlReply(line: #"{"ok": true, "devices": [{"kind": "blk", "requests": "many"}]}"#)
        }
        let refused = ControlReply(error: "no")
        #expect(try ControlReply(line: refused.json.text) == refused)
        #expect(throws: ProtocolError("state: \"sleeping\" is not one of \"created\", \"running\", \"paused\", \"stopped\"")) {
            try ControlReply(line: #"{"ok": true, "state": "sleeping"}"#)
        }
    }

    @Test func exitCodesAreTheDocumentedOnes() throws {
        let help = try TestSupport.run(TestSupport.vmmBinary, ["--help"])
        let documented = help.output.split(separator: "\n").drop { !$0.contains("EXIT CODES") }
            .compactMap { Int32($0.split(separator: " ").first ?? "") }
        #expect(documented == VMMExitCode.allCases.map(\.rawValue), "--help documents exit codes \(documented)")
        #expect(Machine.virtioIRQs.count == VMConfig.maxVirtioDevices)
    }
}

extension VMConfig {
    /// Only the one required key.
    static var minimal: VMConfig {
        var config = VMConfig()
        config.kernel = "/k"
        return config
    }
}
