import Foundation
import MartletAnswer
import MartletCore

/// systemd-networkd files for the management bridge `br0` over the chosen NIC or a bond of
/// NICs (`bond0`), optionally through a VLAN; VMs' tap devices join `br0`.
public struct NetworkConfiguration: Sendable {
    public var answer: AnswerFile.NetworkAnswer
    /// The NICs under the bridge or bond, by name or MAC (`NICSelection.ports`).
    public var ports: [InterfaceSelector]

    public static let bondName = "bond0"

    public init(answer: AnswerFile.NetworkAnswer, ports: [InterfaceSelector]) {
        self.answer = answer
        self.ports = ports
    }

    /// A unit file: sections of keys in order, blank lines between sections.
    static func unit(_ sections: [(String, [(String, String)])]) -> String {
        "# written by martlet-installer\n"
            + sections.filter { !$0.1.isEmpty }.map { name, keys in
                "[\(name)]\n" + keys.map { "\($0)=\($1)\n" }.joined()
            }.joined(separator: "\n")
    }

    /// File name → contents, for /etc/systemd/network.
    public var files: [(String, String)] {
        let mtu = answer.mtu.map { [("MTUBytes", String($0))] } ?? []
        var files: [(String, String)] = []
        files.append(
            ("10-martlet-br0.netdev", Self.unit([("NetDev", [("Name", "br0"), ("Kind", "bridge")] + mtu)])))
        let vlanName = answer.vlan.map { "vlan\($0)" }
        // What the NICs (or the bond) carry: the VLAN, or the bridge itself.
        let upper: [(String, String)] =
            vlanName.map { [("VLAN", $0), ("LinkLocalAddressing", "no")] } ?? [("Bridge", "br0")]
        func match(_ port: InterfaceSelector) -> (String, String) {
            switch port {
            case .mac(let mac): ("PermanentMACAddress", mac)
            case .name(let name): ("Name", name)
            case .filter: preconditionFailure("ports are resolved to names or MACs by NICSelection")
            }
        }
        if let bond = answer.bond {
            var settings = [("Mode", bond.mode.rawValue)]
            if let rate = bond.lacpRate { settings.append(("LACPTransmitRate", rate.rawValue)) }
            settings.append(("MIIMonitorSec", "\(bond.miimon)ms"))
            files.append(
                (
                    "12-martlet-\(Self.bondName).netdev",
                    Self.unit([
                        ("NetDev", [("Name", Self.bondName), ("Kind", "bond")] + mtu), ("Bond", settings),
                    ])
                ))
            for (index, port) in ports.enumerated() {
                files.append(
                    (
                        "20-martlet-\(Self.bondName)-port\(index + 1).network",
                        Self.unit([
                            ("Match", [match(port)]), ("Link", mtu),
                            ("Network", [("Bond", Self.bondName)]),
                        ])
                    ))
            }
            files.append(
                (
                    "22-martlet-\(Self.bondName).network",
                    Self.unit([
                        ("Match", [("Name", Self.bondName)]), ("Link", mtu), ("Network", upper),
                    ])
                ))
        } else if let port = ports.first {
            files.append(
                (
                    "20-martlet-uplink.network",
                    Self.unit([("Match", [match(port)]), ("Link", mtu), ("Network", upper)])
                ))
        }
        if let vlan = answer.vlan, let vlanName {
            files.append(
                (
                    "15-martlet-\(vlanName).netdev",
                    Self.unit([
                        ("NetDev", [("Name", vlanName), ("Kind", "vlan")] + mtu),
                        ("VLAN", [("Id", String(vlan))]),
                    ])
                ))
            files.append(
                (
                    "25-martlet-\(vlanName).network",
                    Self.unit([
                        ("Match", [("Name", vlanName)]), ("Link", mtu),
                        ("Network", [("Bridge", "br0")]),
                    ])
                ))
        }
        var network: [(String, String)] = []
        switch (answer.mode, answer.ipv6) {
        case (.dhcp, .auto): network.append(("DHCP", "yes"))
        case (.dhcp, _): network.append(("DHCP", "ipv4"))
        case (.static, _): break
        }
        if answer.mode == .static, let address = answer.address {
            network.append(("Address", address))
            if let gateway = answer.gateway { network.append(("Gateway", gateway)) }
        }
        switch answer.ipv6 {
        case .auto: network.append(("IPv6AcceptRA", "yes"))
        case .off: network += [("IPv6AcceptRA", "no"), ("LinkLocalAddressing", "no")]
        case .address(let address):
            network += [("Address", address), ("IPv6AcceptRA", "no")]
            if let gateway = answer.ipv6Gateway { network.append(("Gateway", gateway)) }
        }
        for server in answer.dns { network.append(("DNS", server)) }
        files.append(
            (
                "30-martlet-br0.network",
                Self.unit([("Match", [("Name", "br0")]), ("Link", mtu), ("Network", network)])
            ))
        return files.sorted { $0.0 < $1.0 }
    }
}

