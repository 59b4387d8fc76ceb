import Foundation
import MartletAnswer
import MartletCore
import Testing

@testable import MartletInstaller

/// The text UI's answers without a terminal: what each screen accepts, and the answer file
/// it writes.
@Suite("Text UI answers")
struct TextUIChoicesTests {
    func valid() -> TextUIChoices {
        var choices = TextUIChoices()
        choices.target = "/dev/sdb"
        choices.interfaces = ["eno1"]
        choices.password = "Correct-Horse-9"
        choices.passwordAgain = "Correct-Horse-9"
        return choices
    }

    @Test("the answers round-trip through the TOML the UI saves, quotes and backslashes included")
    func tomlRoundTrip() throws {
        var choices = valid()
        choices.password = #"a "quoted" \ pass"#
        choices.passwordAgain = choices.password
        choices.storage = .directoryXFS
        choices.extraDisks = ["/dev/sdc", "/dev/sdd"]
        choices.dhcp = false
        choices.address = "192.0.2.10/24"
        choices.dns = "192.0.2.53, 2001:db8::53"
        choices.ipv6 = "2001:db8::10/64"
        choices.vlan = "7"
        choices.sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy admin@example.org"
        let answer = try choices.answerFile()
        #expect(try AnswerFile.parse(path: "saved.toml", contents: answer.toml) == answer)
        #expect(answer.global.rootPassword == .plain(choices.password))
        #expect(answer.disk.filesystem == .xfs && answer.storage.type == .directory)
        #expect(answer.storage.extraDisks == [.path("/dev/sdc"), .path("/dev/sdd")])
        #expect(answer.network.dns == ["192.0.2.53", "2001:db8::53"] && answer.network.gateway == nil)
        #expect(answer.network.ipv6 == .address("2001:db8::10/64") && answer.network.vlan == 7)
    }

    @Test("each bad network input is named in the message")
    func networkProblems() {
        let cases: [(WritableKeyPath<TextUIChoices, String>, String, String, Bool)] = [
            (\.hostname, "", "Enter a host name", true),
            (\.hostname, "-bad", "'-bad' is not a host name", true),
            (\.address, "192.0.2.10", "'192.0.2.10' is not IPv4 with a prefix", false),
            (\.address, "192.0.2.10/33", "'192.0.2.10/33' is not IPv4", false),
            (\.gateway, "gw", "Gateway 'gw'", false),
            (\.dns, "192.0.2.53 nameserver", "DNS server 'nameserver'", true),
            (\.ipv6, "2001:db8::1", "IPv6 '2001:db8::1'", true),
            (\.vlan, "0", "VLAN '0'", true),
            (\.vlan, "4095", "VLAN '4095'", true),
        ]
        for (key, value, message, dhcp) in cases {
            var choices = valid()
            choices.dhcp = dhcp
            choices.address = dhcp ? "" : "192.0.2.10/24"
            choices[keyPath: key] = value
            #expect(choices.networkProblem()?.contains(message) == true, "\(value): \(choices.networkProblem() ?? "nil")")
        }
        var dhcp = valid()
        dhcp.address = "ignored in DHCP mode"
        #expect(dhcp.networkProblem() == nil)
        var none = valid()
        none.interfaces = []
        #expect(none.networkProblem()?.contains("Tick the management NIC") == true)
    }

    @Test("one ticked NIC is the management interface; two or more become a bond in the chosen mode")
    func bond() throws {
        var single = valid()
        single.bondMode = .lacp
        let plain = try single.answerFile()
        #expect(plain.network.interface == .name("eno1") && plain.network.bond == nil)

        var bonded = valid()
        bonded.interfaces = ["eno1", "eno2"]
        bonded.bondMode = .lacp
        bonded.vlan = "42"
        let answer = try bonded.answerFile()
        #expect(answer.network.interface == nil)
        #expect(answer.network.bond?.members == [.name("eno1"), .name("eno2")])
        #expect(answer.network.bond?.mode == .lacp && answer.network.vlan == 42)
        #expect(answer.network.bond?.miimon == AnswerFile.BondAnswer.defaultMIIMon)
        #expect(try AnswerFile.parse(path: "saved.toml", contents: answer.toml) == answer)
    }

    @Test("the Summary's Erases line drops models, then sizes, then disks, never cutting a path")
    func erasesLine() {
        func disk(_ name: String, _ model: String) -> Disk {
            Disk(path: "/dev/\(name)", name: name, size: .gib(960), model: model)
        }
        let short = [disk("sda", "SSD"), disk("sdb", "SSD")]
        #expect(TextUIChoices.erasesLine(short, width: 71) == "Erases: /dev/sda (960 GiB, SSD), /dev/sdb (960 GiB, SSD)")
        let long = [disk("nvme0n1", "SAMSUNG MZQL2960HCJR-00A07"), disk("nvme1n1", "SAMSUNG MZQL2960HCJR-00A07")]
        #expect(TextUIChoices.erasesLine(long, width: 71) == "Erases: /dev/nvme0n1 (960 GiB), /dev/nvme1n1 (960 GiB)")
        let many = (0..<12).map { disk("nvme\($0)n1", "X") }
        let line = TextUIChoices.erasesLine(many, width: 71)
        #expect(line.count <= 71, "\(line)")
        #expect(line.hasPrefix("Erases: /dev/nvme0n1, /dev/nvme1n1, ") && line.hasSuffix(" more"), "\(line)")
        // Every path shown is whole, and the count covers the rest.
        let shown: [String] = String(line.dropFirst("Erases: ".count)).components(separatedBy: ", ")
        let last: [String] = shown.last!.components(separatedBy: " +")
        let paths = Array(shown.dropLast()) + [last[0]]
        let more = Int(last[1].components(separatedBy: " ")[0])!
        #expect(paths == Array(many.prefix(paths.count)).map(\.path))
        #expect(paths.count + more == many.count)
    }

