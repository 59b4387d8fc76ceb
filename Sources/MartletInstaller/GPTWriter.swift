import CParted
import Foundation
import MartletCore
import Synchronization

/// Writes a `PartitionLayout` as a fresh GPT with libparted: exact (1 MiB-aligned) geometry,
/// partition names and type GUIDs through parted's flags, then tells the kernel.
enum GPTWriter {
    /// libparted reports problems through a global exception handler; this one records the
    /// message and cancels, so no prompt ever waits on a terminal.
    private static let lastException = Mutex("")

    private static let handler:
        @convention(c) (UnsafeMutablePointer<PedException>?) -> PedExceptionOption = {
            exception in
            guard let exception else { return PED_EXCEPTION_UNHANDLED }
            let message = exception.pointee.message.map { String(cString: $0) } ?? "unknown error"
            GPTWriter.lastException.withLock { $0 = message }
            // Warnings and information do not stop the write; errors cancel it.
            if exception.pointee.type.rawValue < PED_EXCEPTION_ERROR.rawValue {
                return exception.pointee.options.rawValue & PED_EXCEPTION_IGNORE.rawValue != 0
                    ? PED_EXCEPTION_IGNORE : PED_EXCEPTION_UNHANDLED
            }
            return exception.pointee.options.rawValue & PED_EXCEPTION_CANCEL.rawValue != 0
                ? PED_EXCEPTION_CANCEL : PED_EXCEPTION_UNHANDLED
        }

    static func write(_ layout: PartitionLayout, to path: String) throws {
        ped_exception_set_handler(handler)
        lastException.withLock { $0 = "" }
        func failure(_ call: String) -> MartletError {
            MartletError(.failed, "libparted \(call) failed on \(path)", cause: lastException.withLock { $0 })
        }
        guard let device = ped_device_get(path) else { throw failure("ped_device_get") }
        defer { ped_device_destroy(device) }
        guard ped_device_open(device) != 0 else { throw failure("ped_device_open") }
        defer { ped_device_close(device) }
        guard let type = ped_disk_type_get("gpt"), let disk = ped_disk_new_fresh(device, type)
        else {
            throw failure("ped_disk_new_fresh")
        }
        defer { ped_disk_destroy(disk) }
        let sectorSize = UInt64(device.pointee.sector_size)
        for entry in layout.entries {
            let fsName: String? =
                switch entry.content {
                case "vfat": "fat32"
                case "swap": "linux-swap(v1)"
                case "ext4": "ext4"
                case "xfs": "xfs"
                default: nil
                }
            let fsType = fsName.flatMap { ped_file_system_type_get($0) }
            let start = PedSector(entry.start / sectorSize)
            let end = PedSector(entry.end / sectorSize) - 1
            guard let part = ped_partition_new(disk, PED_PARTITION_NORMAL, fsType, start, end)
            else {
                throw failure("ped_partition_new (\(entry.name))")
            }
            ped_partition_set_name(part, entry.name)
            let flag: PedPartitionFlag? =
                switch entry.role {
                case _ where entry.content == PartitionLayout.raidMember: PED_PARTITION_RAID
                case .biosBoot: PED_PARTITION_BIOS_GRUB
                case .esp: PED_PARTITION_ESP
                case .swap: PED_PARTITION_SWAP
                case .storage where entry.content == "lvm": PED_PARTITION_LVM
                default: nil
                }
            if let flag, ped_partition_set_flag(part, flag, 1) == 0 {
                throw failure("ped_partition_set_flag (\(entry.name))")
            }
            guard let constraint = ped_constraint_exact(&part.pointee.geom) else {
                throw failure("ped_constraint_exact")
            }
            defer { ped_constraint_destroy(constraint) }
            guard ped_disk_add_partition(disk, part, constraint) != 0 else {
                ped_partition_destroy(part)
                throw failure("ped_disk_add_partition (\(entry.name))")
            }
        }
        guard ped_disk_commit_to_dev(disk) != 0 else { throw failure("ped_disk_commit_to_dev") }
        guard ped_disk_commit_to_os(disk) != 0 else {
            throw MartletError(
                .failed, "the kernel did not take the new partition table of \(path)",
                hint: "something still uses the disk; for a loop device attach it with losetup -P",
                cause: lastException.withLock { $0 })
        }
    }
}
