import Foundation
import MartletAnswer
import MartletCore

/// Everything an install will do, decided before anything is written: which disks, the
/// partition layout, the storage pools and the system settings. `make` is a pure function of
/// the answers and the discovered disks, and it performs every safety check.
public struct InstallPlan: Codable, Sendable, Equatable {
    /// The root filesystem tree that gets copied.
    public var source: String
    public var target: Disk
    public var layout: PartitionLayout
    /// Existing content that will be destroyed, one line per item (empty on a blank disk).
    public var destroys: [String]
    public var pools: [StoragePool]
    public var extraDisks: [Disk]
    /// The NICs under the management bridge (or its bond), by name or MAC.
    public var ports: [InterfaceSelector]
    public var answer: AnswerFile
    /// With `raid`: the other disks of the mirror, partitioned exactly as `target`.
    public var mirrors: [Disk] = []
    /// The md arrays over the members' partitions (nil on a single disk).
    public var raid: Raid?

    /// Software RAID: one md array per partition role that holds data (root, swap, storage),
    /// over that partition of every member disk; the BIOS boot partition and the ESP stay
    /// plain partitions on every disk (firmware cannot read md), kept identical.
    public struct Raid: Codable, Sendable, Equatable {
        public var level: AnswerFile.RaidLevel
        public var arrays: [MDArray]

        public struct MDArray: Codable, Sendable, Equatable {
            /// The md device the installer creates (`/dev/md0`); the installed host finds the
            /// filesystems on it by UUID, whatever number it assembles it under.
            public var device: String
            /// The array's name in its superblock, its device's (`md0`); created with homehost
            /// `any`, so the generic initramfs, built without this machine's mdadm.conf,
            /// assembles it by scanning. mdadm takes a numeric name of a local array as its
            /// number: the host shows `/dev/md0` as the plan did, not a number counted down
            /// from md127 as for a name like `root`.
            public var name: String
            public var role: PartitionLayout.Role
            public var members: [String]
        }

        public func array(_ role: PartitionLayout.Role) -> MDArray? { arrays.first { $0.role == role } }
    }

    /// The target and its mirrors: every disk that gets the partition table and GRUB.
    public var targets: [Disk] { [target] + mirrors }

    /// The device that holds a role's content: the md array with RAID, else the target's partition.
    public func device(_ role: PartitionLayout.Role) -> String? {
        if let array = raid?.array(role) { return array.device }
        return layout.entry(role).map { target.partitionPath($0.number) }
    }

    /// The ESP of every target disk (the first is mounted at /boot/efi, the others are copies).
    public var espDevices: [String] {
        guard let esp = layout.entry(.esp) else { return [] }
        return targets.map { $0.partitionPath(esp.number) }
    }

    /// `mdadm --create` for one array. `--assume-clean`: a new array has no data to keep in
    /// sync; every block the host reads (ext4, LVM thin) is written through md to every
    /// member first, and a full initial resync would write the whole disk before the host
    /// could lose one (a scrub's mismatch_cnt counts never-written blocks only).
    public static func mdadmCreateArguments(_ array: Raid.MDArray, level: AnswerFile.RaidLevel)
        -> [String]
    {
        [
            "--create", array.device, "--run", "--level=\(level == .raid1 ? "1" : level.rawValue)",
            "--metadata=1.2", "--homehost=any", "--name=\(array.name)", "--assume-clean",
            "--raid-devices=\(array.members.count)",
        ] + array.members
    }

    /// `grub-install` for BIOS, once per target disk: each disk's first sector and BIOS boot
    /// partition carry GRUB, so either disk boots alone.
    public var grubInstallArguments: [[String]] {
        targets.map { ["grub-install", "--target=i386-pc", "--recheck", $0.path] }
    }

    /// A VM storage pool as written to /etc/martlet/storage.toml.
    public struct StoragePool: Codable, Sendable, Equatable {
        public var name: String
        public var type: AnswerFile.StorageType
        /// The partition backing it (e.g. `/dev/sda5`, `/dev/sdb1`).
        public var device: String
        /// lvm-thin: volume group and thin pool.
        public var volumeGroup: String?
        public var thinPool: String?
        /// directory: the filesystem and where it is mounted on the host.
        public var filesystem: String?
        public var path: String?
    }

