import Foundation
import MartletAnswer
import MartletCore
import Testing

@testable import MartletInstaller

/// RAID1 over two or more disks (issue #15): what the plan decides. The md driver is missing
/// from this machine's kernel, so the arrays themselves are built in the e2e's BIOS lane.
@Suite("RAID1 install plan")
struct RaidPlanTests {
    func disk(_ path: String, size: ByteSize = .gib(20), serial: String? = nil) -> Disk {
        Disk(
            path: path, name: (path as NSString).lastPathComponent, size: size,
            model: "QEMU HARDDISK", serial: serial)
    }

    /// The valid answer with its one target replaced by `disk` (the [disk] keys for RAID)
    /// and a `[disk.filter]` table with `filter` in it.
    func answer(_ disk: String, filter: String? = nil) throws -> AnswerFile {
        var text = validAnswer(wipe: true).replacingOccurrences(
            of: "target = \"/dev/sdz\"", with: disk)
        if let filter {
            text = text.replacingOccurrences(of: "wipe = true", with: "wipe = true\n[disk.filter]\n\(filter)")
        }
        return try AnswerFile.parse(path: "raid.toml", contents: text)
    }

    let mirror = "targets = [\"/dev/vda\", \"/dev/vdb\"]\nraid = \"raid1\""

    @Test("targets + raid1: the same table on both disks, an md array per data partition")
    func twoDisks() throws {
        let disks = [disk("/dev/vda"), disk("/dev/vdb", size: .gib(21)), disk("/dev/vdc", size: .mib(16))]
        let parsed = try answer(mirror)
        #expect(parsed.disk.raid == .raid1)
        #expect(parsed.disk.targets == [.path("/dev/vda"), .path("/dev/vdb")])
        let plan = try InstallPlan.make(answer: parsed, disks: disks, nics: [], source: "/src")
        #expect(plan.targets.map(\.path) == ["/dev/vda", "/dev/vdb"])
        #expect(plan.mirrors.map(\.path) == ["/dev/vdb"])

        // Laid out for the smaller disk; the data partitions become Linux RAID members.
        let single = try PartitionLayout.compute(diskSize: .gib(20), swapSize: .gib(1))
        #expect(plan.layout.entries.map(\.start) == single.entries.map(\.start))
        #expect(plan.layout.entries.map(\.size) == single.entries.map(\.size))
        #expect(plan.layout.entries.last!.end <= ByteSize.gib(20).bytes - PartitionLayout.alignment)
        for entry in plan.layout.entries {
            switch entry.role {
            case .biosBoot, .esp:
                #expect(entry.typeGUID == single.entry(entry.role)!.typeGUID)
            case .root, .swap, .storage:
                #expect(entry.typeGUID == PartitionLayout.GUID.linuxRAID)
                #expect(entry.content == PartitionLayout.raidMember)
            }
        }

        let raid = try #require(plan.raid)
        #expect(raid.arrays.map(\.role) == [.root, .storage, .swap])
        #expect(Set(raid.arrays.map(\.device)).count == 3)
        for array in raid.arrays {
            let number = plan.layout.entry(array.role)!.number
            #expect(array.members == ["/dev/vda\(number)", "/dev/vdb\(number)"])
            #expect(plan.device(array.role) == array.device)
            // mdadm's command as data: level, metadata, homehost, member count, members last.
            let arguments = InstallPlan.mdadmCreateArguments(array, level: raid.level)
            #expect(arguments.first == "--create")
            #expect(arguments[1] == array.device)
            #expect(arguments.contains("--level=1"))
            #expect(arguments.contains("--metadata=1.2"))
            #expect(arguments.contains("--homehost=any"))
            // The device's own name: mdadm assembles a local array named md0 as /dev/md0.
            #expect(arguments.contains("--name=\(array.device.dropFirst("/dev/".count))"))
            #expect(arguments.contains("--raid-devices=2"))
            #expect(Array(arguments.suffix(2)) == array.members)
        }
        // The pool is on the storage array; ESP and BIOS boot stay partitions, one per disk.
        #expect(plan.pools.first?.device == raid.array(.storage)?.device)
        #expect(plan.device(.esp) == "/dev/vda2")
        #expect(plan.espDevices == ["/dev/vda2", "/dev/vdb2"])
        #expect(plan.grubInstallArguments.map { $0.last } == ["/dev/vda", "/dev/vdb"])
        #expect(plan.grubInstallArguments.allSatisfy { $0.contains("--target=i386-pc") })

        let text = plan.text
        #expect(text.contains("mirror:    /dev/vdb"))
        #expect(text.contains("raid member of \(raid.array(.root)!.device)"))
        #expect(text.contains("GRUB (BIOS) on: /dev/vda, /dev/vdb"))
        #expect(text.contains("/dev/vdb2") && text.contains("a copy of /dev/vda2"))
        // The plan's JSON carries the arrays for programs.
        let decoded = try JSONDecoder().decode(InstallPlan.self, from: try plan.json())
        #expect(decoded.raid == plan.raid && decoded.mirrors == plan.mirrors)
    }

