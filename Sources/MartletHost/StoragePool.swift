import Foundation
import MartletCore
import MartletValidation

/// A pool's state for `martlet pool list|show` and the API.
public struct PoolStatus: Codable, Equatable, Sendable {
    public var name: String
    public var type: String
    /// Where it lives: `VG/THINPOOL` or the directory.
    public var location: String
    public var capacity: UInt64
    public var used: UInt64
    public var free: UInt64
    public var volumes: Int
}

/// One volume: a thin LV or a raw file in a directory.
public struct VolumeInfo: Codable, Equatable, Sendable {
    public var name: String
    public var pool: String
    /// The size the guest sees.
    public var size: UInt64
    /// Bytes actually allocated in the pool (thin/sparse), when known.
    public var allocated: UInt64?
    /// The block device or file given to the VMM.
    public var path: String
}

/// LVM thin pools and directory pools behind one interface.
public protocol StoragePool: Sendable {
    var name: String { get }
    func status() throws -> PoolStatus
    func volumes() throws -> [VolumeInfo]
    /// Creates an empty (zero-filled, thin or sparse) volume.
    func createVolume(_ name: String, size: ByteSize) throws -> VolumeInfo
    /// Grows a volume; shrinking is refused because it would cut off guest data.
    func resizeVolume(_ name: String, size: ByteSize) throws -> VolumeInfo
    func deleteVolume(_ name: String) throws
}

extension StoragePool {
    /// The volume called `name`, or a `notFound` error listing what there is.
    public func volume(_ name: String) throws -> VolumeInfo {
        let all = try volumes()
        guard let volume = all.first(where: { $0.name == name }) else {
            throw MartletError(
                .notFound, "pool '\(self.name)' has no volume '\(name)'",
                hint: all.isEmpty
                    ? "create one with 'martlet volume create \(self.name)/\(name) --size SIZE'"
                    : "its volumes: \(all.map(\.name).joined(separator: ", "))")
        }
        return volume
    }

    func refuseWhenFull(_ name: String, size: ByteSize) throws {
        let status = try status()
        guard size.bytes <= status.free else {
            throw MartletError(
                .refused,
                "pool '\(self.name)' is full: volume '\(name)' needs \(size) but only \(ByteSize(status.free)) is free",
                hint: "make the volume smaller, delete unused volumes, or use another pool")
        }
    }

    /// Refuses a size of zero: a volume no guest can use, most likely a typo.
    func refuseEmpty(_ name: String, size: ByteSize) throws {
        guard size.bytes > 0 else {
            throw MartletError(
                .invalidInput, "volume '\(self.name)/\(name)': a size of 0 bytes", hint: "give a size such as \"8GiB\"")
        }
    }

    func refuseInvalidName(_ name: String) throws {
        guard VMDefinition.isValidName(name) else {
            throw MartletError(
                .invalidInput, "'\(name)' is not a valid volume name", hint: VMDefinition.nameRule)
        }
    }
}

/// Raw files `NAME.raw` in a directory on the host (ext4/xfs); sparse until written.
public struct DirectoryPool: StoragePool {
    public let name: String
    public let path: String

    public init(name: String, path: String) {
        self.name = name
        self.path = path
    }

    func file(_ volume: String) -> String { "\(path)/\(volume).raw" }

    public func status() throws -> PoolStatus {
        var stats = statvfs()
        guard statvfs(path, &stats) == 0 else {
            throw MartletError.system(
                "statvfs", path: path, hint: "create the pool directory or fix storage.toml")
        }
        let block = UInt64(stats.f_frsize)
        let capacity = UInt64(stats.f_blocks) * block
        let free = UInt64(stats.f_bavail) * block
        return PoolStatus(
            name: name, type: "directory", location: path, capacity: capacity,
            used: capacity - UInt64(stats.f_bfree) * block, free: free, volumes: try volumes().count
        )
    }

    public func volumes() throws -> [VolumeInfo] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return try entries.filter { $0.hasSuffix(".raw") }.sorted().map { entry in
            let volume = String(entry.dropLast(4))
            var info = stat()
            guard stat(file(volume), &info) == 0 else {
                throw MartletError.system("stat", path: file(volume))
            }
            return VolumeInfo(
                name: volume, pool: name, size: UInt64(info.st_size),
                allocated: UInt64(info.st_blocks) * 512, path: file(volume))
        }
    }

    public func createVolume(_ volume: String, size: ByteSize) throws -> VolumeInfo {
        try refuseInvalidName(volume)
        try refuseEmpty(volume, size: size)
        guard !FileManager.default.fileExists(atPath: file(volume)) else {
            throw MartletError(
                .refused, "volume '\(name)/\(volume)' already exists", hint: "choose another name")
        }
        try refuseWhenFull(volume, size: size)
        let fd = open(file(volume), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw MartletError.system("open", path: file(volume)) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size.bytes)) == 0 else {
            let error = MartletError.system("ftruncate", path: file(volume))
            unlink(file(volume))
            throw error
        }
        return try self.volume(volume)
    }

    public func resizeVolume(_ volume: String, size: ByteSize) throws -> VolumeInfo {
        let current = try self.volume(volume)
        guard size.bytes >= current.size else {
            throw MartletError(
                .refused,
                "shrinking '\(name)/\(volume)' from \(ByteSize(current.size)) to \(size) would cut off guest data",
                hint: "volumes only grow; give a size of at least \(ByteSize(current.size))")
        }
        try refuseWhenFull(volume, size: ByteSize(size.bytes - current.size))
        guard truncate(file(volume), off_t(size.bytes)) == 0 else {
            throw MartletError.system("truncate", path: file(volume))
        }
        return try self.volume(volume)
    }

    public func deleteVolume(_ volume: String) throws {
        _ = try self.volume(volume)
        guard unlink(file(volume)) == 0 else {
            throw MartletError.system("unlink", path: file(volume))
        }
    }
}