    public static let defaultSource = "/run/martlet/host-root"
    public static let storageDirectory = "/var/lib/martlet/storage"

    /// Builds the plan for `answer` against the disks and NICs found on this machine.
    public static func make(
        answer: AnswerFile, disks: [Disk], nics: [NIC], source: String = InstallPlan.defaultSource
    ) throws -> InstallPlan {
        let ports = try NICSelection.ports(for: answer.network, nics: nics)
        let members = try selectTargets(answer.disk, from: disks)
        let target = members[0]
        let targetKey = answer.disk.raid == nil ? "disk.target" : targetsKey(answer.disk)
        var destroys: [String] = []
        for disk in members { destroys += try check(disk, wipe: answer.disk.wipe, key: targetKey) }
        let storageContent =
            answer.storage.type == .lvmThin ? "lvm" : answer.disk.filesystem.rawValue
        // A mirror is as large as its smallest member.
        let smallest = members.min { $0.size < $1.size }!
        var layout: PartitionLayout
        do {
            layout = try PartitionLayout.compute(
                diskSize: smallest.size, rootSize: answer.disk.rootSize,
                swapSize: answer.disk.swapSize, storageContent: storageContent)
        } catch let error as MartletError {
            throw MartletError(
                error.code, "\(smallest.path): \(error.message)", hint: error.hint, cause: error.cause
            )
        }
        var raid: Raid?
        if let level = answer.disk.raid {
            let dataRoles: [PartitionLayout.Role] = [.root, .storage, .swap]
            var arrays: [Raid.MDArray] = []
            for role in dataRoles {
                guard let entry = layout.entry(role) else { continue }
                arrays.append(
                    Raid.MDArray(
                        device: "/dev/md\(arrays.count)", name: "md\(arrays.count)", role: role,
                        members: members.map { $0.partitionPath(entry.number) }))
            }
            raid = Raid(level: level, arrays: arrays)
            layout.entries = layout.entries.map { entry in
                guard dataRoles.contains(entry.role) else { return entry }
                var member = entry
                member.typeGUID = PartitionLayout.GUID.linuxRAID
                member.content = PartitionLayout.raidMember
                return member
            }
        }
        let storageDevice =
            raid?.array(.storage)?.device ?? target.partitionPath(layout.entry(.storage)!.number)
        var pools = [pool(answer, name: "local", device: storageDevice, suffix: "")]
        var extras: [Disk] = []
        for (index, selector) in answer.storage.extraDisks.enumerated() {
            let disk = try select(selector, key: "storage.extra-disks", from: disks)
            guard !members.contains(where: { $0.path == disk.path }),
                !extras.contains(where: { $0.path == disk.path })
            else {
                throw MartletError(
                    .invalidInput,
                    "storage.extra-disks: '\(selector)' selects \(disk.path), which is already used",
                    hint: "each disk may appear once, and not as an install target")
            }
            destroys += try check(disk, wipe: answer.disk.wipe, key: "storage.extra-disks")
            let minimum = PartitionLayout.minimumStorageSize.bytes + 2 * PartitionLayout.alignment
            guard disk.size.bytes >= minimum else {
                throw MartletError(
                    .refused,
                    "storage.extra-disks: \(disk.path) is too small: \(disk.size), "
                        + "an extra pool needs at least \(ByteSize(minimum))")
            }
            extras.append(disk)
            pools.append(
                pool(
                    answer, name: "extra\(index + 1)", device: disk.partitionPath(1),
                    suffix: "-extra\(index + 1)"))
        }
        return InstallPlan(
            source: source, target: target, layout: layout, destroys: destroys, pools: pools,
            extraDisks: extras, ports: ports, answer: answer, mirrors: Array(members.dropFirst()),
            raid: raid)
    }

    /// The key an answer names its RAID disks with, for messages.
    static func targetsKey(_ disk: AnswerFile.DiskAnswer) -> String {
        disk.targets.isEmpty ? "disk.filter" : "disk.targets"
    }