extension InstallPlan.StoragePool {
    /// The pool as a `[[pool]]` table of /etc/martlet/storage.toml.
    public var configuration: StorageConfiguration.Pool {
        StorageConfiguration.Pool(
            name: name, type: type == .lvmThin ? .lvmThin : .directory, device: device,
            volumeGroup: volumeGroup, thinPool: thinPool, filesystem: filesystem, path: path)
    }
}

/// The installed host's GRUB menu: root by UUID, console on screen and serial.
public enum BootConfiguration {
    public static let kernelArguments = "console=tty0 console=ttyS0,115200n8"

    /// `raid`: the root is on an md array, which GRUB reads with its mdraid1x module.
    public static func grubConfig(rootUUID: String, kernelVersion: String, raid: Bool = false) -> String {
        """
        # written by martlet-installer
        serial --unit=0 --speed=115200
        terminal_input console serial
        terminal_output console serial
        set timeout=3
        set default=0
        insmod part_gpt
        insmod ext2\(raid ? "\ninsmod mdraid1x" : "")
        search --no-floppy --fs-uuid --set=root \(rootUUID)
        menuentry 'Martlet' {
            linux /boot/vmlinuz-\(kernelVersion) root=UUID=\(rootUUID) ro \(kernelArguments)
            initrd /boot/initrd.img-\(kernelVersion)
        }
        menuentry 'Martlet (recovery)' {
            linux /boot/vmlinuz-\(kernelVersion) root=UUID=\(rootUUID) ro single \(kernelArguments)
            initrd /boot/initrd.img-\(kernelVersion)
        }

        """
    }
}

/// Disks as a table for people.
public enum DiskListing {
    public static func text(_ disks: [Disk]) -> String {
        var lines = [
            "DEVICE           SIZE       TRANSPORT  MODEL / SERIAL                  CONTENT"
        ]
        for disk in disks {
            func pad(_ s: String, _ n: Int) -> String {
                s.padding(toLength: max(n, s.count + 1), withPad: " ", startingAt: 0)
            }
            var flags: [String] = []
            if disk.isBootMedium { flags.append("BOOT MEDIUM") }
            if !disk.allMountpoints.isEmpty {
                flags.append("mounted: " + disk.allMountpoints.joined(separator: ","))
            }
            let holders = disk.holders + disk.partitions.flatMap(\.holders)
            if !holders.isEmpty {
                flags.append("held by " + holders.map(\.name).joined(separator: ","))
            }
            if disk.removable { flags.append("removable") }
            let identity = "\(disk.model ?? "-") / \(disk.serial ?? "-")"
            lines.append(
                pad(disk.path, 17) + pad(disk.size.description, 11) + pad(disk.transport, 11)
                    + pad(identity, 32) + disk.contentSummary
                    + (flags.isEmpty ? "" : "  [\(flags.joined(separator: "; "))]"))
            for part in disk.partitions {
                let sigs = part.signatures.map { s in s.label.map { "\(s.type) '\($0)'" } ?? s.type
                }
                lines.append(
                    "  " + pad(part.path, 15) + pad(part.size.description, 11)
                        + sigs.joined(separator: ", "))
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
