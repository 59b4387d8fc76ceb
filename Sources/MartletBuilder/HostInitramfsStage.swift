import CMartletSystem
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
        let inputs = try TreeListing(context.martletLayer, excluding: excluded).lines
            .filter(Self.isInput)
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

    /// Whether a `TreeListing` line of the Martlet layer is an input of mkinitramfs.
    static func isInput(_ line: String) -> Bool {
        let fields = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
        guard fields.count > 2 else { return true }
        let path = String(fields[0])
        if inputFolders.contains(where: { path == $0 || path.hasPrefix($0 + "/") }) { return true }
        let executable = fields[1] == "f" && (Int(fields[2], radix: 8) ?? 0) & 0o111 != 0
        let library = path.hasSuffix(".so") || path.contains(".so.")
        // A character device in an upper folder is a whiteout: a base file the overlays removed.
        return executable || library || fields[1] == "c" || fields[1] == "l" && path.contains("bin/")
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

/// Every entry of a tree, one line each, sorted: path, type, mode, owner, group, size, device,
/// link target, SHA-256 of the content and of the extended attributes (but overlayfs's own).
/// Two trees with the same listing have the same files; used as a cache key and by the
/// tests that compare the layered image with a single tree.
struct TreeListing: Equatable {
    var lines: [String]
    var text: String { lines.joined(separator: "\n") + "\n" }

    init(_ root: String, excluding excluded: Set<String> = [], contents: Bool = true) throws {
        var lines: [String] = []
        guard let walker = FileManager.default.enumerator(atPath: root) else {
            throw MartletError(.notFound, "cannot read the tree '\(root)'")
        }
        while let relative = walker.nextObject() as? String {
            if excluded.contains(relative) { continue }
            lines.append(try Self.line(root + "/" + relative, relative, contents: contents))
        }
        self.lines = lines.sorted()
    }

    static func line(_ path: String, _ relative: String, contents: Bool) throws -> String {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw MartletError.system("lstat", path: path) }
        let type: String
        var detail = ""
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            type = "f"
            detail = "\(info.st_size)" + (contents ? " " + (try Digest.sha256(file: path)) : "")
        case S_IFDIR: type = "d"
        case S_IFLNK:
            type = "l"
            detail = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
        case S_IFCHR: type = "c"; detail = "\(info.st_rdev)"
        case S_IFBLK: type = "b"; detail = "\(info.st_rdev)"
        case S_IFIFO: type = "p"
        default: type = "s"
        }
        var attributes = ""
        for name in try OverlayAttributes.names(path).sorted()
        where !name.hasPrefix(OverlayAttributes.prefix) {
            let size = lgetxattr(path, name, nil, 0)
            var value = [UInt8](repeating: 0, count: max(size, 0))
            if size > 0 { _ = lgetxattr(path, name, &value, value.count) }
            attributes += name + "=" + Digest.sha256(text: value.map { String($0) }.joined(separator: ",")) + ";"
        }
        return "\(relative) \(type) \(String(info.st_mode & 0o7777, radix: 8)) \(info.st_uid):\(info.st_gid) \(detail) \(attributes)"
    }
}
