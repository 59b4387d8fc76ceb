import Foundation
import MartletCore

/// The EFI system partitions of a mirrored install. Every disk's ESP is formatted with the
/// same FAT volume serial, so fstab's `UUID=` mounts /boot/efi from whichever disk is left,
/// and once GRUB has filled the first ESP its files are copied onto the others.
///
/// Files, not blocks: a byte-for-byte `dd` of the 512-MiB partition took about 75 s of an
/// install under QEMU/TCG, the files are a few MiB. mtools reads and writes FAT without the
/// kernel's vfat, so the same code runs on a build machine whose kernel has none.
public struct ESPMirror: Sendable {
    /// The FAT volume serial all ESPs share: 8 hex digits, as `mkfs.vfat -i` takes it.
    public let serial: String

    public init(serial: String = ESPMirror.randomSerial()) { self.serial = serial }

    public static func randomSerial() -> String {
        String(format: "%08X", UInt32.random(in: 1...UInt32.max))
    }

    /// `mkfs.vfat` for one ESP, labelled `EFI`.
    public func formatArguments(_ device: String) -> [String] {
        ["-F", "32", "-n", "EFI", "-i", serial, device]
    }

    /// Copies every file of `source` onto `destination` (both unmounted FAT file systems),
    /// through `scratch`, an empty directory that is emptied again afterwards.
    public static func copyFiles(
        from source: String, to destination: String, scratch: String,
        run: (String, [String]) throws -> Void
    ) throws {
        defer {
            for item in (try? FileManager.default.contentsOfDirectory(atPath: scratch)) ?? [] {
                try? FileManager.default.removeItem(atPath: "\(scratch)/\(item)")
            }
        }
        // -s recursive, -m keep modification times, -n no overwrite prompts, -Q stop at the
        // first error; mtools expands `::/*` itself (an empty ESP is an error: GRUB is missing).
        try run("mcopy", ["-s", "-m", "-n", "-Q", "-i", source, "::/*", scratch + "/"])
        let items = try FileManager.default.contentsOfDirectory(atPath: scratch).sorted()
        try run(
            "mcopy",
            ["-s", "-m", "-o", "-Q", "-i", destination] + items.map { "\(scratch)/\($0)" } + ["::/"])
    }
}
