import CMartletSystem
import Foundation
import MartletCore

/// The Debian layer of the host image: the profile's packages, trimmed, packed once and kept
/// in the cache as a squashfs keyed by everything that decides its bytes. A build then mounts
/// it read-only under an overlay whose upper folder collects the Martlet layer (overlays,
/// binaries, `[[file]]` settings, the host initramfs), so a rebuild after an overlay or binary
/// change packs only what changed (`SquashfsStage` splits the executables off). The live
/// system stacks the layers the same way, and the installer copies their merged view, so an
/// installed host is the same as from one image.
struct BaseLayerStage: BuildStage {
    let name = "base-layer"

    /// Bumped when the way the base layer is made changes, so old cache entries are not reused.
    static let cacheFormat = "1"
    /// Base layers kept (≈ 130 MiB each for profiles/default): a new epoch, trim or package
    /// list makes a new one.
    static let cacheEntries = 4

    /// The base layer's bytes follow from the rootfs (its cache key), the trims, the squashfs
    /// settings and the epoch every timestamp is pinned to.
    static func cacheKey(_ profile: Profile, epoch: Int) -> String {
        let text = [
            "format=\(cacheFormat)", "rootfs=\(RootfsStage.cacheKey(profile))",
            "trim-paths=\(profile.trim.paths.joined(separator: ","))",
            "trim-modules=\(profile.trim.kernelModules.joined(separator: ","))",
            "squashfs=\(profile.squashfs.summary)", "epoch=\(epoch)",
        ].joined(separator: "\n")
        return Digest.sha256(text: text)
    }

    static func cache(_ options: BuildOptions) throws -> BuildCache {
        try BuildCache(options, "base", suffix: ".squashfs", keep: cacheEntries)
    }

    /// Entries are named SUITE-KEY.squashfs.
    static func prefix(_ options: BuildOptions) -> String { options.profile.debian.suite + "-" }

    static func image(_ options: BuildOptions) throws -> String {
        try cache(options).path(
            cacheKey(options.profile, epoch: options.sourceDateEpoch), prefix: prefix(options))
    }

    /// Whether a build with `options` finds its base layer in the cache (and so needs no rootfs).
    static func isCached(_ options: BuildOptions) throws -> Bool {
        try options.useCache && FileManager.default.fileExists(atPath: image(options))
    }

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let options = context.options
        let key = Self.cacheKey(options.profile, epoch: options.sourceDateEpoch)
        context.baseKey = key
        let (image, cached) = try Self.cache(options).entry(
            key, prefix: Self.prefix(options), reuse: options.useCache
        ) { temporary in
            try pack(into: temporary, context: context, reporter: reporter)
        }
        if cached { reporter.note("using cached base layer \(image)") }
        context.baseImage = image
        context.sizes["base.squashfs"] = fileSize(image)

        for folder in [context.baseMount, context.martletLayer, context.overlayWork, context.rootfs] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        try context.mount(["-t", "squashfs", "-o", "ro,loop", image, context.baseMount])
        try context.mountMerged(writable: true)
        context.kernelVersion = try context.kernelVersion(in: context.rootfs)
    }

    /// Room on the tree's tmpfs beyond the tarball's size (each small file takes a page).
    static let scratchMargin: UInt64 = 256 << 20
    /// Memory the build leaves to the rest of the machine (mksquashfs's buffers among it).
    static let memoryLeftOver: UInt64 = 2 << 30

    /// MemAvailable of /proc/meminfo in bytes; 0 when it cannot be read.
    static func availableMemory(_ meminfo: String? = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) -> UInt64 {
        for line in (meminfo ?? "").split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kib = UInt64(fields[1]) { return kib << 10 }
        }
        return 0
    }

    /// Unpacks the rootfs, trims it and packs it as `image`.
    private func pack(into image: String, context: BuildContext, reporter: StageReporter) throws {
        let tree = context.work + "/base-tree"
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        // The tree lives only until it is packed. In memory, unpacking it takes 1 s where the
        // build machine's ext4 took 15 s (measured on a 740-MB rootfs: the kernel's time to
        // create 17 000 files there); on a machine short of memory it goes to disk as before.
        let size = fileSize(context.rootfsTarball) + Self.scratchMargin
        let inMemory = Self.availableMemory() >= size + Self.memoryLeftOver
        if inMemory {
            try context.mount(["-t", "tmpfs", "-o", "mode=0755,size=\(size)", "tmpfs", tree])
        } else {
            reporter.note("less than \(ByteSize(size + Self.memoryLeftOver)) of memory available: unpacking on disk")
        }
        defer {
            if inMemory { try? context.unmount(tree) }
            try? FileManager.default.removeItem(atPath: tree)
        }
        reporter.note("unpacking \(context.rootfsTarball)")
        let version = try context.unpackRootfs(into: tree)
        let removed = try TrimStage.trimPackages(tree, kernelVersion: version, context: context, reporter: reporter)
        reporter.note("trimmed \(removed) paths; packing the base layer")
        try SquashfsStage.pack(tree, to: image, context: context, reporter: reporter)
    }
}

