import Foundation
import MartletAnswer
import MartletCore
import Testing

@testable import MartletInstaller

/// One way to break the valid answer file: replace `old` by `new`; the error must name `key`.
struct MalformedAnswer: CustomTestStringConvertible, Sendable {
    var name: String
    var old: String
    var new: String
    var key: String
    var testDescription: String { name }

    func apply(to text: String) -> String {
        precondition(text.contains(old), "fixture line '\(old)' missing")
        return text.replacingOccurrences(of: old, with: new)
    }
}

let malformedAnswers: [MalformedAnswer] = [
    .init(
        name: "unknown key", old: "keyboard = \"de\"", new: "keyboard = \"de\"\nkeybaord = \"us\"",
        key: "global.keybaord"),
    .init(
        name: "unknown table", old: "[storage]", new: "[storage]\n[storag]\n[storage2]",
        key: "storag"),
    .init(
        name: "hostname not a string", old: "hostname = \"hv1.example.org\"", new: "hostname = 42",
        key: "global.hostname"),
    .init(
        name: "hostname invalid", old: "hostname = \"hv1.example.org\"",
        new: "hostname = \"hv_1!\"", key: "global.hostname"),
    .init(
        name: "missing hostname", old: "hostname = \"hv1.example.org\"\n", new: "",
        key: "global.hostname"),
    .init(
        name: "bad timezone", old: "timezone = \"Europe/Paris\"",
        new: "timezone = \"../etc/passwd\"", key: "global.timezone"),
    .init(
        name: "bad keyboard", old: "keyboard = \"de\"", new: "keyboard = \"German keyboard\"",
        key: "global.keyboard"),
    .init(
        name: "conflicting password keys", old: "root-password = \"s3cret pass\"",
        new: "root-password = \"s3cret pass\"\nroot-password-hash = \"$6$salt$abc\"",
        key: "global.root-password-hash"),
    .init(
        name: "bad password hash", old: "root-password = \"s3cret pass\"",
        new: "root-password-hash = \"plaintext\"", key: "global.root-password-hash"),
    .init(
        name: "empty password", old: "root-password = \"s3cret pass\"", new: "root-password = \"\"",
        key: "global.root-password"),
    .init(
        name: "no way to log in",
        old:
            "root-password = \"s3cret pass\"\nroot-ssh-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy admin@example.org\"]",
        new: "", key: "global.root-password"),
    .init(
        name: "ssh keys not an array", old: "root-ssh-keys = [",
        new: "root-ssh-keys = \"x\"\nunused = [", key: "global.root-ssh-keys"),
    .init(
        name: "ssh key malformed",
        old: "\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy admin@example.org\"", new: "\"not-a-key\"",
        key: "global.root-ssh-keys"),
    .init(
        name: "bad reboot mode", old: "reboot-mode = \"none\"", new: "reboot-mode = \"halt\"",
        key: "global.reboot-mode"),
    .init(name: "missing target", old: "target = \"/dev/sdz\"\n", new: "", key: "disk.target"),
    .init(
        name: "target not a disk", old: "target = \"/dev/sdz\"", new: "target = \"sdz\"",
        key: "disk.target"),
    .init(name: "wipe not a boolean", old: "wipe = false", new: "wipe = \"yes\"", key: "disk.wipe"),
    .init(
        name: "bad filesystem", old: "filesystem = \"ext4\"", new: "filesystem = \"btrfs\"",
        key: "disk.filesystem"),
    .init(
        name: "bad root size", old: "swap-size = \"1GiB\"",
        new: "swap-size = \"1GiB\"\nroot-size = \"lots\"", key: "disk.root-size"),
    .init(
        name: "root size too small", old: "swap-size = \"1GiB\"",
        new: "swap-size = \"1GiB\"\nroot-size = \"1GiB\"", key: "disk.root-size"),
    .init(
        name: "bad swap size type", old: "swap-size = \"1GiB\"", new: "swap-size = true",
        key: "disk.swap-size"),
    .init(
        name: "bad storage type", old: "type = \"lvm-thin\"", new: "type = \"zfs\"",
        key: "storage.type"),
    .init(
        name: "bad volume group", old: "volume-group = \"martlet\"",
        new: "volume-group = \"-bad/vg\"", key: "storage.volume-group"),
    .init(
        name: "extra disk is the target", old: "volume-group = \"martlet\"",
        new: "volume-group = \"martlet\"\nextra-disks = [\"/dev/sdz\"]", key: "storage.extra-disks"),
    .init(
        name: "bad CIDR", old: "address = \"192.0.2.10/24\"", new: "address = \"192.0.2.10/33\"",
        key: "network.address"),
    .init(
        name: "address without prefix", old: "address = \"192.0.2.10/24\"",
        new: "address = \"192.0.2.10\"", key: "network.address"),
    .init(
        name: "static without address", old: "address = \"192.0.2.10/24\"\n", new: "",
        key: "network.address"),
    .init(
        name: "bad gateway", old: "gateway = \"192.0.2.1\"", new: "gateway = \"192.0.2.300\"",
        key: "network.gateway"),
    .init(
        name: "bad dns", old: "dns = [\"192.0.2.53\", \"2001:db8::53\"]",
        new: "dns = [\"dns.example.org\"]", key: "network.dns"),
    .init(
        name: "bad mode", old: "mode = \"static\"", new: "mode = \"manual\"", key: "network.mode"),
    .init(
        name: "dhcp with address", old: "mode = \"static\"", new: "mode = \"dhcp\"",
        key: "network.address"),
    .init(
        name: "bad ipv6", old: "ipv6 = \"2001:db8::10/64\"", new: "ipv6 = \"2001:zz8::10/64\"",
        key: "network.ipv6"),
    .init(name: "vlan out of range", old: "vlan = 42", new: "vlan = 5000", key: "network.vlan"),
    .init(name: "vlan wrong type", old: "vlan = 42", new: "vlan = \"42\"", key: "network.vlan"),
    .init(
        name: "bad interface", old: "interface = \"52:54:00:12:34:56\"",
        new: "interface = \"a very long interface name\"", key: "network.interface"),
    .init(name: "missing network section", old: "[network]", new: "[networking]", key: "network"),
    .init(
        name: "bond of one NIC", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\"]\nmode = \"active-backup\"\n[network]",
        key: "network.bond.interfaces"),
    .init(
        name: "bond of no NICs", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = []\nmode = \"active-backup\"\n[network]",
        key: "network.bond.interfaces"),
    .init(
        name: "bond NIC listed twice", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno1\"]\nmode = \"active-backup\"\n[network]",
        key: "network.bond.interfaces"),
    .init(
        name: "bond NIC that is no NIC name", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno 2\"]\nmode = \"active-backup\"\n[network]",
        key: "network.bond.interfaces"),
    .init(
        name: "bond without NICs", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\nmode = \"active-backup\"\n[network]",
        key: "network.bond.interfaces"),
    .init(
        name: "bond with interfaces and a filter", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"active-backup\"\n[network.bond.filter]\nID_NET_NAME_PATH = \"enp1s*\"\n[network]",
        key: "network.bond.filter"),
    .init(
        name: "bond without a mode", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\n[network]",
        key: "network.bond.mode"),
    .init(
        name: "unknown bond mode", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"balance-rr\"\n[network]",
        key: "network.bond.mode"),
    .init(
        name: "lacp-rate without 802.3ad", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"active-backup\"\nlacp-rate = \"fast\"\n[network]",
        key: "network.bond.lacp-rate"),
    .init(
        name: "unknown lacp-rate", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"802.3ad\"\nlacp-rate = \"medium\"\n[network]",
        key: "network.bond.lacp-rate"),
    .init(
        name: "miimon of zero", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"balance-alb\"\nmiimon = 0\n[network]",
        key: "network.bond.miimon"),
    .init(
        name: "miimon as text", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"balance-alb\"\nmiimon = \"100ms\"\n[network]",
        key: "network.bond.miimon"),
    .init(
        name: "misspelt bond key", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"802.3ad\"\nlacp_rate = \"fast\"\n[network]",
        key: "network.bond.lacp_rate"),
    .init(
        name: "bond filter of a lower-case property", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.bond]\nmode = \"802.3ad\"\n[network.bond.filter]\nid_net_name_path = \"enp1s*\"\n[network]",
        key: "network.bond.filter.id_net_name_path"),
    .init(
        name: "bond and interface", old: "vlan = 42",
        new: "vlan = 42\n[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"802.3ad\"",
        key: "network.bond"),
    .init(
        name: "filter and interface", old: "vlan = 42",
        new: "vlan = 42\n[network.filter]\nID_NET_NAME_PATH = \"enp1s*\"", key: "network.filter"),
    .init(
        name: "empty filter glob", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.filter]\nID_NET_NAME_PATH = \"\"\n[network]", key: "network.filter.ID_NET_NAME_PATH"),
    .init(
        name: "empty filter table", old: "[network]\ninterface = \"52:54:00:12:34:56\"",
        new: "[network.filter]\n[network]", key: "network.filter"),
    .init(
        name: "no management NIC", old: "interface = \"52:54:00:12:34:56\"\n", new: "",
        key: "network.interface"),
    .init(name: "vlan zero", old: "vlan = 42", new: "vlan = 0", key: "network.vlan"),
    .init(name: "mtu above jumbo", old: "vlan = 42", new: "vlan = 42\nmtu = 9217", key: "network.mtu"),
    .init(name: "mtu below IPv4's minimum", old: "vlan = 42", new: "vlan = 42\nmtu = 575", key: "network.mtu"),
    .init(
        name: "disk filter and target", old: "[disk]\ntarget = \"/dev/sdz\"\n",
        new: "[disk.filter]\nID_MODEL = \"*SSD*\"\n[disk]\ntarget = \"/dev/sdz\"\n",
        key: "disk.filter"),
    .init(
        name: "empty disk filter", old: "[disk]\ntarget = \"/dev/sdz\"\n",
        new: "[disk.filter]\n\n[disk]\n",
        key: "disk.filter"),
    .init(
        name: "disk filter of a lower-case property", old: "[disk]\ntarget = \"/dev/sdz\"\n",
        new: "[disk.filter]\nid_model = \"*SSD*\"\n[disk]\n",
        key: "disk.filter.id_model"),
    .init(
        name: "disk filter with max-size below min-size", old: "[disk]\ntarget = \"/dev/sdz\"\n",
        new: "[disk.filter]\nmin-size = \"1TiB\"\nmax-size = \"100GiB\"\n[disk]\n",
        key: "disk.filter.max-size"),
    .init(
        name: "disk filter with a size that is no size", old: "[disk]\ntarget = \"/dev/sdz\"\n",
        new: "[disk.filter]\nmin-size = \"big\"\n[disk]\n",
        key: "disk.filter.min-size"),
    .init(
        name: "disk filter with an empty glob", old: "[disk]\ntarget = \"/dev/sdz\"\n",
        new: "[disk.filter]\nID_SERIAL = \"\"\n[disk]\n",
        key: "disk.filter.ID_SERIAL"),
    .init(name: "mtu as text", old: "vlan = 42", new: "vlan = 42\nmtu = \"9000\"", key: "network.mtu"),
    .init(
        name: "first-boot without a script", old: "vlan = 42", new: "vlan = 42\n[first-boot]\nat = \"multi-user\"",
        key: "first-boot.script"),
    .init(
        name: "first-boot script outside the medium", old: "vlan = 42",
        new: "vlan = 42\n[first-boot]\nscript = \"/hooks/../../etc/shadow\"", key: "first-boot.script"),
    .init(
        name: "first-boot at an unknown point", old: "vlan = 42",
        new: "vlan = 42\n[first-boot]\nscript = \"/hooks/a.sh\"\nat = \"graphical\"", key: "first-boot.at"),
    .init(
        name: "webhook that is no URL", old: "vlan = 42",
        new: "vlan = 42\n[post-install]\nwebhook = \"deploy.example.org\"", key: "post-install.webhook"),
    .init(
        name: "webhook over ftp", old: "vlan = 42",
        new: "vlan = 42\n[post-install]\nwebhook = \"ftp://deploy.example.org/x\"", key: "post-install.webhook"),
    .init(name: "not TOML", old: "vlan = 42", new: "vlan = = 42", key: "not valid TOML"),
    // RAID1 (issue #15): every refusal names the key.
    .init(
        name: "raid with one target", old: "target = \"/dev/sdz\"",
        new: "target = \"/dev/sdz\"\nraid = \"raid1\"", key: "disk.raid"),
    .init(
        name: "raid with a one-disk list", old: "target = \"/dev/sdz\"",
        new: "targets = [\"/dev/sdz\"]\nraid = \"raid1\"", key: "disk.targets"),
    .init(
        name: "raid level unknown", old: "target = \"/dev/sdz\"",
        new: "targets = [\"/dev/sdy\", \"/dev/sdz\"]\nraid = \"raid5\"", key: "disk.raid"),
    .init(
        name: "raid level not a string", old: "target = \"/dev/sdz\"",
        new: "targets = [\"/dev/sdy\", \"/dev/sdz\"]\nraid = 1", key: "disk.raid"),
    .init(
        name: "the same disk twice in targets", old: "target = \"/dev/sdz\"",
        new: "targets = [\"/dev/sdz\", \"/dev/sdz\"]\nraid = \"raid1\"", key: "disk.targets"),
    .init(
        name: "targets without raid", old: "target = \"/dev/sdz\"",
        new: "targets = [\"/dev/sdy\", \"/dev/sdz\"]", key: "disk.targets"),
    .init(
        name: "targets and target together", old: "target = \"/dev/sdz\"",
        new: "target = \"/dev/sdz\"\ntargets = [\"/dev/sdy\", \"/dev/sdz\"]\nraid = \"raid1\"",
        key: "disk.targets"),
    .init(
        name: "targets and a filter together", old: "target = \"/dev/sdz\"",
        new: "targets = [\"/dev/sdy\", \"/dev/sdz\"]\nraid = \"raid1\"\n[disk.filter]\nmin-size = \"1TB\"",
        key: "disk.filter"),
    .init(
        name: "a target of the mirror that names no disk", old: "target = \"/dev/sdz\"",
        new: "targets = [\"/dev/sdy\", \"sdz\"]\nraid = \"raid1\"", key: "disk.targets"),
    .init(
        name: "targets not an array", old: "target = \"/dev/sdz\"",
        new: "targets = \"/dev/sdy /dev/sdz\"\nraid = \"raid1\"", key: "disk.targets"),
    .init(
        name: "extra disk is a mirror member",
        old: "target = \"/dev/sdz\"\nfilesystem = \"ext4\"\nswap-size = \"1GiB\"\nwipe = false\n\n[storage]\ntype = \"lvm-thin\"\nvolume-group = \"martlet\"",
        new: "targets = [\"/dev/sdz\", \"/dev/sdy\"]\nraid = \"raid1\"\n\n[storage]\nextra-disks = [\"/dev/sdy\"]",
        key: "storage.extra-disks"),
]

