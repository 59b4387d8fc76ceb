import Foundation
import MartletAnswer
import MartletCore
import MartletValidation

/// Everything the screens collected, as typed. `answerFile()` turns it into the same
/// `AnswerFile` an unattended install reads, checked by the answer file's own parser.
struct TextUIChoices {
    var keyboard = "us"
    var target: String?
    /// The second disk of a RAID1 mirror of the host (every data partition of `target` on md);
    /// nil installs on `target` alone.
    var mirror: String?
    var storage = StorageChoice.lvmThin
    var volumeGroup = "martlet"
    var extraDisks: [String] = []
    var wipe = false
    /// The ticked NICs: one is the management NIC, two or more are bonded as `bond0`.
    var interfaces: [String] = []
    var bondMode = AnswerFile.BondMode.activeBackup
    var dhcp = true
    var address = ""
    var gateway = ""
    var dns = ""
    var ipv6 = "auto"
    var hostname = "martlet"
    var vlan = ""
    var password = ""
    var passwordAgain = ""
    var sshKey = ""
    var timezone = "UTC"

    enum StorageChoice: Int, CaseIterable {
        case lvmThin, directoryExt4, directoryXFS

        var title: String {
            switch self {
            case .lvmThin: "LVM thin pool (thin-provisioned volumes, snapshots)"
            case .directoryExt4: "Directory of image files on ext4"
            case .directoryXFS: "Directory of image files on xfs"
            }
        }
    }

    var dnsServers: [String] {
        dns.split(whereSeparator: { $0 == " " || $0 == "," }).map(String.init)
    }

    /// The answers as an `AnswerFile`, validated by `AnswerFile.parse` exactly like a file.
    func answerFile() throws -> AnswerFile {
        let global = AnswerFile.Global(
            hostname: hostname, timezone: timezone, keyboard: keyboard,
            rootPassword: password.isEmpty ? nil : .plain(password),
            rootSSHKeys: sshKey.isEmpty ? [] : [sshKey], rebootMode: .reboot)
        // A mirror is written as an unattended install names it: both disks in `targets`.
        let members = mirror.map { [target ?? "", $0] } ?? []
        let disk = AnswerFile.DiskAnswer(
            target: .path(target ?? ""), filesystem: storage == .directoryXFS ? .xfs : .ext4, wipe: wipe,
            targets: members.map { .path($0) }, raid: mirror == nil ? nil : .raid1)
        let storageAnswer = AnswerFile.StorageAnswer(
            type: storage == .lvmThin ? .lvmThin : .directory, volumeGroup: volumeGroup,
            extraDisks: extraDisks.map { .path($0) })
        let ipv6Mode: AnswerFile.IPv6Mode =
            switch ipv6 {
            case "auto", "": .auto
            case "off", "none": .off
            default: .address(ipv6)
            }
        // The answer file's own rules decide what a bond needs (two or more NICs); the screen
        // only asks for the mode, with the link monitoring the answer file defaults to.
        let bond = interfaces.count > 1
            ? AnswerFile.BondAnswer(members: interfaces.map { .name($0) }, mode: bondMode) : nil
        let network = AnswerFile.NetworkAnswer(
            interface: bond == nil ? .name(interfaces.first ?? "") : nil, bond: bond,
            mode: dhcp ? .dhcp : .static,
            address: dhcp ? nil : address, gateway: dhcp || gateway.isEmpty ? nil : gateway,
            dns: dnsServers, ipv6: ipv6Mode, vlan: vlan.isEmpty ? nil : Int(vlan))
        let answer = AnswerFile(global: global, disk: disk, storage: storageAnswer, network: network)
        return try AnswerFile.parse(path: "the text UI's answers", contents: answer.toml)
    }

    // Each check returns the message the screen shows, or nil when the input is fine.

