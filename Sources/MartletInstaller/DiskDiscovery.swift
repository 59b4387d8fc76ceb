import CBlkid
import Foundation
import MartletCore

/// Finds the machine's disks from /sys/block and probes their contents with libblkid.
/// Reads only: nothing here opens a device for writing.
public struct DiskDiscovery: Sendable {
    /// Where the live system mounts its boot medium (the ISO9660 filesystem).
    public static let defaultMediumMount = "/run/martlet/medium"

    public var sysBlock: String
    public var mediumMount: String
    /// Report loop devices (for tests and for installing onto images).
    public var includeLoop: Bool

    public init(
        sysBlock: String = "/sys/block", mediumMount: String = DiskDiscovery.defaultMediumMount,
        includeLoop: Bool = true
    ) {
        self.sysBlock = sysBlock
        self.mediumMount = mediumMount
        self.includeLoop = includeLoop
    }

    /// Every whole disk worth showing, sorted by name.
    public func disks() throws -> [Disk] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: sysBlock).sorted()
        } catch {
            throw MartletError(
                .failed, "cannot list block devices in '\(sysBlock)'", hint: "is /sys mounted?",
                cause: "\(error)")
        }
        let mounts = MountTable.read()
        let mediumDevno = mounts.device(mountedAt: mediumMount)?.description
        return names.compactMap { name -> Disk? in
            let skipped = ["ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
            if skipped.contains(where: { name.hasPrefix($0) }) { return nil }
            if name.hasPrefix("loop") && !includeLoop { return nil }
            return disk(named: name, mounts: mounts, mediumDevno: mediumDevno)
        }
    }

    /// The disk at `path` (a device node or a symlink to one, e.g. /dev/disk/by-id/...).
    public func disk(path: String) throws -> Disk {
        let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        let name = (resolved as NSString).lastPathComponent
        let mounts = MountTable.read()
        guard FileManager.default.fileExists(atPath: "\(sysBlock)/\(name)"),
            let disk = disk(
                named: name, mounts: mounts,
                mediumDevno: mounts.device(mountedAt: mediumMount)?.description)
        else {
            throw MartletError(
                .notFound, "'\(path)' is not a whole disk on this machine",
                hint: "`martlet-installer disks` lists the disks (a partition is not a target)")
        }
        return disk
    }

    func disk(named name: String, mounts: MountTable, mediumDevno: String?) -> Disk? {
        let base = "\(sysBlock)/\(name)"
        let sysDevice = SysfsBlockDevice(directory: base)
        let sectors = UInt64(sysDevice.attribute("size") ?? "") ?? 0
        guard sectors > 0 else { return nil }
        let devno = sysDevice.attribute("dev") ?? "0:0"
        let path = "/dev/\(name)"
        let udev = UdevDatabase.properties(file: "\(UdevDatabase.defaultDirectory)/b\(devno)")
        var disk = Disk(
            path: path, name: name, devno: devno, size: ByteSize(sectors * 512),
            model: sysDevice.attribute("device/model") ?? udev["ID_MODEL"],
            serial: sysDevice.attribute("device/serial") ?? udev["ID_SERIAL_SHORT"],
            wwn: sysDevice.attribute("device/wwid") ?? sysDevice.attribute("wwid") ?? udev["ID_WWN"],
            transport: Self.transport(name: name, sysPath: base, udev: udev),
            rotational: sysDevice.attribute("queue/rotational") == "1",
            removable: sysDevice.attribute("removable") == "1",
            readOnly: sysDevice.attribute("ro") == "1",
            logicalSectorSize: Int(sysDevice.attribute("queue/logical_block_size") ?? "") ?? 512,
            physicalSectorSize: Int(sysDevice.attribute("queue/physical_block_size") ?? "") ?? 512,
            properties: udev)
        if name.hasPrefix("loop") {
            disk.model = sysDevice.attribute("loop/backing_file").map { "loop: \($0)" }
        }
        let probe = BlkidProbe.probe(path: path)
        disk.probeError = probe.error
        disk.partitionTable = probe.partitionTable
        disk.signatures = probe.signatures
        disk.mountpoints = mountpoints(devno, in: mounts)
        disk.holders = Self.holders(of: sysDevice, holds: path, mounts: mounts)

        let children = sysDevice.partitions.filter { $0.name.hasPrefix(name) }
        for child in children {
            let partPath = "/dev/\(child.name)"
            disk.partitions.append(
                Disk.Partition(
                    path: partPath, number: Int(child.attribute("partition") ?? "") ?? 0,
                    size: ByteSize(child.size ?? 0),
                    signatures: BlkidProbe.probe(path: partPath).signatures,
                    mountpoints: mountpoints(child.attribute("dev") ?? "0:0", in: mounts),
                    holders: Self.holders(of: child, holds: partPath, mounts: mounts)))
        }
        disk.partitions.sort { $0.number < $1.number }

        var isMediumDevice = false
        if let mediumDevno {
            isMediumDevice =
                devno == mediumDevno
                || children.contains { $0.attribute("dev") == mediumDevno }
        }
        let hasMartletISO = disk.allSignatures.contains {
            $0.type == "iso9660" && ($0.label ?? "").uppercased().hasPrefix("MARTLET")
        }
        disk.isBootMedium = isMediumDevice || hasMartletISO
        return disk
    }


    static func transport(name: String, sysPath: String, udev: [String: String]) -> String {
        if name.hasPrefix("loop") { return "loop" }
        if name.hasPrefix("nvme") { return "nvme" }
        if name.hasPrefix("vd") { return "virtio" }
        if name.hasPrefix("mmcblk") { return "mmc" }
        let real = URL(fileURLWithPath: sysPath).resolvingSymlinksInPath().path
        if real.contains("/usb") { return "usb" }
        if real.contains("/virtio") { return "virtio" }
        if real.contains("/ata") { return "sata" }
        if let bus = udev["ID_BUS"] { return bus == "ata" ? "sata" : bus }
        return real.contains("/host") ? "scsi" : "unknown"
    }

    /// Mount points (and `[swap]`) of the device numbered `devno` (`major:minor`).
    func mountpoints(_ devno: String, in mounts: MountTable) -> [String] {
        DeviceNumber(devno).map { mounts.mountpoints(of: $0) } ?? []
    }

    static func holders(of device: SysfsBlockDevice, holds: String, mounts: MountTable)
        -> [Disk.Holder]
    {
        device.holders.map { name in
            let holder = SysfsBlockDevice(directory: "/sys/block/\(name)")
            let dmName = holder.attribute("dm/name")
            let dmUUID = holder.attribute("dm/uuid") ?? ""
            let kind =
                dmUUID.hasPrefix("LVM-")
                ? "lvm"
                : name.hasPrefix("md")
                    ? "md"
                    : dmName != nil ? "dm" : "other"
            // An LVM LV is only safe to deactivate when nothing mounts or stacks on it;
            // any md array counts as in use: stopping it is the user's decision.
            let inUse =
                kind != "lvm" || !(holder.number.map { mounts.mountpoints(of: $0) } ?? []).isEmpty
                || !holder.holders.isEmpty
            return Disk.Holder(
                device: name,
                name: dmName ?? holder.attribute("md/metadata_version").map { _ in name } ?? name,
                kind: kind, inUse: inUse, holds: holds)
        }
    }
}

