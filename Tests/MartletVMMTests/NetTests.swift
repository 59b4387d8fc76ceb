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

    @Test(.enabled(if: available)) func arpRoundTripThroughATapInANamespace() throws {
        let namespace = "martlet-vmm-\(getpid())"
        let elf = try TestSupport.guestELF.get()
        try #require(TestSupport.run(Self.ip, ["netns", "add", namespace]).status == 0)
        defer { _ = try? TestSupport.run(Self.ip, ["netns", "del", namespace]) }
        let sysctl = try TestSupport.run(Self.ip, ["netns", "exec", namespace, "/sbin/sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
        #expect(sysctl.status == 0, "no IPv6 neighbour discovery on the test link: \(sysctl.output)")
        for command in [
            ["tuntap", "add", "dev", "mtap0", "mode", "tap", "vnet_hdr"],
            ["addr", "add", "10.77.0.1/24", "dev", "mtap0"],
            ["link", "set", "mtap0", "up"],
        ] {
            let result = try TestSupport.run(Self.ip, ["-n", namespace] + command)
            try #require(result.status == 0, "ip \(command.joined(separator: " ")): \(result.output)")
        }
        let before = try tapReceived(namespace)
        let run = try TestSupport.run(Self.ip, [
            "netns", "exec", namespace, TestSupport.vmmBinary, "--kernel", elf, "--cmdline", "test=net",
            "--memory", "16", "--net", "mtap0,mac=52:54:00:aa:bb:cc", "--timeout", "20",
        ])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("net mac: 52:54:00:aa:bb:cc"))
        #expect(run.output.contains("net rx: arp reply from 10.77.0.1"), "\(run.output)")
        let after = try tapReceived(namespace)
        // The guest's ARP requests (it asks again when a reply is lost), vnet header stripped by the tap.
        #expect(after.packets > before.packets)
        #expect(after.bytes - before.bytes == 42 * (after.packets - before.packets))
    }

    @Test func badNICConfigIsRejected() {
        #expect(throws: ProtocolError("vm.json: nics[0].mac: 'zz' is not a MAC address like 52:54:00:12:34:56")) {
            try VMConfig(json: #"{"kernel": "k", "nics": [{"tap": "tap0", "mac": "zz"}]}"#, source: "vm.json")
        }
        #expect(throws: ProtocolError.self) { try VMConfig(json: #"{"kernel": "k", "nics": [{"tap": "much-too-long-name"}]}"#, source: "vm.json") }
    }
}
