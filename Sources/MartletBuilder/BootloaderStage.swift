import Foundation
import MartletCore

/// GRUB for both firmwares. BIOS: an El Torito no-emulation image (also reached from the
/// hybrid MBR when the ISO is written to a USB stick). UEFI: `BOOTX64.EFI` at the
/// removable-media path of a small FAT EFI system partition. Both images embed a tiny
/// config that finds the medium by its volume label and loads `/boot/grub/grub.cfg`,
/// which is rendered from `iso/grub.cfg`.
struct BootloaderStage: BuildStage {
    let name = "grub"

    static let commonModules = [
        "iso9660", "part_gpt", "part_msdos", "fat", "search", "search_label", "search_fs_file",
        "normal", "linux", "configfile", "echo", "test", "serial", "terminal", "sleep",
        "regexp", "chain", "halt", "reboot", "ls", "cat", "true",
    ]
    static let biosModules = ["biosdisk"]
    static let efiModules = ["efi_gop", "efi_uga", "all_video"]

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let fm = FileManager.default
        let grubDir = context.isoTree + "/boot/grub"
        let images = context.bootImages
        try fm.createDirectory(atPath: grubDir, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: images, withIntermediateDirectories: true)

        let label = context.profile.iso.label
        let early = """
            search --no-floppy --set=root --label \(label)
            set prefix=($root)/boot/grub

            """
        try early.write(toFile: images + "/early.cfg", atomically: false, encoding: .utf8)
        try renderMenu(context, to: grubDir + "/grub.cfg")

        try context.run(
            "grub-mkimage",
            ["-O", "i386-pc-eltorito", "-p", "/boot/grub", "-c", images + "/early.cfg",
             "-o", grubDir + "/bios.img"] + Self.commonModules + Self.biosModules)
        let efiBinary = images + "/BOOTX64.EFI"
        try context.run(
            "grub-mkimage",
            ["-O", "x86_64-efi", "-p", "/boot/grub", "-c", images + "/early.cfg",
             "-o", efiBinary] + Self.commonModules + Self.efiModules)

        // The EFI system partition: FAT, fixed volume id and --invariant so it is
        // reproducible; files are copied with their (pinned) modification times.
        let tree = images + "/esp"
        try fm.createDirectory(atPath: tree + "/EFI/BOOT", withIntermediateDirectories: true)
        try fm.copyItem(atPath: efiBinary, toPath: tree + "/EFI/BOOT/BOOTX64.EFI")
        try context.run("touch", ["-h", "-d", "@\(context.epoch)", tree + "/EFI/BOOT/BOOTX64.EFI", tree + "/EFI/BOOT", tree + "/EFI"])
        let espKiB = max(2048, (fileSize(efiBinary) / 1024 + 1024) / 1024 * 1024 + 1024)
        let esp = images + "/efi.img"
        try context.run(
            "mkfs.vfat",
            ["-C", "--invariant", "-i", "4D415254", "-n", "MARTLET_EFI", esp, String(espKiB)],
            environment: ["SOURCE_DATE_EPOCH": String(context.epoch)])
        try context.run(
            "mcopy", ["-s", "-m", "-i", esp, tree + "/EFI", "::/"],
            environment: ["SOURCE_DATE_EPOCH": String(context.epoch), "MTOOLS_SKIP_CHECK": "1"])
        context.sizes["efi.img"] = fileSize(esp)
    }

    /// Fills `iso/grub.cfg`'s placeholders from the profile.
    private func renderMenu(_ context: BuildContext, to path: String) throws {
        let profile = context.profile
        let template = try String(contentsOfFile: context.assets + "/grub.cfg", encoding: .utf8)
        let serial = profile.boot.serial.split(separator: ",")
        let unit = serial.first.map { String($0.dropFirst(4)) } ?? "0"
        let speed = serial.count > 1 ? String(serial[1]) : "115200"
        let rendered = template
            .replacingOccurrences(of: "@VERSION@", with: profile.version)
            .replacingOccurrences(of: "@LABEL@", with: profile.iso.label)
            .replacingOccurrences(of: "@CMDLINE@", with: profile.kernel.cmdline)
            .replacingOccurrences(of: "@TIMEOUT@", with: String(profile.boot.timeout))
            .replacingOccurrences(of: "@DEFAULT@", with: profile.boot.defaultEntry)
            .replacingOccurrences(of: "@SERIAL@", with: profile.boot.serial)
            .replacingOccurrences(of: "@SERIAL_UNIT@", with: unit)
            .replacingOccurrences(of: "@SERIAL_SPEED@", with: speed)
            .replacingOccurrences(of: "@ANSWER@", with: "label:MARTLET-ANSWER")
        try rendered.write(toFile: path, atomically: false, encoding: .utf8)
        // The profile's values passed an allow-list; GRUB's own parser has the last word, at
        // build time rather than at a boot prompt.
        try context.run("grub-script-check", [path])
    }
}
