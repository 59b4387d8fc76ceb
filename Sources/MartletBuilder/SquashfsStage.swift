import Foundation
import MartletCore

/// Packs what the build added to the base layer (`BaseLayerStage`) as two images, so a
/// change to one packs only that one: Martlet's executables (tens of MB, cached by their
/// hashes) and the rest of the Martlet layer (overlays, `[[file]]` settings, the host
/// initramfs: a few MB); and the live layer. Timestamps are pinned to SOURCE_DATE_EPOCH so the
/// same inputs give the same bytes.
struct SquashfsStage: BuildStage {
    let name = "squashfs"

    static let cacheFormat = "1"
    /// Binaries layers kept (≈ 25 MiB each for profiles/default).
    static let cacheEntries = 4

    /// The images under `/live` on the ISO, top layer first (overlayfs's lowerdir order):
    /// the live layer, then the host's layers, which the installer copies merged.
    static let images = ["live.squashfs"] + hostLayers.map { $0 + ".squashfs" }
    static let hostLayers = ["martlet", "binaries", "base"]

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let live = context.isoTree + "/live"
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
        // The Martlet layer is final: the overlay lets go of its upper folder, which loses
        // overlayfs's bookkeeping; the executables move to a layer of their own; the merged
        // root comes back read-only, stacked the way the live system stacks the images (the
        // manifest reads its package list there).
        try context.unmount(context.rootfs)
        try OverlayAttributes.strip(context.martletLayer)
        try Self.moveBinaries(from: context.martletLayer, to: context.binariesLayer)
        try context.mountMerged(writable: false)

        try place(context.baseImage, live + "/base.squashfs")
        try place(try binariesImage(context, reporter), live + "/binaries.squashfs")
        // Its one large file is the host initramfs, zstd already: its blocks are stored as they
        // are (-noD) instead of failing to compress for 7 s (15.55 against 15.52 MB); small
        // files still go compressed into fragments.
        try Self.pack(
            context.martletLayer, to: live + "/martlet.squashfs", context: context,
            reporter: reporter, options: ["-noD"])
        try Self.pack(context.liveLayer, to: live + "/live.squashfs", context: context, reporter: nil)
        for image in Self.images {
            context.sizes[image] = fileSize(live + "/" + image)
        }
    }

    /// A copy, not a hard link: the ISO stage pins the times of everything in its tree, and
    /// the cache orders its entries by when they were last used.
    private func place(_ cached: String, _ target: String) throws {
        try FileManager.default.copyItem(atPath: cached, toPath: target)
    }

    /// Moves `/usr/bin/<binary>` for each of Martlet's executables from the Martlet layer into
    /// a tree of its own, whose `usr` and `usr/bin` get the owner and mode they have in the
    /// layer (copied up from the base, so the same as there).
    static func moveBinaries(from layer: String, to tree: String) throws {
        for folder in ["", "/usr", "/usr/bin"] {
            var info = stat()
            guard lstat(layer + folder, &info) == 0 else { throw MartletError.system("lstat", path: layer + folder) }
            if mkdir(tree + folder, 0o755) != 0 && errno != EEXIST {
                throw MartletError.system("mkdir", path: tree + folder)
            }
            if chmod(tree + folder, info.st_mode & 0o7777) != 0 || chown(tree + folder, info.st_uid, info.st_gid) != 0 {
                throw MartletError.system("chmod/chown", path: tree + folder)
            }
        }
        for name in BinariesStage.names {
            let path = "/usr/bin/" + name
            if rename(layer + path, tree + path) != 0 { throw MartletError.system("rename", path: layer + path) }
        }
    }

    /// The binaries layer from the cache, or packed into it. Its bytes follow from the
    /// listing of its tree (hashes, modes, link targets), the squashfs setting and the epoch.
    private func binariesImage(_ context: BuildContext, _ reporter: StageReporter) throws -> String {
        let settings = Self.binariesSettings(context.profile.squashfs)
        let listing = try TreeListing(context.binariesLayer)
        let key = Digest.sha256(
            text: "format=\(Self.cacheFormat)\nsquashfs=\(settings.summary)\nepoch=\(context.epoch)\n"
                + listing.text)
        let cache = try BuildCache(context.options, "binaries", suffix: ".squashfs", keep: Self.cacheEntries)
        let (image, cached) = try cache.entry(key, reuse: context.options.useCache) { temporary in
            reporter.note("packing the binaries layer (\(settings.summary))")
            var arguments = Self.arguments(context.binariesLayer, temporary, settings: settings, epoch: context.epoch)
            arguments.append("-no-progress")
            try Self.mksquashfs(arguments).run(logger: context.logger)
        }
        if cached { reporter.note("using cached binaries layer \(image)") }
        return image
    }

    /// The profile's setting, but xz without the x86 filter: mksquashfs compresses every block
    /// once per filter and keeps the smaller, so the filter doubles the time; on Martlet's
    /// binaries it saves 5 % (22.9 against 24.2 MB) and takes 28 s instead of about 12 s on 2
    /// cores (the squashfs stage of a rebuild after a binary change: 12.8 s in all).
    static func binariesSettings(_ settings: Profile.Squashfs) -> Profile.Squashfs {
        var settings = settings
        settings.x86Filter = false
        return settings
    }

    /// The mksquashfs command line for `settings`, timestamps pinned to `epoch`.
    static func arguments(
        _ source: String, _ image: String, settings: Profile.Squashfs, epoch: Int
    ) -> [String] {
        var arguments = [
            source, image, "-noappend", "-comp", settings.compression,
            "-b", String(settings.blockSize),
            "-mkfs-time", String(epoch), "-all-time", String(epoch),
        ]
        if settings.compression == "xz" && settings.x86Filter {
            // The branch/call/jump filter makes x86 code (kernel modules, our static Swift
            // binaries) compress better: 132.6 MiB instead of 136.2 MiB for the host tree of
            // profiles/default (scripts/bench-squashfs).
            arguments += ["-Xbcj", "x86"]
        }
        if let level = settings.level, settings.compression == "zstd" {
            arguments += ["-Xcompression-level", String(level)]
        }
        return arguments
    }

    /// mksquashfs refuses to run when SOURCE_DATE_EPOCH is in its environment and times are
    /// given on the command line too; `martlet build` takes its default epoch from that
    /// variable and passes it as `-mkfs-time` and `-all-time` (every time, not only later ones).
    static func mksquashfs(_ arguments: [String]) -> Command {
        Command("env", ["-u", "SOURCE_DATE_EPOCH", "mksquashfs"] + arguments)
    }

    static func pack(
        _ source: String, to image: String, context: BuildContext, reporter: StageReporter?,
        options: [String] = []
    ) throws {
        var arguments = Self.arguments(
            source, image, settings: context.profile.squashfs, epoch: context.epoch) + options
        if reporter == nil { arguments.append("-no-progress") }
        try Self.mksquashfs(arguments).stream(logger: context.logger) { line, _ in
            // The progress bar ends in " NN%"; everything else is the summary.
            guard let reporter, line.hasSuffix("%"),
                let percent = line.split(separator: " ").last.flatMap({ UInt64($0.dropLast()) })
            else { return }
            reporter.update(completed: percent, total: 100, unit: "percent")
        }
    }
}