    /// A mirror's members may differ this much in size: disks sold as the same size differ
    /// by a few percent between vendors; more than that is usually the wrong disk (a filter
    /// that also caught a data disk), and the space beyond the smallest would lie unused.
    public static let mirrorSizeTolerance = 0.10

    /// Whether two disks may mirror each other: the larger is at most `mirrorSizeTolerance`
    /// larger than the smaller. The text UI offers partners by the same rule.
    public static func mirrorSizesMatch(_ first: ByteSize, _ second: ByteSize) -> Bool {
        let (smaller, larger) = first < second ? (first, second) : (second, first)
        return Double(larger.bytes) <= Double(smaller.bytes) * (1 + mirrorSizeTolerance)
    }

    /// The install disks: the one target, or every member of the mirror. Refuses a mirror of
    /// fewer than two disks, a disk selected twice, and members of very different sizes.
    public static func selectTargets(_ answer: AnswerFile.DiskAnswer, from disks: [Disk]) throws
        -> [Disk]
    {
        guard let level = answer.raid else {
            return [try select(answer.target, key: "disk.target", from: disks)]
        }
        let key = targetsKey(answer)
        var members: [Disk] = []
        if answer.targets.isEmpty {
            members = matches(answer.target, from: disks)
            guard members.count >= 2 else {
                throw MartletError(
                    .invalidInput,
                    "\(key): \(level.rawValue) needs two or more disks, and '\(answer.target)' matches "
                        + "\(members.count)\(members.isEmpty ? "" : ": " + members.map(\.path).joined(separator: ", "))",
                    hint: "widen the filter, or list the disks: targets = [\"/dev/sda\", \"/dev/sdb\"] "
                        + "(`martlet-installer disks --match ANSWER` shows what it selects)")
            }
        } else {
            for selector in answer.targets {
                let disk = try select(selector, key: key, from: disks)
                if let earlier = members.firstIndex(where: { $0.path == disk.path }) {
                    throw MartletError(
                        .invalidInput,
                        "\(key): '\(answer.targets[earlier])' and '\(selector)' both select \(disk.path)",
                        hint: "a mirror needs distinct disks")
                }
                members.append(disk)
            }
        }
        let smallest = members.min { $0.size < $1.size }!
        let largest = members.max { $0.size < $1.size }!
        if !mirrorSizesMatch(smallest.size, largest.size) {
            throw MartletError(
                .refused,
                "\(key): \(largest.path) (\(largest.size)) is more than "
                    + "\(Int(mirrorSizeTolerance * 100))% larger than \(smallest.path) (\(smallest.size)); "
                    + "a mirror holds only as much as its smallest disk, "
                    + "\(ByteSize(largest.size.bytes - smallest.size.bytes)) would lie unused",
                hint: "mirror disks of about the same size, or check that the selection names the disks you mean")
        }
        return members
    }

    private static func pool(
        _ answer: AnswerFile, name: String, device: String, suffix: String
    ) -> StoragePool {
        switch answer.storage.type {
        case .lvmThin:
            StoragePool(
                name: name, type: .lvmThin, device: device,
                volumeGroup: answer.storage.volumeGroup + suffix, thinPool: "data")
        case .directory:
            StoragePool(
                name: name, type: .directory, device: device,
                filesystem: answer.disk.filesystem.rawValue, path: storageDirectory + suffix)
        }
    }

    /// Every disk `selector` names: a path names one disk even if it is the boot medium (the
    /// safety checks refuse it by name); the others never match the boot medium or a
    /// read-only disk.
    public static func matches(_ selector: DiskSelector, from disks: [Disk]) -> [Disk] {
        let candidates = disks.filter { !$0.isBootMedium && !$0.readOnly }
        let matches: [Disk]
        switch selector {
        case .filter(let filter):
            matches = candidates.filter { filter.matches(size: $0.size, properties: $0.properties) }
        case .path(let path):
            let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
            matches = disks.filter { $0.path == path || $0.path == resolved }
        case .serial(let serial): matches = candidates.filter { $0.serial == serial }
        case .model(let model): matches = candidates.filter { $0.model == model }
        case .wwn(let wwn):
            matches = candidates.filter { ($0.wwn ?? "").lowercased().hasSuffix(wwn.lowercased()) }
        case .smallest:
            matches =
                candidates.filter { $0.transport != "loop" }.min { $0.size < $1.size }.map { [$0] }
                ?? []
        case .largest:
            matches =
                candidates.filter { $0.transport != "loop" }.max { $0.size < $1.size }.map { [$0] }
                ?? []
        }
        return matches
    }

