import Foundation
import MartletAnswer
import MartletCore

/// systemd-networkd files for the management bridge `br0` over the chosen NIC (optionally
/// through a VLAN); VMs' tap devices join `br0`.
public struct NetworkConfiguration: Sendable {
    public var answer: AnswerFile.NetworkAnswer

    public init(answer: AnswerFile.NetworkAnswer) { self.answer = answer }

    /// File name → contents, for /etc/systemd/network.
    public var files: [(String, String)] {
        let header = "# written by martlet-installer\n"
        var files: [(String, String)] = []
        files.append(("10-martlet-br0.netdev", header + "[NetDev]\nName=br0\nKind=bridge\n"))
        let match: String =
            switch answer.interface {
            case .name(let name): "Name=\(name)"
            case .mac(let mac): "PermanentMACAddress=\(mac)"
            }
        if let vlan = answer.vlan {
            let vlanName = "vlan\(vlan)"
            files.append(
                (
                    "15-martlet-\(vlanName).netdev",
                    header + "[NetDev]\nName=\(vlanName)\nKind=vlan\n\n[VLAN]\nId=\(vlan)\n"
                ))
            files.append(
                (
                    "20-martlet-uplink.network",
                    header
                        + "[Match]\n\(match)\n\n[Network]\nVLAN=\(vlanName)\nLinkLocalAddressing=no\n"
                ))
            files.append(
                (
                    "25-martlet-\(vlanName).network",
                    header + "[Match]\nName=\(vlanName)\n\n[Network]\nBridge=br0\n"
                ))
        } else {
            files.append(
                (
                    "20-martlet-uplink.network",
                    header + "[Match]\n\(match)\n\n[Network]\nBridge=br0\n"
                ))
        }
        var network = header + "[Match]\nName=br0\n\n[Network]\n"
        switch (answer.mode, answer.ipv6) {
        case (.dhcp, .auto): network += "DHCP=yes\n"
        case (.dhcp, _): network += "DHCP=ipv4\n"
        case (.static, _): break
        }
        if answer.mode == .static, let address = answer.address {
            network += "Address=\(address)\n"
            if let gateway = answer.gateway { network += "Gateway=\(gateway)\n" }
        }
        switch answer.ipv6 {
        case .auto: network += "IPv6AcceptRA=yes\n"
        case .off: network += "IPv6AcceptRA=no\nLinkLocalAddressing=no\n"
        case .address(let address):
            network += "Address=\(address)\nIPv6AcceptRA=no\n"
            if let gateway = answer.ipv6Gateway { network += "Gateway=\(gateway)\n" }
        }
        for server in answer.dns { network += "DNS=\(server)\n" }
        files.append(("30-martlet-br0.network", network))
        return files
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

    public static func grubConfig(rootUUID: String, kernelVersion: String) -> String {
        """
        # written by martlet-installer
        serial --unit=0 --speed=115200
        terminal_input console serial
        terminal_output console serial
        set timeout=3
        set default=0
        insmod part_gpt
        insmod ext2
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
