import MartletAnswer
import MartletCore

/// The GPT layout of the install disk: BIOS boot, ESP, root, optional swap, VM storage.
/// Computed by a pure function so the UI can show it as the user changes sizes.
public struct PartitionLayout: Codable, Sendable, Equatable {
    public enum Role: String, Codable, Sendable {
        case biosBoot = "bios-boot"
        case esp
        case root
        case swap
        case storage
    }

    public struct Entry: Codable, Sendable, Equatable {
        public var number: Int
        public var role: Role
        /// The GPT partition name.
        public var name: String
        /// Byte offset and length, both multiples of 1 MiB.
        public var start: UInt64
        public var size: ByteSize
        public var typeGUID: String
        /// What goes into it: `vfat`, `ext4`, `xfs`, `swap`, `lvm`, `raid` (an md member) or
        /// nil (BIOS boot).
        public var content: String?

        public var end: UInt64 { start + size.bytes }
    }

    public var diskSize: ByteSize
    public var entries: [Entry]

    public static let alignment: UInt64 = 1 << 20
    /// The content of a partition that is a member of an md array.
    public static let raidMember = "raid"
    public static let minimumRootSize = AnswerFile.DiskAnswer.minimumRootSize
    public static let minimumStorageSize = ByteSize.gib(1)
    public static let maximumDefaultRootSize = ByteSize.gib(64)

    public enum GUID {
        public static let biosBoot = "21686148-6449-6E6F-744E-656564454649"
        public static let esp = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        public static let linuxData = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        public static let swap = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
        public static let lvm = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
        public static let linuxRAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
    }

    /// ESP size: 512 MiB, or 1 GiB on disks above 100 GiB.
    public static func espSize(diskSize: ByteSize) -> ByteSize {
        diskSize > .gib(100) ? .gib(1) : .mib(512)
    }

    /// The smallest disk that holds this layout with the given root and swap sizes.
    public static func minimumDiskSize(rootSize: ByteSize?, swapSize: ByteSize?) -> ByteSize {
        let root = max(rootSize ?? minimumRootSize, minimumRootSize)
        // Leading alignment gap + BIOS boot + ESP + root + swap + storage + backup GPT.
        return ByteSize(
            alignment + ByteSize.mib(1).bytes + ByteSize.mib(512).bytes + root.bytes
                + (swapSize?.bytes ?? 0) + minimumStorageSize.bytes + alignment)
    }

    /// Lays out a disk of `diskSize`. Root defaults to a quarter of what is left after the
    /// boot partitions plus 12 GiB, capped at 64 GiB; storage takes the rest.
    public static func compute(
        diskSize: ByteSize, rootSize: ByteSize? = nil, swapSize: ByteSize? = nil,
        rootFilesystem: String = "ext4", storageContent: String = "lvm"
    ) throws -> PartitionLayout {
        let minimum = minimumDiskSize(rootSize: rootSize, swapSize: swapSize)
        guard diskSize >= minimum else {
            throw MartletError(
                .refused,
                "the disk is too small: \(diskSize), the layout needs at least \(minimum)",
                hint: "choose a disk of at least \(minimum), or a smaller root-size / swap-size")
        }
        let usableEnd = (diskSize.bytes / alignment) * alignment - alignment
        var entries: [Entry] = []
        var cursor = alignment
        func add(_ role: Role, _ name: String, _ size: UInt64, _ guid: String, _ content: String?) {
            let rounded = (size / alignment) * alignment
            entries.append(
                Entry(
                    number: entries.count + 1, role: role, name: name, start: cursor,
                    size: ByteSize(rounded), typeGUID: guid, content: content))
            cursor += rounded
        }
        add(.biosBoot, "bios-boot", ByteSize.mib(1).bytes, GUID.biosBoot, nil)
        add(.esp, "esp", espSize(diskSize: diskSize).bytes, GUID.esp, "vfat")
        let swap = swapSize.map { ($0.bytes / alignment) * alignment } ?? 0
        let rest = usableEnd - cursor - swap
        let root: UInt64
        if let rootSize {
            root = rootSize.bytes
        } else {
            let wanted = min(rest / 4 + ByteSize.gib(12).bytes, maximumDefaultRootSize.bytes)
            root = max(min(wanted, rest - minimumStorageSize.bytes), minimumRootSize.bytes)
        }
        guard root + minimumStorageSize.bytes <= rest else {
            throw MartletError(
                .refused,
                "root-size \(ByteSize(root)) leaves less than \(minimumStorageSize) for VM storage "
                    + "on a \(diskSize) disk",
                hint: "use a root-size of at most \(ByteSize(rest - minimumStorageSize.bytes))")
        }
        add(.root, "root", root, GUID.linuxData, rootFilesystem)
        if swap > 0 { add(.swap, "swap", swap, GUID.swap, "swap") }
        add(
            .storage, "storage", usableEnd - cursor,
            storageContent == "lvm" ? GUID.lvm : GUID.linuxData, storageContent)
        return PartitionLayout(diskSize: diskSize, entries: entries)
    }

    public func entry(_ role: Role) -> Entry? { entries.first { $0.role == role } }
}