    @Test("without raid nothing changes: one disk, partitions, no arrays")
    func singleDiskUnchanged() throws {
        let plan = try InstallPlan.make(
            answer: answer("target = \"/dev/vda\""), disks: [disk("/dev/vda"), disk("/dev/vdb")],
            nics: [])
        #expect(plan.raid == nil && plan.mirrors.isEmpty)
        #expect(plan.device(.root) == "/dev/vda3")
        #expect(plan.pools.first?.device == "/dev/vda5")
        #expect(plan.grubInstallArguments.count == 1)
        #expect(plan.layout.entries.allSatisfy { $0.content != PartitionLayout.raidMember })
    }

    @Test("three disks make a three-way mirror")
    func threeDisks() throws {
        let disks = [disk("/dev/sda"), disk("/dev/sdb"), disk("/dev/sdc")]
        let plan = try InstallPlan.make(
            answer: answer("targets = [\"/dev/sda\", \"/dev/sdb\", \"/dev/sdc\"]\nraid = \"raid1\""),
            disks: disks, nics: [])
        #expect(plan.raid?.arrays.allSatisfy { $0.members.count == 3 } == true)
        #expect(
            InstallPlan.mdadmCreateArguments(plan.raid!.arrays[0], level: .raid1)
                .contains("--raid-devices=3"))
        #expect(plan.grubInstallArguments.count == 3)
    }

    @Test("a filter with raid1 takes every disk it matches, and refuses one match, naming the key")
    func filter() throws {
        let disks = [
            disk("/dev/vda", serial: "A"), disk("/dev/vdb", serial: "B"),
            disk("/dev/vdc", size: .mib(16)),
        ]
        let both = try answer("raid = \"raid1\"", filter: "min-size = \"8GiB\"")
        let plan = try InstallPlan.make(answer: both, disks: disks, nics: [])
        #expect(plan.targets.map(\.path) == ["/dev/vda", "/dev/vdb"])
        let one = try answer("raid = \"raid1\"", filter: "ID_SERIAL = \"A\"")
        var withSerial = disks
        withSerial[0].properties = ["ID_SERIAL": "A"]
        withSerial[1].properties = ["ID_SERIAL": "B"]
        let error = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: one, disks: withSerial, nics: [])
        }
        #expect(error?.message.contains("disk.filter") == true)
        #expect(error?.message.contains("matches 1: /dev/vda") == true, "\(error?.message ?? "")")
    }

    @Test("members of very different sizes are refused; a few percent apart are fine")
    func sizes() throws {
        let close = [disk("/dev/vda", size: .gib(100)), disk("/dev/vdb", size: .gib(109))]
        let plan = try InstallPlan.make(answer: answer(mirror), disks: close, nics: [])
        #expect(plan.layout.diskSize == .gib(100))
        let far = [disk("/dev/vda", size: .gib(100)), disk("/dev/vdb", size: .gib(200))]
        let error = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer(mirror), disks: far, nics: [])
        }
        #expect(error?.code == .refused)
        #expect(error?.message.contains("disk.targets") == true)
        #expect(error?.message.contains("/dev/vdb") == true && error?.message.contains("/dev/vda") == true)
    }

    @Test("two selectors for one disk, a boot medium, a mounted member: refused by key and disk")
    func refusals() throws {
        let disks = [disk("/dev/vda", serial: "S1"), disk("/dev/vdb", serial: "S2")]
        let twice = #expect(throws: MartletError.self) {
            try InstallPlan.make(
                answer: answer("targets = [\"/dev/vda\", \"serial:S1\"]\nraid = \"raid1\""), disks: disks,
                nics: [])
        }
        #expect(twice?.message.contains("disk.targets") == true)
        #expect(twice?.message.contains("both select /dev/vda") == true)

        var medium = disks
        medium[1].isBootMedium = true
        let boot = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer(mirror), disks: medium, nics: [])
        }
        #expect(boot?.code == .refused)
        #expect(boot?.message.contains("disk.targets: /dev/vdb is the boot medium") == true)

        var mounted = disks
        mounted[1].partitions = [.init(path: "/dev/vdb1", number: 1, size: .gib(1), mountpoints: ["/srv"])]
        let busy = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer(mirror), disks: mounted, nics: [])
        }
        #expect(busy?.message.contains("/dev/vdb1 on /srv") == true)

        let missing = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer(mirror), disks: [disks[0]], nics: [])
        }
        #expect(missing?.message.contains("disk.targets: no disk matches '/dev/vdb'") == true)
    }

    @Test("a RAID answer written back as TOML parses to the same answer")
    func roundTrip() throws {
        for (selection, filter) in [(mirror, nil), ("raid = \"raid1\"", "min-size = \"8GiB\"")] {
            let parsed = try answer(selection, filter: filter)
            #expect(try AnswerFile.parse(path: "again.toml", contents: parsed.toml) == parsed)
        }
    }

    @Test("GRUB's menu loads mdraid1x only for a root on md")
    func grubConfig() {
        let raid = BootConfiguration.grubConfig(rootUUID: "u", kernelVersion: "6.1", raid: true)
        let single = BootConfiguration.grubConfig(rootUUID: "u", kernelVersion: "6.1")
        #expect(raid.split(separator: "\n").contains("insmod mdraid1x"))
        #expect(!single.contains("mdraid1x"))
        // The module comes before the search that needs it.
        #expect(raid.range(of: "mdraid1x")!.lowerBound < raid.range(of: "search ")!.lowerBound)
    }
}