@Suite("Answer file")
struct AnswerFileTests {
    @Test("a complete answer file parses into the expected values")
    func validAnswerParses() throws {
        let answer = try AnswerFile.parse(path: "answer.toml", contents: validAnswer())
        #expect(answer.global.hostname == "hv1.example.org")
        #expect(answer.global.timezone == "Europe/Paris")
        #expect(answer.global.rootPassword == .plain("s3cret pass"))
        #expect(answer.global.rebootMode == .none)
        #expect(answer.disk.target == .path("/dev/sdz"))
        #expect(answer.disk.swapSize == .gib(1))
        #expect(answer.disk.wipe == false)
        #expect(answer.storage.type == .lvmThin)
        #expect(answer.network.interface == .mac("52:54:00:12:34:56"))
        #expect(answer.network.ipv6 == .address("2001:db8::10/64"))
        #expect(answer.network.vlan == 42)
        #expect(answer.network.dns == ["192.0.2.53", "2001:db8::53"])
    }

    @Test("a minimal answer file gets the documented defaults")
    func defaults() throws {
        let answer = try AnswerFile.parse(
            path: "min.toml",
            contents: """
                [global]
                hostname = "hv"
                root-password-hash = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"
                [disk]
                target = "serial:S123"
                [network]
                interface = "eno1"
                """)
        #expect(answer.global.timezone == "UTC")
        #expect(answer.global.keyboard == "us")
        #expect(answer.global.rebootMode == .reboot)
        #expect(answer.global.rootPassword == .hashed("$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"))
        #expect(answer.disk.target == .serial("S123"))
        #expect(answer.storage == AnswerFile.StorageAnswer())
        #expect(answer.network.mode == .dhcp)
        #expect(answer.network.ipv6 == .auto)
    }

    @Test("the documented example answer file is valid")
    func exampleIsValid() throws {
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Sources/martlet-installer/answer.example.toml")
            .standardized.path
        let answer = try AnswerFile.load(path: example)
        #expect(answer.storage.type == .lvmThin)
    }

    @Test("malformed answer files are rejected, naming the key", arguments: malformedAnswers)
    func malformed(_ case_: MalformedAnswer) throws {
        let text = case_.apply(to: validAnswer())
        let error = #expect(throws: MartletError.self) {
            try AnswerFile.parse(path: "answer.toml", contents: text)
        }
        #expect(error?.code == .invalidInput)
        #expect(error?.message.contains(case_.key) == true, "\(error?.message ?? "no error")")
    }

    @Test("the kernel command line parameter is found")
    func commandLine() {
        #expect(
            AnswerLocator.value(
                inCommandLine: "quiet martlet.answer=label:MARTLET-ANSWER console=ttyS0\n")
                == "label:MARTLET-ANSWER")
        #expect(AnswerLocator.value(inCommandLine: "BOOT_IMAGE=/live/vmlinuz quiet") == nil)
    }
}
