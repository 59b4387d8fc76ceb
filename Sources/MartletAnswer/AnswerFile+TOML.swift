import Foundation

extension AnswerFile {
    /// The answers as an answer file that `AnswerFile.parse` reads back to the same value:
    /// what the text UI saves so an install can be repeated unattended.
    public var toml: String {
        func quoted(_ text: String) -> String {
            var escaped = ""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": escaped += "\\\""
                case "\\": escaped += "\\\\"
                case "\n": escaped += "\\n"
                case "\t": escaped += "\\t"
                default:
                    escaped += scalar.value < 0x20 || scalar.value == 0x7F
                        ? String(format: "\\u%04X", scalar.value) : String(scalar)
                }
            }
            return "\"\(escaped)\""
        }
        func list(_ items: [String]) -> String { "[" + items.map(quoted).joined(separator: ", ") + "]" }

        var lines = ["# Martlet answer file: `martlet-installer install --answer FILE` repeats this install.", ""]
        lines.append("[global]")
        lines.append("hostname = \(quoted(global.hostname))")
        lines.append("timezone = \(quoted(global.timezone))")
        lines.append("keyboard = \(quoted(global.keyboard))")
        switch global.rootPassword {
        case .plain(let password): lines.append("root-password = \(quoted(password))")
        case .hashed(let hash): lines.append("root-password-hash = \(quoted(hash))")
        case nil: break
        }
        if !global.rootSSHKeys.isEmpty { lines.append("root-ssh-keys = \(list(global.rootSSHKeys))") }
        lines.append("reboot-mode = \(quoted(global.rebootMode.rawValue))")

        lines += ["", "[disk]"]
        lines.append("target = \(quoted(disk.target.description))")
        lines.append("filesystem = \(quoted(disk.filesystem.rawValue))")
        if let rootSize = disk.rootSize { lines.append("root-size = \(rootSize.bytes)") }
        if let swapSize = disk.swapSize { lines.append("swap-size = \(swapSize.bytes)") }
        lines.append("wipe = \(disk.wipe)")

        lines += ["", "[storage]"]
        lines.append("type = \(quoted(storage.type.rawValue))")
        lines.append("volume-group = \(quoted(storage.volumeGroup))")
        if !storage.extraDisks.isEmpty { lines.append("extra-disks = \(list(storage.extraDisks.map(\.description)))") }

        lines += ["", "[network]"]
        lines.append("interface = \(quoted(network.interface.description))")
        lines.append("mode = \(quoted(network.mode.rawValue))")
        if let address = network.address { lines.append("address = \(quoted(address))") }
        if let gateway = network.gateway { lines.append("gateway = \(quoted(gateway))") }
        if !network.dns.isEmpty { lines.append("dns = \(list(network.dns))") }
        switch network.ipv6 {
        case .auto: lines.append("ipv6 = \"auto\"")
        case .off: lines.append("ipv6 = \"off\"")
        case .address(let address): lines.append("ipv6 = \(quoted(address))")
        }
        if let gateway = network.ipv6Gateway { lines.append("ipv6-gateway = \(quoted(gateway))") }
        if let vlan = network.vlan { lines.append("vlan = \(vlan)") }
        return lines.joined(separator: "\n") + "\n"
    }
}