extension BuildContext {
    /// Unpacks the rootfs tarball into `tree` (owners, modes, xattrs kept) and returns the
    /// version of its kernel.
    func unpackRootfs(into tree: String) throws -> String {
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        try run(
            "tar", [
                "-C", tree, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf",
                rootfsTarball,
            ])
        return try kernelVersion(in: tree)
    }

    /// The newest kernel in `root`'s `/lib/modules`.
    func kernelVersion(in root: String) throws -> String {
        let modules = (try? FileManager.default.contentsOfDirectory(atPath: root + "/lib/modules")) ?? []
        guard let version = modules.sorted().last else {
            throw MartletError(
                .failed, "the root filesystem in \(root) has no kernel in /lib/modules",
                hint: "check [kernel] package in \(profile.path)")
        }
        return version
    }

    /// Mounts the merged host root at `rootfs`: writable (the Martlet layer collects in
    /// `martletLayer`) while the stages fill it, read-only (the host layers as the live system
    /// stacks them) once the Martlet layer is final.
    func mountMerged(writable: Bool) throws {
        let options =
            writable
            ? "lowerdir=\(baseMount),upperdir=\(martletLayer),workdir=\(overlayWork)"
                // Plain copy-ups only: no redirects, metadata-only copies or index, which a
                // squashfs of the upper folder could not carry to the live system.
                + ",redirect_dir=off,metacopy=off,index=off,xino=off"
            : "ro,lowerdir=\(martletLayer):\(binariesLayer):\(baseMount)"
        try mount(["-t", "overlay", "overlay", "-o", options, rootfs])
    }
}

/// The extended attributes overlayfs keeps in its upper folder for itself. Only `opaque` (a
/// folder that hides the one below it) means something in a lower layer; the others record
/// where a copy came from (file handles of this build's mounts) and would make two builds
/// differ.
enum OverlayAttributes {
    static let prefix = "trusted.overlay."
    static let kept: Set<String> = ["trusted.overlay.opaque"]

    /// Removes overlayfs's own bookkeeping from every entry under `tree`, but `opaque`.
    static func strip(_ tree: String) throws {
        try strip(entry: tree)
        guard let walker = FileManager.default.enumerator(atPath: tree) else { return }
        while let relative = walker.nextObject() as? String {
            try strip(entry: tree + "/" + relative)
        }
    }

    private static func strip(entry path: String) throws {
        for name in try names(path) where name.hasPrefix(prefix) && !kept.contains(name) {
            if lremovexattr(path, name) != 0 && errno != ENODATA {
                throw MartletError.system("lremovexattr \(name)", path: path)
            }
        }
    }

    static func names(_ path: String) throws -> [String] {
        let size = llistxattr(path, nil, 0)
        if size < 0 {
            if errno == ENOTSUP { return [] }
            throw MartletError.system("llistxattr", path: path)
        }
        guard size > 0 else { return [] }
        var buffer = [CChar](repeating: 0, count: size)
        let count = llistxattr(path, &buffer, size)
        guard count >= 0 else { throw MartletError.system("llistxattr", path: path) }
        return buffer[..<count].split(separator: 0).map {
            String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}