    @Test("a mirror partner becomes targets + raid1, which the plan turns into md0 (root) and md1 (storage) over both disks")
    func mirror() throws {
        var choices = valid()
        choices.mirror = "/dev/sdc"
        choices.wipe = true
        let answer = try choices.answerFile()
        #expect(answer.disk.raid == .raid1)
        #expect(answer.disk.target == .path("/dev/sdb"))
        #expect(answer.disk.targets == [.path("/dev/sdb"), .path("/dev/sdc")])
        let toml = answer.toml
        #expect(toml.contains("raid = \"raid1\"") && toml.contains("targets = ") && !toml.contains("target = "), "\(toml)")
        #expect(try AnswerFile.parse(path: "saved.toml", contents: toml) == answer)

        let disks = [
            Disk(path: "/dev/sdb", name: "sdb", size: .gib(100)), Disk(path: "/dev/sdc", name: "sdc", size: .gib(104)),
        ]
        let plan = try InstallPlan.make(
            answer: answer, disks: disks, nics: [NIC(name: "eno1", mac: "52:54:00:aa:00:01")], source: "/src")
        #expect(plan.targets.map(\.path) == ["/dev/sdb", "/dev/sdc"])
        // The text UI asks for no swap (the layout's default is none), so no md2.
        #expect(plan.raid?.arrays.map(\.device) == ["/dev/md0", "/dev/md1"])
        #expect(plan.raid?.arrays.map(\.role) == [.root, .storage])
        #expect(plan.raid?.arrays.allSatisfy { $0.members.count == 2 } == true)

        let single = try valid().answerFile()
        #expect(single.disk.raid == nil && single.disk.targets.isEmpty && single.disk.target == .path("/dev/sdb"))
    }

    @Test("mirror partners: the plan's size rule, at most 10% apart either way")
    func mirrorSizes() {
        #expect(InstallPlan.mirrorSizesMatch(.gib(100), .gib(110)))
        #expect(InstallPlan.mirrorSizesMatch(.gib(110), .gib(100)))
        #expect(!InstallPlan.mirrorSizesMatch(.gib(100), .gib(111)))
        #expect(!InstallPlan.mirrorSizesMatch(.gib(12), .gib(8)))
        #expect(InstallPlan.mirrorSizesMatch(.gib(8), .gib(8)))
    }

    @Test("passwords: mismatch, missing login, ':' and SSH key shape are refused; short ones get a hint")
    func passwordProblems() {
        var choices = valid()
        choices.passwordAgain = "other"
        #expect(choices.passwordProblem()?.contains("do not match") == true)
        choices.password = ""
        choices.passwordAgain = ""
        #expect(choices.passwordProblem()?.contains("nobody can log in") == true)
        choices.sshKey = "AAAA only"
        #expect(choices.passwordProblem()?.contains("not a public key") == true)
        choices.sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy"
        #expect(choices.passwordProblem() == nil)
        choices.password = "a:b"
        choices.passwordAgain = "a:b"
        #expect(choices.passwordProblem()?.contains("':'") == true)
        choices.password = "abc"
        #expect(choices.passwordWeakness()?.contains("only 3 characters") == true)
        choices.password = "abcdefghi"
        #expect(choices.passwordWeakness() != nil)
        choices.password = "Correct-Horse-9"
        #expect(choices.passwordWeakness() == nil)
    }

    @Test("time zones must be names in the database")
    func timezones() throws {
        var choices = valid()
        choices.timezone = "Europe/Paris"
        #expect(choices.timezoneProblem(catalog: HostCatalog(root: "/")) == nil)
        choices.timezone = "Mars/Olympus"
        #expect(choices.timezoneProblem(catalog: HostCatalog(root: "/"))?.contains("not in the host image's time zone database") == true)
        choices.timezone = "../etc/passwd"
        #expect(choices.timezoneProblem(catalog: nil)?.contains("not a time zone name") == true)
    }

    @Test("the saved answer file carries a SHA-512 crypt hash that verifies the password")
    func passwordHash() throws {
        let hash = try #require(PasswordHash.sha512("Correct-Horse-9"))
        #expect(hash.hasPrefix("$6$"))
        #expect(hash != PasswordHash.sha512("Correct-Horse-9"))
        let check = try sh("openssl", ["passwd", "-6", "-salt", String(hash.split(separator: "$")[1]), "Correct-Horse-9"])
        #expect(check.trimmingCharacters(in: .whitespacesAndNewlines) == hash)
    }

    @Test("disks that are the boot medium, mounted, held or read-only are refused with the reason")
    func refusals() {
        var disk = Disk(path: "/dev/sdb", name: "sdb", size: .gib(100))
        #expect(TextInstaller.refusal(disk) == nil)
        disk.isBootMedium = true
        #expect(TextInstaller.refusal(disk) == "boot medium")
        disk.isBootMedium = false
        disk.partitions = [Disk.Partition(path: "/dev/sdb1", number: 1, size: .gib(1), mountpoints: ["/srv"])]
        #expect(TextInstaller.refusal(disk) == "mounted on /srv")
        disk.partitions = []
        disk.holders = [Disk.Holder(device: "dm-0", name: "vg-lv", kind: "lvm", inUse: true, holds: "/dev/sdb")]
        #expect(TextInstaller.refusal(disk) == "in use by vg-lv")
        disk.holders = []
        disk.readOnly = true
        #expect(TextInstaller.refusal(disk) == "read-only")
    }
}