    /// The one disk `selector` names; errors say which disks there were.
    public static func select(_ selector: DiskSelector, key: String, from disks: [Disk]) throws
        -> Disk
    {
        let matches = matches(selector, from: disks)
        func identity(_ disk: Disk) -> String {
            "\(disk.path) (\(disk.size), \(disk.model ?? "no model"), serial \(disk.serial ?? "-"))"
        }
        let listing = disks.map(identity).joined(separator: "; ")
        guard let disk = matches.first else {
            throw MartletError(
                .notFound, "\(key): no disk matches '\(selector)'",
                hint: "disks on this machine: \(listing.isEmpty ? "none" : listing)")
        }
        guard matches.count == 1 else {
            throw MartletError(
                .invalidInput,
                "\(key): '\(selector)' matches \(matches.count) disks: "
                    + matches.map(identity).joined(separator: ", "),
                hint: "name the disk by path or serial, or narrow the filter "
                    + "(`martlet-installer disks --match ANSWER` shows what it selects)")
        }
        return disk
    }

    /// Every safety check of one disk; returns what wiping it destroys.
    public static func check(_ disk: Disk, wipe: Bool, key: String) throws -> [String] {
        if disk.isBootMedium {
            throw MartletError(
                .refused, "\(key): \(disk.path) is the boot medium the installer runs from",
                hint: "choose another disk; `martlet-installer disks` marks the boot medium")
        }
        if disk.readOnly {
            throw MartletError(.refused, "\(key): \(disk.path) is read-only")
        }
        let mounts =
            disk.mountpoints.map { "\(disk.path) on \($0)" }
            + disk.partitions.flatMap { p in p.mountpoints.map { "\(p.path) on \($0)" } }
        if !mounts.isEmpty {
            throw MartletError(
                .refused,
                "\(key): \(disk.path) is in use: mounted (\(mounts.joined(separator: ", ")))",
                hint: "unmount it (umount / swapoff) or choose another disk")
        }
        let holders = disk.holders + disk.partitions.flatMap(\.holders)
        let busy = holders.filter(\.inUse)
        if !busy.isEmpty {
            let stop = busy.contains { $0.kind == "md" } ? "mdadm --stop, " : ""
            throw MartletError(
                .refused,
                "\(key): \(disk.path) is held by \(busy.map(\.description).joined(separator: "; "))",
                hint:
                    "stop what uses it (\(stop)umount, vgchange -an, dmsetup remove) or choose another disk"
            )
        }
        var destroys: [String] = []
        if disk.hasData {
            destroys.append("\(disk.path): \(disk.contentSummary)")
        }
        for holder in holders {
            destroys.append("\(disk.path): active LVM volume \(holder.name) (will be deactivated)")
        }
        if !destroys.isEmpty && !wipe {
            throw MartletError(
                .refused,
                "\(key): \(disk.path) is not empty (\(disk.contentSummary)"
                    + (holders.isEmpty
                        ? ""
                        : "; active LVM volumes \(holders.map(\.name).joined(separator: ", "))")
                    + ")",
                hint: "set wipe = true in [disk] to destroy its contents, or choose an empty disk")
        }
        return destroys
    }
}

