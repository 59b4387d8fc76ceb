import Foundation
import MartletCore

/// The installed host's initramfs, built once here instead of on every target: a generic
/// one (the modules the host overlay's initramfs-tools configuration lists: storage
/// controllers, md RAID, LVM, ext4), so the installer only copies it. `mkinitramfs` runs in
/// the merged host root with `SOURCE_DATE_EPOCH`, which pins every timestamp in the archive
/// (the squashfs pins the file's own), so two builds give the same bytes.
///
/// It is cached, keyed by the base layer and by what the overlays put in the Martlet layer that
/// mkinitramfs reads (`isInput`): not Martlet's own binaries, which no initramfs hook copies.
/// So a rebuild after a binary change, a unit or web UI change, or with nothing changed copies
/// it instead of spending 10-20 s on it.
struct HostInitramfsStage: BuildStage {
    let name = "host-initramfs"

    static let cacheFormat = "1"
    /// Host initramfs images kept (≈ 15 MiB each); every overlay change makes a new one.
    static let cacheEntries = 8

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let root = context.rootfs
        let version = context.kernelVersion
        guard FileManager.default.isExecutableFile(atPath: root + "/usr/sbin/mkinitramfs") else {
            throw MartletError(
                .invalidInput,
                "\(context.profile.path): the installed host needs an initramfs, and the root filesystem has no mkinitramfs",
                hint: "add \"initramfs-tools\" to [debian] packages")
        }
        let image = "/boot/initrd.img-\(version)"
        let excluded = Set(BinariesStage.names.map { "usr/bin/" + $0 })
        let inputs = try TreeListing(context.martletLayer, excluding: excluded).entries
            .filter(Self.isInput).map(\.line)
        let key = Digest.sha256(
            text: "format=\(Self.cacheFormat)\nbase=\(context.baseKey)\nkernel=\(version)\n"
                + inputs.joined(separator: "\n"))
        let cache = try BuildCache(context.options, "host-initramfs", suffix: ".img", keep: Self.cacheEntries)
        let (cached, reused) = try cache.entry(key, reuse: context.options.useCache) { temporary in
            reporter.note("mkinitramfs for \(version)")
            try make(image, version: version, context: context)
            try FileManager.default.copyItem(atPath: root + image, toPath: temporary)
        }
        if reused {
            reporter.note("using cached \(image) (\(cached))")
            try FileManager.default.copyItem(atPath: cached, toPath: root + image)
        }
        let size = fileSize(root + image)
        context.sizes["host-initrd.img"] = size
        reporter.note("\(image): \(ByteSize(size))")
    }

    /// What initramfs-tools and its hooks read from the root: their configuration, the module
    /// and udev settings, keymaps, fstab, crypttab, RAID and LVM settings, firmware, modules,
    /// and any executable or library (a hook may copy it in). The Martlet layer's other files
    /// (systemd units, `/etc/martlet`, the web UI, `/etc/issue`) are not among them, so a
    /// change there reuses the cached image.
    static let inputFolders = [
        "etc/initramfs-tools", "usr/share/initramfs-tools", "etc/modprobe.d", "lib/modprobe.d",
        "usr/lib/modprobe.d", "etc/udev", "lib/udev", "usr/lib/udev", "etc/default",
        "etc/console-setup", "etc/kbd", "etc/mdadm", "etc/lvm", "etc/crypttab", "etc/fstab",
        "etc/ld.so.conf", "etc/ld.so.conf.d", "lib/firmware", "usr/lib/firmware", "lib/modules",
        "usr/lib/modules",
    ]

    /// Whether an entry of the Martlet layer is an input of mkinitramfs.
    static func isInput(_ entry: TreeListing.Entry) -> Bool {
        let path = entry.path
        if inputFolders.contains(where: { path == $0 || path.hasPrefix($0 + "/") }) { return true }
        let executable = entry.type == "f" && entry.mode & 0o111 != 0
        let library = path.hasSuffix(".so") || path.contains(".so.")
        // A character device in an upper folder is a whiteout: a base file the overlays removed.
        return executable || library || entry.type == "c" || entry.type == "l" && path.contains("bin/")
    }

    private func make(_ image: String, version: String, context: BuildContext) throws {
        let root = context.rootfs
        // mkinitramfs works in a folder under /var/tmp (and hooks use /tmp). On tmpfs mounts
        // those folders are not copied up into the Martlet layer, which must be the same
        // whether this ran or the cache answered.
        for scratch in ["/tmp", "/var/tmp"] {
            try context.mount(["-t", "tmpfs", "-o", "mode=1777", "tmpfs", root + scratch])
        }
        defer {
            for scratch in ["/var/tmp", "/tmp"] { try? context.unmount(root + scratch) }
        }
        try context.run(
            "chroot", [root, "/usr/sbin/mkinitramfs", "-o", image, version],
            environment: ["SOURCE_DATE_EPOCH": String(context.epoch), "LC_ALL": "C"])
    }
}
