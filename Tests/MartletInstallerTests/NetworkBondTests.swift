import Foundation
import MartletAnswer
import MartletCore
import Testing

@testable import MartletInstaller

/// A networkd file read back: its sections in order, each with its keys in order.
private func sections(_ text: String) -> [(String, [String])] {
    var result: [(String, [String])] = []
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        if line.hasPrefix("[") && line.hasSuffix("]") {
            result.append((String(line.dropFirst().dropLast()), []))
        } else {
            precondition(!result.isEmpty && line.contains("="), "stray line '\(line)'")
            result[result.count - 1].1.append(String(line))
        }
    }
    return result
}

/// A /sys/class/net and /run/udev/data fixture: two NICs on one card, a third elsewhere, and
/// a bridge and loopback (no `device` link) that are not NICs.
private func fixture() throws -> (root: String, discovery: NICDiscovery) {
    let root = FileManager.default.temporaryDirectory
        .appendingPathComponent("martlet-nics-\(UUID().uuidString)").path
    let net = root + "/sys/class/net"
    let udev = root + "/run/udev/data"
    try FileManager.default.createDirectory(atPath: udev, withIntermediateDirectories: true)
    let nics = [
        ("enp1s0f0", "52:54:00:aa:00:01", 2, "pci-0000:01:00.0"),
        ("enp1s0f1", "52:54:00:AA:00:02", 3, "pci-0000:01:00.1"),
        ("eno1", "52:54:00:aa:00:03", 4, "pci-0000:00:19.0"),
    ]
    for (name, mac, index, path) in nics {
        let directory = "\(net)/\(name)"
        try FileManager.default.createDirectory(
            atPath: directory + "/device", withIntermediateDirectories: true)
        try "\(mac)\n".write(toFile: directory + "/address", atomically: true, encoding: .utf8)
        try "\(index)\n".write(toFile: directory + "/ifindex", atomically: true, encoding: .utf8)
        try "INTERFACE=\(name)\nIFINDEX=\(index)\n".write(
            toFile: directory + "/uevent", atomically: true, encoding: .utf8)
        let short = name.replacingOccurrences(of: "s0f", with: "s")
        try "I:123\nE:ID_NET_NAME_PATH=\(short)\nE:ID_PATH=\(path)\nE:ID_NET_DRIVER=ixgbe\nG:systemd\n"
            .write(toFile: "\(udev)/n\(index)", atomically: true, encoding: .utf8)
    }
    for name in ["br0", "lo"] {
        try FileManager.default.createDirectory(atPath: "\(net)/\(name)", withIntermediateDirectories: true)
        try "00:00:00:00:00:00\n".write(toFile: "\(net)/\(name)/address", atomically: true, encoding: .utf8)
    }
    return (root, NICDiscovery(sysNet: net, udevData: udev))
}

private func network(_ body: String) throws -> AnswerFile.NetworkAnswer {
    let text = validAnswer().replacingOccurrences(
        of: "[network]\ninterface = \"52:54:00:12:34:56\"", with: body + "\n[network]")
    return try AnswerFile.parse(path: "answer.toml", contents: text).network
}

@Suite("Management network: bonds, VLANs, MTU, NICs by udev property")
struct NetworkBondTests {
    @Test("NICs come from /sys/class/net with their udev properties; bridges and loopback are left out")
    func discovery() throws {
        let (root, discovery) = try fixture()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let nics = discovery.nics()
        #expect(nics.map(\.name) == ["eno1", "enp1s0f0", "enp1s0f1"])
        #expect(nics[1].mac == "52:54:00:aa:00:01")
        #expect(nics[1].properties["ID_NET_NAME_PATH"] == "enp1s0")
        #expect(nics[1].properties["INTERFACE"] == "enp1s0f0")
        #expect(nics[1].properties["ID_PATH"] == "pci-0000:01:00.0")
        #expect(nics[1].matches([PropertyGlob(property: "ID_PATH", pattern: "pci-0000:01:*")]))
        #expect(!nics[0].matches([PropertyGlob(property: "ID_PATH", pattern: "pci-0000:01:*")]))
        #expect(!nics[1].matches([PropertyGlob(property: "NO_SUCH", pattern: "*")]))
    }