extension InstallPlan {
    /// The plan for a person: disks, partitions, pools and settings. Passwords are not shown.
    public var text: String {
        var lines: [String] = []
        let global = answer.global
        lines.append("Install plan")
        lines.append("  source:    \(source)")
        for (index, disk) in targets.enumerated() {
            lines.append(
                "  \(index == 0 ? "target:   " : "mirror:   ") \(disk.path)  \(disk.size)  \(disk.model ?? "")  serial \(disk.serial ?? "-")"
            )
        }
        if destroys.isEmpty {
            lines.append("  wipes:     nothing (the disk is empty)")
        } else {
            for (index, item) in destroys.enumerated() {
                lines.append("  \(index == 0 ? "WIPES:    " : "          ") \(item)")
            }
        }
        lines.append(
            mirrors.isEmpty ? "  partitions (GPT):" : "  partitions (GPT, the same on each of \(targets.count) disks):")
        for disk in targets {
            for entry in layout.entries {
                let device = disk.partitionPath(entry.number)
                var content = entry.content ?? "-"
                if let array = raid?.array(entry.role) {
                    content = "raid member of \(array.device)"
                } else if entry.role == .esp && disk.path != target.path {
                    content = "vfat, a copy of \(target.partitionPath(entry.number))"
                }
                lines.append(
                    "    \(device.padding(toLength: 16, withPad: " ", startingAt: 0)) "
                        + "\(entry.name.padding(toLength: 10, withPad: " ", startingAt: 0)) "
                        + "\(entry.size.description.padding(toLength: 10, withPad: " ", startingAt: 0)) "
                        + content)
            }
        }
        if let raid {
            lines.append("  \(raid.level.rawValue) arrays (md, metadata 1.2):")
            for array in raid.arrays {
                let content =
                    switch array.role {
                    case .root: "ext4 /"
                    case .swap: "swap"
                    default: answer.storage.type == .lvmThin ? "lvm" : answer.disk.filesystem.rawValue
                    }
                lines.append(
                    "    \(array.device.padding(toLength: 16, withPad: " ", startingAt: 0)) "
                        + "\(array.role.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) "
                        + "\(content) over \(array.members.joined(separator: " + "))")
            }
            lines.append("  GRUB (BIOS) on: \(targets.map(\.path).joined(separator: ", "))")
        }
        lines.append("  storage pools:")
        for pool in pools {
            switch pool.type {
            case .lvmThin:
                lines.append(
                    "    \(pool.name): lvm-thin \(pool.volumeGroup ?? "")/\(pool.thinPool ?? "") on \(pool.device)"
                )
            case .directory:
                lines.append(
                    "    \(pool.name): directory \(pool.path ?? "") (\(pool.filesystem ?? "")) on \(pool.device)"
                )
            }
        }
        lines.append("  hostname:  \(global.hostname)")
        lines.append("  timezone:  \(global.timezone)   keyboard: \(global.keyboard)")
        let password: String =
            switch global.rootPassword {
            case .plain: "password set"
            case .hashed: "password hash set"
            case nil: "no password"
            }
        lines.append("  root:      \(password), \(global.rootSSHKeys.count) SSH key(s)")
        let net = answer.network
        let ports = self.ports.map(\.description).joined(separator: ", ")
        var network =
            net.bond.map { "br0 over \(NetworkConfiguration.bondName) (\($0.mode.rawValue): \(ports))" }
            ?? "br0 over \(ports)"
        if let mtu = net.mtu { network += " MTU \(mtu)" }
        if let vlan = net.vlan { network += " (VLAN \(vlan))" }
        network +=
            net.mode == .dhcp
            ? ", DHCP" : ", \(net.address ?? "") via \(net.gateway ?? "no gateway")"
        switch net.ipv6 {
        case .auto: network += ", IPv6 auto"
        case .off: network += ", IPv6 off"
        case .address(let address): network += ", IPv6 \(address)"
        }
        if !net.dns.isEmpty { network += ", DNS \(net.dns.joined(separator: " "))" }
        lines.append("  network:   \(network)")
        if let firstBoot = answer.firstBoot {
            lines.append("  first boot: runs \(firstBoot.script) at \(firstBoot.at.rawValue)")
        }
        if let postInstall = answer.postInstall {
            lines.append("  webhook:   \(postInstall.webhook)")
        }
        lines.append("  then:      \(global.rebootMode.rawValue)")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The plan as JSON with passwords replaced by a marker.
    public func json() throws -> Data {
        var copy = self
        switch copy.answer.global.rootPassword {
        case .plain: copy.answer.global.rootPassword = .plain("<redacted>")
        case .hashed: copy.answer.global.rootPassword = .hashed("<redacted>")
        case nil: break
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(copy)
    }
}