/// Read-only probing with libblkid: partition table type and every superblock signature
/// (all of them, like wipefs, so stale LVM/md/ZFS labels next to a filesystem show up).
enum BlkidProbe {
    struct Result {
        var partitionTable: String?
        var signatures: [Disk.Signature] = []
        var error: String?
    }

    static func probe(path: String) -> Result {
        var result = Result()
        guard let probe = blkid_new_probe_from_filename(path) else {
            result.error = String(cString: strerror(errno))
            return result
        }
        defer { blkid_free_probe(probe) }
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(
            probe,
            Int32(BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID | BLKID_SUBLKS_TYPE | BLKID_SUBLKS_MAGIC))
        blkid_probe_enable_partitions(probe, 1)
        blkid_probe_set_partitions_flags(probe, Int32(BLKID_PARTS_MAGIC))
        while blkid_do_probe(probe) == 0 {
            if let table = value(probe, "PTTYPE") {
                result.partitionTable = table
            } else if let type = value(probe, "TYPE") {
                let signature = Disk.Signature(
                    type: type, label: value(probe, "LABEL"), uuid: value(probe, "UUID"))
                if !result.signatures.contains(signature) { result.signatures.append(signature) }
            }
        }
        return result
    }

    private static func value(_ probe: blkid_probe, _ name: String) -> String? {
        var data: UnsafePointer<CChar>?
        var length = 0
        guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else {
            return nil
        }
        return String(cString: data)
    }
}