/// Thin logical volumes in an LVM thin pool (`VG/THINPOOL`), like Proxmox `local-lvm`.
public struct LVMThinPool: StoragePool {
    public let name: String
    public let volumeGroup: String
    public let thinPool: String

    public init(name: String, volumeGroup: String, thinPool: String) {
        self.name = name
        self.volumeGroup = volumeGroup
        self.thinPool = thinPool
    }

    struct LogicalVolume {
        var name: String
        var size: UInt64
        var dataPercent: Double
        var pool: String
        var path: String
    }

    func logicalVolumes() throws -> [LogicalVolume] {
        let result = try Command(
            "lvs",
            [
                "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                "lv_name,lv_size,data_percent,pool_lv,lv_path,lv_dm_path", volumeGroup,
            ]
        ).run(hint: "check that the volume group '\(volumeGroup)' of pool '\(name)' exists (vgs)")
        guard let object = try JSONSerialization.jsonObject(with: result.stdout) as? [String: Any],
            let report = (object["report"] as? [[String: Any]])?.first,
            let rows = report["lv"] as? [[String: String]]
        else {
            throw MartletError(.failed, "could not read the output of lvs for '\(volumeGroup)'")
        }
        return rows.map { row in
            let path = row["lv_path"].flatMap {
                FileManager.default.fileExists(atPath: $0) ? $0 : nil
            }
            return LogicalVolume(
                name: row["lv_name"] ?? "", size: UInt64(row["lv_size"] ?? "") ?? 0,
                dataPercent: Double(row["data_percent"] ?? "") ?? 0, pool: row["pool_lv"] ?? "",
                path: path ?? row["lv_dm_path"] ?? "/dev/\(volumeGroup)/\(row["lv_name"] ?? "")")
        }
    }

    public func status() throws -> PoolStatus {
        let all = try logicalVolumes()
        guard let pool = all.first(where: { $0.name == thinPool }) else {
            throw MartletError(
                .notFound,
                "the volume group '\(volumeGroup)' has no thin pool '\(thinPool)' (pool '\(name)')",
                hint: "check /etc/martlet/storage.toml and 'lvs \(volumeGroup)'")
        }
        let used = UInt64((Double(pool.size) * pool.dataPercent / 100).rounded())
        return PoolStatus(
            name: name, type: "lvm-thin", location: "\(volumeGroup)/\(thinPool)",
            capacity: pool.size,
            used: used, free: pool.size - min(used, pool.size),
            volumes: all.filter { $0.pool == thinPool }.count)
    }

    public func volumes() throws -> [VolumeInfo] {
        try logicalVolumes().filter { $0.pool == thinPool }.sorted { $0.name < $1.name }.map {
            VolumeInfo(
                name: $0.name, pool: name, size: $0.size,
                allocated: UInt64((Double($0.size) * $0.dataPercent / 100).rounded()), path: $0.path
            )
        }
    }

    public func createVolume(_ volume: String, size: ByteSize) throws -> VolumeInfo {
        try refuseInvalidName(volume)
        try refuseEmpty(volume, size: size)
        if try logicalVolumes().contains(where: { $0.name == volume }) {
            throw MartletError(
                .refused, "volume '\(name)/\(volume)' already exists", hint: "choose another name")
        }
        try refuseWhenFull(volume, size: size)
        try Command(
            "lvcreate",
            [
                "--yes", "--type", "thin", "-V", "\(size.bytes)b", "--thinpool", thinPool, "-n",
                volume, volumeGroup,
            ]
        ).run()
        // Thin volumes read back zeros until written; nothing to wipe.
        return try self.volume(volume)
    }

    public func resizeVolume(_ volume: String, size: ByteSize) throws -> VolumeInfo {
        let current = try self.volume(volume)
        guard size.bytes >= current.size else {
            throw MartletError(
                .refused,
                "shrinking '\(name)/\(volume)' from \(ByteSize(current.size)) to \(size) would cut off guest data",
                hint: "volumes only grow; give a size of at least \(ByteSize(current.size))")
        }
        guard size.bytes > current.size else { return current }
        try refuseWhenFull(volume, size: ByteSize(size.bytes - current.size))
        try Command("lvextend", ["-L", "\(size.bytes)b", "\(volumeGroup)/\(volume)"]).run()
        return try self.volume(volume)
    }

    public func deleteVolume(_ volume: String) throws {
        _ = try self.volume(volume)
        try Command("lvremove", ["--yes", "\(volumeGroup)/\(volume)"]).run()
    }
}

extension StorageConfiguration {
    /// The host's pools from `/etc/martlet/storage.toml` at `path`, pool names checked with
    /// the rule VM and volume names follow.
    public static func pools(path: String) throws -> [any StoragePool] {
        let configuration = try load(path: path) { name in
            VMDefinition.isValidName(name)
                ? nil : ("'\(name)' is not a valid pool name", VMDefinition.nameRule)
        }
        return configuration.pools.map { pool -> any StoragePool in
            switch pool.type {
            case .lvmThin:
                LVMThinPool(
                    name: pool.name, volumeGroup: pool.volumeGroup ?? "",
                    thinPool: pool.thinPool ?? "")
            case .directory:
                DirectoryPool(name: pool.name, path: pool.path ?? "")
            }
        }
    }
}
