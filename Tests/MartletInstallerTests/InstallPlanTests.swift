import Foundation
import MartletAnswer
import MartletCore
import Testing

@testable import MartletInstaller

@Suite("Partition layout and install plan")
struct InstallPlanTests {
    @Test("a 20 GiB disk: BIOS boot, 512 MiB ESP, root rest/4+12GiB, storage on the rest")
    func smallDiskLayout() throws {
        let layout = try PartitionLayout.compute(diskSize: .gib(20))
        #expect(layout.entries.map(\.role) == [.biosBoot, .esp, .root, .storage])
        #expect(layout.entries[0].start == 1 << 20)
        #expect(layout.entries[0].size == .mib(1))
        #expect(layout.entries[1].size == .mib(512))
        let rest = ByteSize.gib(20).bytes - (1 << 20) - ByteSize.mib(513).bytes - (1 << 20)
        #expect(layout.entries[2].size.bytes == ((rest / 4 + ByteSize.gib(12).bytes) >> 20) << 20)
        for (a, b) in zip(layout.entries, layout.entries.dropFirst()) { #expect(a.end == b.start) }
        #expect(layout.entries.last!.end == ByteSize.gib(20).bytes - (1 << 20))
        #expect(
            layout.entries.allSatisfy {
                $0.start % (1 << 20) == 0 && $0.size.bytes % (1 << 20) == 0
            })
        #expect(layout.entries[3].typeGUID == PartitionLayout.GUID.lvm)
    }

    @Test("above 100 GiB the ESP is 1 GiB; the default root is capped at 64 GiB")
    func largeDiskLayout() throws {
        let layout = try PartitionLayout.compute(diskSize: .gib(1024), swapSize: .gib(8))
        #expect(layout.entry(.esp)?.size == .gib(1))
        #expect(layout.entry(.root)?.size == .gib(64))
        #expect(layout.entry(.swap)?.size == .gib(8))
        #expect(layout.entries.map(\.number) == [1, 2, 3, 4, 5])
    }

    @Test("root-size is honoured; a too small disk is refused with the minimum stated")
    func sizes() throws {
        let layout = try PartitionLayout.compute(diskSize: .gib(200), rootSize: .gib(20))
        #expect(layout.entry(.root)?.size == .gib(20))
        let minimum = PartitionLayout.minimumDiskSize(rootSize: nil, swapSize: nil)
        let error = #expect(throws: MartletError.self) {
            try PartitionLayout.compute(diskSize: .gib(4))
        }
        #expect(error?.code == .refused)
        #expect(error?.message.contains("at least \(minimum)") == true)
    }

    func disk(_ path: String, size: ByteSize = .gib(50), serial: String? = nil) -> Disk {
        Disk(
            path: path, name: (path as NSString).lastPathComponent, size: size,
            model: "QEMU HARDDISK", serial: serial)
    }

    func answer(_ target: String, wipe: Bool = false) throws -> AnswerFile {
        try AnswerFile.parse(path: "a.toml", contents: validAnswer(target: target, wipe: wipe))
    }

    @Test("the plan selects by serial and refuses ambiguous or missing matches")
    func selection() throws {
        let disks = [disk("/dev/sda", serial: "A1"), disk("/dev/sdb", serial: "B2")]
        let plan = try InstallPlan.make(answer: answer("serial:B2"), disks: disks, nics: [], source: "/src")
        #expect(plan.target.path == "/dev/sdb")
        #expect(plan.pools.first?.device == "/dev/sdb5")
        #expect(plan.pools.first?.volumeGroup == "martlet")
        #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer("model:QEMU HARDDISK"), disks: disks, nics: [])
        }
        let missing = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer("/dev/sdq"), disks: disks, nics: [])
        }
        #expect(missing?.message.contains("disk.target") == true)
        #expect(missing?.hint?.contains("/dev/sda") == true)
    }

    @Test("the boot medium is refused even with wipe = true")
    func bootMedium() throws {
        var medium = disk("/dev/sdc")
        medium.isBootMedium = true
        let error = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer("/dev/sdc", wipe: true), disks: [medium], nics: [])
        }
        #expect(error?.code == .refused)
        #expect(error?.message.contains("boot medium") == true)
    }

    @Test("a mounted disk and a disk held by an md array are refused, naming who holds them")
    func inUse() throws {
        var mounted = disk("/dev/sda")
        mounted.partitions = [
            .init(path: "/dev/sda1", number: 1, size: .gib(1), mountpoints: ["/mnt/data"])
        ]
        let error = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer("/dev/sda", wipe: true), disks: [mounted], nics: [])
        }
        #expect(error?.message.contains("/dev/sda1 on /mnt/data") == true)
        var held = disk("/dev/sdb")
        held.partitions = [
            .init(
                path: "/dev/sdb1", number: 1, size: .gib(1),
                holders: [
                    .init(
                        device: "md127", name: "md127", kind: "md", inUse: true, holds: "/dev/sdb1")
                ])
        ]
        let heldError = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer("/dev/sdb", wipe: true), disks: [held], nics: [])
        }
        #expect(heldError?.message.contains("md 'md127'") == true)
        #expect(heldError?.hint?.contains("mdadm --stop") == true)
    }

    @Test("existing data needs wipe = true, and the plan lists what it destroys")
    func wipe() throws {
        var used = disk("/dev/sda")
        used.partitionTable = "gpt"
        used.partitions = [
            .init(
                path: "/dev/sda1", number: 1, size: .gib(1),
                signatures: [.init(type: "LVM2_member")])
        ]
        let error = #expect(throws: MartletError.self) {
            try InstallPlan.make(answer: answer("/dev/sda"), disks: [used], nics: [])
        }
        #expect(error?.hint?.contains("wipe = true") == true)
        let plan = try InstallPlan.make(answer: answer("/dev/sda", wipe: true), disks: [used], nics: [])
        #expect(plan.destroys.first?.contains("LVM2_member") == true)
        #expect(plan.text.contains("WIPES"))
        let json = String(decoding: try plan.json(), as: UTF8.self)
        #expect(json.contains("\"bios-boot\""))
        #expect(!json.contains("s3cret"))
    }

    @Test("networkd files: bridge over a VLAN on the NIC matched by MAC, static v4 and v6")
    func network() throws {
        let answer = try answer("/dev/sda")
        let files = Dictionary(
            uniqueKeysWithValues: NetworkConfiguration(
                    answer: answer.network,
                    ports: try NICSelection.ports(for: answer.network, nics: [])
                ).files)
        #expect(files["10-martlet-br0.netdev"]?.contains("Kind=bridge") == true)
        #expect(files["15-martlet-vlan42.netdev"]?.contains("Id=42") == true)
        #expect(
            files["20-martlet-uplink.network"]?.contains("PermanentMACAddress=52:54:00:12:34:56")
                == true)
        #expect(files["25-martlet-vlan42.network"]?.contains("Bridge=br0") == true)
        let bridge = files["30-martlet-br0.network"] ?? ""
        #expect(bridge.contains("Address=192.0.2.10/24\nGateway=192.0.2.1"))
        #expect(bridge.contains("Address=2001:db8::10/64"))
        #expect(bridge.contains("DNS=2001:db8::53"))
        #expect(!bridge.contains("DHCP"))
    }
}
