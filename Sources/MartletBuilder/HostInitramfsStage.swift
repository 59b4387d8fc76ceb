import Foundation
import MartletCore

/// The installed host's initramfs, built once here instead of on every target: a generic
/// one (the modules the host overlay's initramfs-tools configuration lists: storage
/// controllers, md RAID, LVM, ext4), so the installer only copies it. `mkinitramfs` runs in
/// the host root with `SOURCE_DATE_EPOCH`, which pins every timestamp in the archive, (the squashfs
/// pins the file's own), so two builds give the same bytes. Runs after the trim, so it holds only modules the host has.
struct HostInitramfsStage: BuildStage {
    let name = "host-initramfs"

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let root = context.rootfs
        let version = context.kernelVersion
        guard FileManager.default.isExecutableFile(atPath: root + "/usr/sbin/mkinitramfs") else {
            throw MartletError(
                .invalidInput,
                "\(context.profile.path): the installed host needs an initramfs, and the root filesystem has no mkinitramfs",
                hint: "add \"initramfs-tools\" to [debian] packages")
        }
        // mmdebstrap's own initramfs was made for the build machine's view of the world and
        // with the build's clock; this one replaces it.
        for stale in TrimStage.glob(root + "/boot/initrd.img-*") {
            try FileManager.default.removeItem(atPath: stale)
        }
        let image = "/boot/initrd.img-\(version)"
        reporter.note("mkinitramfs for \(version)")
        try context.run(
            "chroot", [root, "/usr/sbin/mkinitramfs", "-o", image, version],
            environment: ["SOURCE_DATE_EPOCH": String(context.epoch), "LC_ALL": "C"])
        let size = fileSize(root + image)
        context.sizes["host-initrd.img"] = size
        reporter.note("\(image): \(ByteSize(size))")
    }
}
