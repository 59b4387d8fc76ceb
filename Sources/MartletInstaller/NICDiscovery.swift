import Foundation
import MartletAnswer
import MartletCore

/// A physical NIC of this machine: its kernel name, MAC address and udev properties.
public struct NIC: Codable, Sendable, Equatable {
    public var name: String
    public var mac: String
    /// The kernel's uevent and the udev database's `E:` entries, e.g. `ID_NET_NAME_PATH`.
    public var properties: [String: String]

    public init(name: String, mac: String, properties: [String: String] = [:]) {
        self.name = name
        self.mac = mac
        self.properties = properties
    }

    /// Whether every glob matches the property it names (a missing property matches nothing).
    public func matches(_ globs: [PropertyGlob]) -> Bool {
        globs.allSatisfy { $0.matches(properties) }
    }
}

/// Finds the physical NICs in /sys/class/net (those with a `device` link: not loopback,
/// bridges, bonds or taps) with their udev properties from the udev database. Both roots can
/// be pointed at a fixture tree.
public struct NICDiscovery: Sendable {
    public var sysNet: String
    public var udevData: String

    public init(
        sysNet: String = "/sys/class/net", udevData: String = UdevDatabase.defaultDirectory
    ) {
        self.sysNet = sysNet
        self.udevData = udevData
    }

    /// The physical NICs, sorted by name.
    public func nics() -> [NIC] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: sysNet)) ?? []).sorted()
        return names.compactMap { name in
            let directory = "\(sysNet)/\(name)"
            guard FileManager.default.fileExists(atPath: "\(directory)/device") else { return nil }
            var properties = UdevDatabase.entries(
                SysfsAttribute.read("\(directory)/uevent") ?? "", prefix: "")
            if let index = SysfsAttribute.read("\(directory)/ifindex") {
                properties.merge(UdevDatabase.properties(file: "\(udevData)/n\(index)")) { $1 }
            }
            return NIC(
                name: name, mac: SysfsAttribute.read("\(directory)/address") ?? "",
                properties: properties)
        }
    }
}

/// udev's database of device properties (/run/udev/data/b8:0 for a block device,
/// n2 for the NIC of ifindex 2): `E:KEY=value` lines, written by udev as devices appear.
public enum UdevDatabase {
    public static let defaultDirectory = "/run/udev/data"

    /// The `E:` properties in `file`; empty when udev does not run or knows nothing.
    static func properties(file: String) -> [String: String] {
        entries(SysfsAttribute.read(file) ?? "", prefix: "E:")
    }

    /// The `KEY=value` lines of `text` that start with `prefix` (a kernel uevent has none).
    static func entries(_ text: String, prefix: String) -> [String: String] {
        var entries: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix(prefix) {
            let pair = line.dropFirst(prefix.count).split(separator: "=", maxSplits: 1)
            if pair.count == 2 { entries[String(pair[0])] = String(pair[1]) }
        }
        return entries
    }
}

/// Turns the answer's NIC selectors into the ports of the management network, each named or
/// matched by MAC as networkd will match it on the installed host. Names and MACs pass through
/// (the installed host may see NICs the live system has no driver for); a filter must match
/// NICs here, and no NIC may be chosen twice.
public enum NICSelection {
    public static func ports(
        for network: AnswerFile.NetworkAnswer, nics: [NIC]
    ) throws -> [InterfaceSelector] {
        let key = network.bond == nil ? "network" : "network.bond"
        let selectors = network.bond?.members ?? network.interface.map { [$0] } ?? []
        var ports: [InterfaceSelector] = []
        var chosenBy: [String: String] = [:]
        func choose(_ port: InterfaceSelector, nic: String, by selector: InterfaceSelector) throws {
            if let earlier = chosenBy[nic] {
                throw MartletError(
                    .invalidInput,
                    "\(key): NIC \(nic) is chosen twice, by '\(earlier)' and by '\(selector)'",
                    hint: "a NIC can have one role; drop one of them")
            }
            chosenBy[nic] = selector.description
            ports.append(port)
        }
        for selector in selectors {
            switch selector {
            case .name(let name):
                try choose(selector, nic: name, by: selector)
            case .mac(let mac):
                let nic = nics.first { $0.mac.lowercased() == mac }?.name ?? mac
                try choose(selector, nic: nic, by: selector)
            case .filter(let globs):
                let filterKey = "\(key).filter"
                let matches = nics.filter { $0.matches(globs) }
                guard !matches.isEmpty else {
                    throw MartletError(
                        .invalidInput,
                        "\(filterKey): no NIC matches \(selector); NICs here: \(listing(nics))",
                        hint: "`udevadm info /sys/class/net/NAME` shows a NIC's properties")
                }
                if network.bond == nil, matches.count > 1 {
                    throw MartletError(
                        .invalidInput,
                        "\(filterKey): \(selector) matches \(matches.count) NICs "
                            + "(\(matches.map(\.name).joined(separator: ", "))), the management network needs one",
                        hint: "narrow the globs, or bond the NICs with a [network.bond] table")
                }
                for nic in matches {
                    let port: InterfaceSelector =
                        NetworkSyntax.isMAC(nic.mac) ? .mac(nic.mac.lowercased()) : .name(nic.name)
                    try choose(port, nic: nic.name, by: selector)
                }
            }
        }
        if network.bond != nil, ports.count < 2 {
            throw MartletError(
                .invalidInput,
                "network.bond.filter: a bond needs at least 2 NICs, the filter matches only "
                    + ports.map(\.description).joined(separator: ", "),
                hint: "widen the globs or give interfaces = [...]")
        }
        return ports
    }

    private static func listing(_ nics: [NIC]) -> String {
        guard !nics.isEmpty else { return "none" }
        return nics.map { nic in
            let path = nic.properties["ID_NET_NAME_PATH"].map { " ID_NET_NAME_PATH=\($0)" } ?? ""
            return "\(nic.name) (\(nic.mac)\(path))"
        }.joined(separator: ", ")
    }
}