    @Test("an 802.3ad bond found by udev glob, tagged VLAN 42, MTU 9000: every networkd file and key")
    func lacpBondOverVLAN() throws {
        let (root, discovery) = try fixture()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let answer = try network(
            """
            [network.bond]
            mode = "802.3ad"
            lacp-rate = "fast"
            miimon = 200
            [network.bond.filter]
            ID_PATH = "pci-0000:01:00.*"
            ID_NET_DRIVER = "ixgbe"
            """
        )
        var withMTU = answer
        withMTU.mtu = 9000
        let ports = try NICSelection.ports(for: withMTU, nics: discovery.nics())
        #expect(ports == [.mac("52:54:00:aa:00:01"), .mac("52:54:00:aa:00:02")])
        let files = NetworkConfiguration(answer: withMTU, ports: ports).files
        #expect(
            files.map(\.0) == [
                "10-martlet-br0.netdev", "12-martlet-bond0.netdev", "15-martlet-vlan42.netdev",
                "20-martlet-bond0-port1.network", "20-martlet-bond0-port2.network",
                "22-martlet-bond0.network", "25-martlet-vlan42.network", "30-martlet-br0.network",
            ])
        let parsed = Dictionary(uniqueKeysWithValues: files.map { ($0.0, sections($0.1)) })
        func expectFile(_ name: String, _ expected: [(String, [String])]) {
            let actual = parsed[name] ?? []
            #expect(actual.map(\.0) == expected.map(\.0), "\(name)")
            #expect(actual.map(\.1) == expected.map(\.1), "\(name)")
        }
        expectFile("10-martlet-br0.netdev", [("NetDev", ["Name=br0", "Kind=bridge", "MTUBytes=9000"])])
        expectFile(
            "12-martlet-bond0.netdev",
            [
                ("NetDev", ["Name=bond0", "Kind=bond", "MTUBytes=9000"]),
                ("Bond", ["Mode=802.3ad", "LACPTransmitRate=fast", "MIIMonitorSec=200ms"]),
            ])
        expectFile(
            "15-martlet-vlan42.netdev",
            [("NetDev", ["Name=vlan42", "Kind=vlan", "MTUBytes=9000"]), ("VLAN", ["Id=42"])])
        for (index, mac) in ["52:54:00:aa:00:01", "52:54:00:aa:00:02"].enumerated() {
            expectFile(
                "20-martlet-bond0-port\(index + 1).network",
                [
                    ("Match", ["PermanentMACAddress=\(mac)"]), ("Link", ["MTUBytes=9000"]),
                    ("Network", ["Bond=bond0"]),
                ])
        }
        expectFile(
            "22-martlet-bond0.network",
            [
                ("Match", ["Name=bond0"]), ("Link", ["MTUBytes=9000"]),
                ("Network", ["VLAN=vlan42", "LinkLocalAddressing=no"]),
            ])
        expectFile(
            "25-martlet-vlan42.network",
            [("Match", ["Name=vlan42"]), ("Link", ["MTUBytes=9000"]), ("Network", ["Bridge=br0"])])
        expectFile(
            "30-martlet-br0.network",
            [
                ("Match", ["Name=br0"]), ("Link", ["MTUBytes=9000"]),
                (
                    "Network",
                    [
                        "Address=192.0.2.10/24", "Gateway=192.0.2.1", "Address=2001:db8::10/64",
                        "IPv6AcceptRA=no", "Gateway=2001:db8::1", "DNS=192.0.2.53", "DNS=2001:db8::53",
                    ]
                ),
            ])
    }

    @Test("an active-backup bond by name, no VLAN, default MTU: the bond joins the bridge")
    func activeBackupByName() throws {
        var answer = try network(
            """
            [network.bond]
            interfaces = ["eno1", "52:54:00:AA:00:02"]
            mode = "active-backup"
            """
        )
        answer.vlan = nil
        let (root, discovery) = try fixture()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let ports = try NICSelection.ports(for: answer, nics: discovery.nics())
        #expect(ports == [.name("eno1"), .mac("52:54:00:aa:00:02")])
        let files = Dictionary(
            uniqueKeysWithValues: NetworkConfiguration(answer: answer, ports: ports).files.map {
                ($0.0, sections($0.1))
            })
        #expect(files.keys.sorted() == [
            "10-martlet-br0.netdev", "12-martlet-bond0.netdev", "20-martlet-bond0-port1.network",
            "20-martlet-bond0-port2.network", "22-martlet-bond0.network", "30-martlet-br0.network",
        ])
        #expect(files["12-martlet-bond0.netdev"]?.last?.1 == ["Mode=active-backup", "MIIMonitorSec=100ms"])
        #expect(files["20-martlet-bond0-port1.network"]?.first?.1 == ["Name=eno1"])
        #expect(files["20-martlet-bond0-port2.network"]?.first?.1 == ["PermanentMACAddress=52:54:00:aa:00:02"])
        #expect(files["22-martlet-bond0.network"]?.last?.1 == ["Bridge=br0"])
        #expect(files["10-martlet-br0.netdev"]?.first?.1 == ["Name=br0", "Kind=bridge"])
    }

    @Test("one NIC by udev glob is matched by its MAC on the installed host")
    func singleNICByFilter() throws {
        let (root, discovery) = try fixture()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let answer = try network("[network.filter]\nID_NET_NAME_PATH = \"enp1s1\"")
        #expect(answer.interface == .filter([PropertyGlob(property: "ID_NET_NAME_PATH", pattern: "enp1s1")]))
        let ports = try NICSelection.ports(for: answer, nics: discovery.nics())
        #expect(ports == [.mac("52:54:00:aa:00:02")])
        let files = Dictionary(
            uniqueKeysWithValues: NetworkConfiguration(answer: answer, ports: ports).files.map {
                ($0.0, sections($0.1))
            })
        #expect(files["20-martlet-uplink.network"]?.map(\.1) == [
            ["PermanentMACAddress=52:54:00:aa:00:02"], ["VLAN=vlan42", "LinkLocalAddressing=no"],
        ])
    }

    @Test("refused at install time, naming the key", arguments: [
        ("[network.filter]\nID_NET_NAME_PATH = \"enp9s*\"", "network.filter: no NIC matches"),
        ("[network.filter]\nID_NET_NAME_PATH = \"enp1s*\"", "network.filter: ID_NET_NAME_PATH=enp1s* matches 2 NICs"),
        (
            "[network.bond]\nmode = \"802.3ad\"\n[network.bond.filter]\nID_NET_NAME_PATH = \"enp9s*\"",
            "network.bond.filter: no NIC matches"
        ),
        (
            "[network.bond]\nmode = \"802.3ad\"\n[network.bond.filter]\nID_NET_NAME_PATH = \"enp1s0\"",
            "network.bond.filter: a bond needs at least 2 NICs"
        ),
        (
            "[network.bond]\ninterfaces = [\"enp1s0f0\", \"52:54:00:aa:00:01\"]\nmode = \"balance-alb\"",
            "network.bond: NIC enp1s0f0 is chosen twice"
        ),
    ])
    func refusedAtInstallTime(body: String, message: String) throws {
        let (root, discovery) = try fixture()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let answer = try network(body)
        let error = #expect(throws: MartletError.self) {
            try NICSelection.ports(for: answer, nics: discovery.nics())
        }
        #expect(error?.message.contains(message) == true, "\(error?.message ?? "no error")")
    }

    @Test("bond and filter answers are written back as TOML that reads back the same")
    func roundTrip() throws {
        for body in [
            "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"802.3ad\"\nlacp-rate = \"slow\"\nmiimon = 50",
            "[network.bond]\nmode = \"balance-alb\"\n[network.bond.filter]\nID_PATH = \"pci-*\"\nID_NET_DRIVER = \"e1000e\"",
            "[network.filter]\nID_NET_NAME_PATH = \"enp1s*\"",
        ] {
            var answer = try AnswerFile.parse(
                path: "a.toml",
                contents: validAnswer().replacingOccurrences(
                    of: "[network]\ninterface = \"52:54:00:12:34:56\"", with: body + "\n[network]"))
            answer.network.mtu = 9000
            let again = try AnswerFile.parse(path: "b.toml", contents: answer.toml)
            #expect(again == answer, "\(answer.toml)")
        }
    }
}
