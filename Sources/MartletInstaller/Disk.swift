import Foundation
import MartletCore

/// A whole block device as the installer sees it: identity, geometry, what is on it and who
/// is using it. Produced by `DiskDiscovery`; plain data so tests and the UI can build their own.
public struct Disk: Codable, Sendable, Equatable {
    /// `/dev/sda`, `/dev/nvme0n1`, `/dev/loop3`.
    public var path: String
    /// Kernel name (`sda`) and `major:minor`.
    public var name: String
    public var devno: String
    public var size: ByteSize
    public var model: String?
    public var serial: String?
    public var wwn: String?
    /// `sata`, `nvme`, `usb`, `virtio`, `scsi`, `mmc`, `loop` or `unknown`.
    public var transport: String
    public var rotational: Bool
    public var removable: Bool
    public var readOnly: Bool
    public var logicalSectorSize: Int
    public var physicalSectorSize: Int
    /// `gpt`, `dos` or nil.
    public var partitionTable: String?
    public var partitions: [Partition]
    /// Signatures found on the whole device itself (a filesystem or PV without partitions,
    /// an ISO9660 image, ...).
    public var signatures: [Signature]
    /// Mount points of the disk or any of its partitions.
    public var mountpoints: [String]
    /// Kernel holders (device-mapper, md) of the disk or its partitions, by name.
    public var holders: [Holder]
    /// This disk carries the live system the installer runs from.
    public var isBootMedium: Bool
    /// Why libblkid could not read the disk, when it could not: its content is then unknown.
    public var probeError: String?
    /// udev's properties of the disk (ID_SERIAL, ID_MODEL, ID_PATH, ...), what a
    /// `[disk.filter]` matches; empty when udev does not run.
    public var properties: [String: String]

    public init(
        path: String, name: String, devno: String = "0:0", size: ByteSize, model: String? = nil,
        serial: String? = nil, wwn: String? = nil, transport: String = "unknown",
        rotational: Bool = false, removable: Bool = false, readOnly: Bool = false,
        logicalSectorSize: Int = 512, physicalSectorSize: Int = 512, partitionTable: String? = nil,
        partitions: [Partition] = [], signatures: [Signature] = [], mountpoints: [String] = [],
        holders: [Holder] = [], isBootMedium: Bool = false, properties: [String: String] = [:]
    ) {
        self.properties = properties
        self.path = path
        self.name = name
        self.devno = devno
        self.size = size
        self.model = model
        self.serial = serial
        self.wwn = wwn
        self.transport = transport
        self.rotational = rotational
        self.removable = removable
        self.readOnly = readOnly
        self.logicalSectorSize = logicalSectorSize
        self.physicalSectorSize = physicalSectorSize
        self.partitionTable = partitionTable
        self.partitions = partitions
        self.signatures = signatures
        self.mountpoints = mountpoints
        self.holders = holders
        self.isBootMedium = isBootMedium
    }

    /// A filesystem or volume-manager signature found by libblkid.
    public struct Signature: Codable, Sendable, Equatable {
        /// blkid's TYPE: `ext4`, `vfat`, `LVM2_member`, `linux_raid_member`, `zfs_member`...
        public var type: String
        public var label: String?
        public var uuid: String?

        public init(type: String, label: String? = nil, uuid: String? = nil) {
            self.type = type
            self.label = label
            self.uuid = uuid
        }

        /// A volume manager member rather than a plain filesystem.
        public var isVolumeMember: Bool {
            ["LVM2_member", "linux_raid_member", "zfs_member", "crypto_LUKS"].contains(type)
        }
    }

    public struct Partition: Codable, Sendable, Equatable {
        public var path: String
        public var number: Int
        public var size: ByteSize
        public var signatures: [Signature]
        public var mountpoints: [String]
        public var holders: [Holder]

        public init(
            path: String, number: Int, size: ByteSize, signatures: [Signature] = [],
            mountpoints: [String] = [], holders: [Holder] = []
        ) {
            self.path = path
            self.number = number
            self.size = size
            self.signatures = signatures
            self.mountpoints = mountpoints
            self.holders = holders
        }
    }

    /// A device stacked on top of this one, e.g. an LVM logical volume or an md array.
    public struct Holder: Codable, Sendable, Equatable, CustomStringConvertible {
        /// Kernel name (`dm-3`, `md127`).
        public var device: String
        /// Friendlier name: the device-mapper name (`vg-lv`) or the md name.
        public var name: String
        /// `lvm`, `md`, `dm` (other device-mapper: crypt, multipath...), or `other`.
        public var kind: String
        /// The holder is itself mounted or held (an LV mounted, an array in use).
        public var inUse: Bool
        /// Which partition (or the disk itself) it holds.
        public var holds: String

        public init(device: String, name: String, kind: String, inUse: Bool, holds: String) {
            self.device = device
            self.name = name
            self.kind = kind
            self.inUse = inUse
            self.holds = holds
        }

        public var description: String {
            "\(kind) '\(name)' (\(device)) on \(holds)\(inUse ? ", in use" : "")"
        }
    }

    /// Every signature on the disk and its partitions.
    public var allSignatures: [Signature] { signatures + partitions.flatMap(\.signatures) }

    /// Every mount point of the disk and its partitions.
    public var allMountpoints: [String] { mountpoints + partitions.flatMap(\.mountpoints) }

    /// Whether installing here destroys something: a partition table, partitions or signatures.
    public var hasData: Bool {
        partitionTable != nil || !partitions.isEmpty || !allSignatures.isEmpty || probeError != nil
    }

    /// One line about what is on the disk, for plans and listings.
    public var contentSummary: String {
        var parts: [String] = []
        if let probeError { parts.append("unreadable (\(probeError))") }
        if let partitionTable { parts.append("\(partitionTable) partition table") }
        if !partitions.isEmpty { parts.append("\(partitions.count) partition(s)") }
        let types = allSignatures.map { sig in sig.label.map { "\(sig.type) '\($0)'" } ?? sig.type }
        if !types.isEmpty { parts.append(types.joined(separator: ", ")) }
        return parts.isEmpty ? "empty" : parts.joined(separator: "; ")
    }

    /// The device path of partition `number`: `sda1`, `nvme0n1p1`, `loop0p1`.
    public func partitionPath(_ number: Int) -> String {
        Disk.partitionPath(of: path, number: number)
    }

    public static func partitionPath(of disk: String, number: Int) -> String {
        disk.last?.isNumber == true ? "\(disk)p\(number)" : "\(disk)\(number)"
    }
}