    func networkProblem() -> String? {
        if interfaces.isEmpty {
            return "Tick the management NIC with Space (two or more make a bond)."
        }
        if hostname.isEmpty { return "Enter a host name, e.g. hv1.example.org." }
        if !NetworkSyntax.isHostname(hostname) {
            return "'\(hostname)' is not a host name: letters, digits, '-', labels joined by '.'."
        }
        if !dhcp {
            if !NetworkSyntax.isCIDR(address, family: AF_INET) {
                return "Address '\(address)' is not IPv4 with a prefix length, e.g. 192.0.2.10/24."
            }
            if !gateway.isEmpty && !NetworkSyntax.isAddress(gateway, family: AF_INET) {
                return "Gateway '\(gateway)' is not an IPv4 address (leave it empty for none)."
            }
        }
        for server in dnsServers
        where !NetworkSyntax.isAddress(server, family: AF_INET) && !NetworkSyntax.isAddress(server, family: AF_INET6) {
            return "DNS server '\(server)' is not an IP address (separate servers with spaces)."
        }
        if !["auto", "off", "none", ""].contains(ipv6) && !NetworkSyntax.isCIDR(ipv6, family: AF_INET6) {
            return "IPv6 '\(ipv6)' is not auto, off or an address with prefix, e.g. 2001:db8::10/64."
        }
        if !vlan.isEmpty, !(Int(vlan).map { (1...4094).contains($0) } ?? false) {
            return "VLAN '\(vlan)' is not a VLAN id: use 1 to 4094, or leave it empty."
        }
        return nil
    }

    func passwordProblem() -> String? {
        if password.isEmpty && sshKey.isEmpty {
            return "Set a root password or paste an SSH public key: otherwise nobody can log in."
        }
        if password != passwordAgain { return "The passwords do not match: type the same password twice." }
        if password.contains(":") { return "The password must not contain ':'." }
        if !sshKey.isEmpty, (try? SSHPublicKey.check(sshKey, field: "SSH key")) == nil {
            return "The SSH key is not a public key: paste one line of id_*.pub (ssh-ed25519 AAAA...)."
        }
        return nil
    }

    /// A hint when the password is easy to guess, nil when it looks strong enough.
    func passwordWeakness() -> String? {
        guard !password.isEmpty else { return nil }
        let classes = [
            password.contains { $0.isLowercase }, password.contains { $0.isUppercase },
            password.contains { $0.isNumber }, password.contains { !$0.isLetter && !$0.isNumber },
        ].filter { $0 }.count
        if password.count < 8 { return "it has only \(password.count) characters (use 12 or more)" }
        if password.count < 12 && classes < 3 {
            return "it is short and uses \(classes) kind(s) of characters (mix letters, digits, symbols)"
        }
        return nil
    }

    func timezoneProblem(catalog: HostCatalog?) -> String? {
        let pattern = #"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$"#
        guard timezone.range(of: pattern, options: .regularExpression) != nil, !timezone.contains("..") else {
            return "'\(timezone)' is not a time zone name, e.g. Europe/Paris or UTC."
        }
        if let problem = catalog?.timezoneProblem(timezone) { return problem + "." }
        return nil
    }
}

extension TextUIChoices {
    /// The Summary's one line naming every disk the install erases, within `width`
    /// columns: with sizes and models when they fit, else with sizes, else the paths alone
    /// (the confirmation dialog after it names each disk in full). Never a path cut short.
    /// A disk as the Summary and the erase confirmation name it: path, size and model.
    static func erasedDisk(_ disk: Disk) -> String {
        "\(disk.path) (\(disk.size), \(disk.model ?? "no model"))"
    }

    static func erasesLine(_ disks: [Disk], width: Int) -> String {
        let forms: [(Disk) -> String] = [
            erasedDisk,
            { "\($0.path) (\($0.size))" },
            { $0.path },
        ]
        for form in forms {
            let line = "Erases: " + disks.map(form).joined(separator: ", ")
            if line.count <= width { return line }
        }
        // More disks than one line holds: as many paths as fit, then how many more.
        var line = "Erases:"
        for (index, disk) in disks.enumerated() {
            let next = line + (index == 0 ? " " : ", ") + disk.path
            let rest = disks.count - index - 1
            if next.count + (rest == 0 ? 0 : " +\(rest) more".count) > width {
                return line + " +\(disks.count - index) more"
            }
            line = next
        }
        return line
    }
}
