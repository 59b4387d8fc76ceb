import Foundation
import Testing

import MartletSystem
import MartletVMMProtocol

@testable import MartletVMM

/// virtio-net against a real tap inside a network namespace this test creates (and deletes).
@Suite(.serialized)
struct NetTests {
    static let available = FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip")
    static var ip: String { FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip" }

    /// Bytes and packets the tap received from the guest (the host side of the wire).
    func tapReceived(_ namespace: String) throws -> (bytes: Int, packets: Int) {
        let stats = try TestSupport.run(Self.ip, ["-n", namespace, "-j", "-s", "link", "show", "mtap0"])
        let json = try JSON(parsing: stats.output.trimmingCharacters(in: .whitespacesAndNewlines))
        guard case .array(let links) = json, case .number(let bytes)? = links.first?["stats64"]?["rx"]?["bytes"],
            case .number(let packets)? = links.first?["stats64"]?["rx"]?["packets"]
        else { throw VMMError(.io, "unexpected ip -j output: \(stats.output)") }
        return (Int(bytes), Int(packets))
    }

    /// The engine `--stats` reports for the (only) NIC.
    func engine(in output: String) -> String? {
        output.split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix("{"), let json = try? JSON(parsing: String(line)), case .array(let devices)? = json["devices"] else { return nil }
            return devices.compactMap { device -> String? in
                guard case .string("net")? = device["kind"], case .string(let engine)? = device["engine"] else { return nil }
                return engine
            }.first
        }.first
    }

    /// Boots the test guest's ARP exchange over a tap in a fresh namespace, with `environment`
    /// for the VMM; returns its output and the tap's receive counters before and after.
    func arpRoundTrip(environment: [String] = [], nicOptions: String = "", multiQueue: Bool = false) throws -> (run: (status: Int32, output: String), before: (bytes: Int, packets: Int), after: (bytes: Int, packets: Int)) {
        // Unique per call: a parameterized test's cases may run at the same time.
        let namespace = "martlet-vmm-\(getpid())-\(UUID().uuidString.prefix(8))"
        let elf = try TestSupport.guestELF.get()
        try #require(TestSupport.run(Self.ip, ["netns", "add", namespace]).status == 0)
        defer { _ = try? TestSupport.run(Self.ip, ["netns", "del", namespace]) }
        let sysctl = try TestSupport.run(Self.ip, ["netns", "exec", namespace, "/sbin/sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
        #expect(sysctl.status == 0, "no IPv6 neighbour discovery on the test link: \(sysctl.output)")
        for command in [
            ["tuntap", "add", "dev", "mtap0", "mode", "tap", "vnet_hdr"] + (multiQueue ? ["multi_queue"] : []),
            ["addr", "add", "10.77.0.1/24", "dev", "mtap0"],
            ["link", "set", "mtap0", "up"],
        ] {
            let result = try TestSupport.run(Self.ip, ["-n", namespace] + command)
            try #require(result.status == 0, "ip \(command.joined(separator: " ")): \(result.output)")
        }
        let before = try tapReceived(namespace)
        let run = try TestSupport.run(Self.ip, [
            "netns", "exec", namespace, "/usr/bin/env"] + environment + [TestSupport.vmmBinary, "--kernel", elf, "--cmdline", "test=net",
            "--memory", "16", "--net", "mtap0,mac=52:54:00:aa:bb:cc\(nicOptions)", "--timeout", "20", "--stats",
        ])
        return (run, before, try tapReceived(namespace))
    }

    @Test(.enabled(if: available)) func arpRoundTripThroughATapInANamespace() throws {
        let (run, before, after) = try arpRoundTrip()
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("net mac: 52:54:00:aa:bb:cc"))
        #expect(run.output.contains("net rx: arp reply from 10.77.0.1"), "\(run.output)")
        // The guest's ARP requests (it asks again when a reply is lost), vnet header stripped by the tap.
        #expect(after.packets > before.packets)
        #expect(after.bytes - before.bytes == 42 * (after.packets - before.packets))
        let vhost = FileManager.default.fileExists(atPath: VhostNet.defaultPath)
        #expect(engine(in: run.output) == (vhost ? "vhost-net" : "userspace"), "\(run.output)")
        if !vhost {
            #expect(run.output.contains("martlet-vmm: cannot open '/dev/vhost-net': (2) No such file or directory; virtio-net runs in userspace"), "\(run.output)")
        }
    }

    /// Two queue pairs on a multi-queue tap, with seccomp on: the test guest's driver takes
    /// neither MQ nor the control queue, so it runs on the first pair, and the second pair's
    /// tap queue stays detached (else the tap could steer the ARP reply to a receive queue
    /// the guest never filled). A multi-queue tap also serves a NIC of one pair.
    @Test(.enabled(if: available), arguments: [",queues=2", ""])
    func arpRoundTripOnAMultiQueueTap(nicOptions: String) throws {
        let (run, before, after) = try arpRoundTrip(nicOptions: nicOptions, multiQueue: true)
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("net rx: arp reply from 10.77.0.1"), "\(run.output)")
        #expect(after.packets > before.packets)
    }

    /// A vhost-net path that is not vhost-net (debug builds take one from the environment) is
    /// refused with a line naming it, and the NIC works on the userspace engine.
    @Test(.enabled(if: available), arguments: [
        ("regular-file", "is not a character device; vhost-net is /dev/vhost-net, made by the vhost_net module"),
        ("/dev/null", "VHOST_SET_OWNER on '/dev/null' failed:"),
    ])
    func wrongVhostDeviceFallsBackToUserspace(path: String, complaint: String) throws {
        let work = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: work) }
        let file = work.appendingPathComponent(path)
        if !path.hasPrefix("/") { try Data("not a device".utf8).write(to: file) }
        let device = path.hasPrefix("/") ? path : file.path
        let (run, before, after) = try arpRoundTrip(environment: ["MARTLET_VMM_TEST_VHOST_NET=\(device)"])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("'\(device)'") && run.output.contains(complaint) && run.output.contains("virtio-net runs in userspace"), "\(run.output)")
        #expect(run.output.contains("net rx: arp reply from 10.77.0.1"), "\(run.output)")
        #expect(after.packets > before.packets)
        #expect(engine(in: run.output) == "userspace", "\(run.output)")
    }

    @Test func badNICConfigIsRejected() {
        #expect(throws: ProtocolError("vm.json: nics[0].mac: 'zz' is not a MAC address like 52:54:00:12:34:56")) {
            try VMConfig(json: #"{"kernel": "k", "nics": [{"tap": "tap0", "mac": "zz"}]}"#, source: "vm.json")
        }
        #expect(throws: ProtocolError.self) { try VMConfig(json: #"{"kernel": "k", "nics": [{"tap": "much-too-long-name"}]}"#, source: "vm.json") }
    }
}
