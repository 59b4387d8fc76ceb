import Foundation
import MartletCore

/// Packs the Martlet layer and the live layer as squashfs images on the ISO, beside the base
/// layer (`BaseLayerStage`). Timestamps are pinned to SOURCE_DATE_EPOCH so the same inputs
/// give the same bytes.
struct SquashfsStage: BuildStage {
    let name = "squashfs"

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let live = context.isoTree + "/live"
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
        // The Martlet layer is final: the overlay lets go of its upper folder, which loses
        // overlayfs's bookkeeping, and the merged root comes back read-only, stacked the way
        // the live system stacks the two images (the manifest reads its package list there).
        try context.unmount(context.rootfs)
        try OverlayAttributes.strip(context.martletLayer)
        try context.mountMerged(writable: false)
        // A hard link when the cache is on the same filesystem: the ISO only reads it.
        if link(context.baseImage, live + "/base.squashfs") != 0 {
            try FileManager.default.copyItem(atPath: context.baseImage, toPath: live + "/base.squashfs")
        }
        try Self.pack(context.martletLayer, to: live + "/martlet.squashfs", context: context, reporter: reporter)
        try Self.pack(context.liveLayer, to: live + "/live.squashfs", context: context, reporter: nil)
        for image in Self.images {
            context.sizes[image] = fileSize(live + "/" + image)
        }
    }

    /// The images under `/live` on the ISO, lowest layer last (overlayfs's lowerdir order):
    /// the live layer, the Martlet layer, the Debian packages.
    static let images = ["live.squashfs", "martlet.squashfs", "base.squashfs"]

    /// The mksquashfs command line for `settings`, timestamps pinned to `epoch`.
    static func arguments(
        _ source: String, _ image: String, settings: Profile.Squashfs, epoch: Int
    ) -> [String] {
        var arguments = [
            source, image, "-noappend", "-comp", settings.compression,
            "-b", String(settings.blockSize),
            "-mkfs-time", String(epoch), "-all-time", String(epoch),
        ]
        if settings.compression == "xz" {
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

    static func pack(
        _ source: String, to image: String, context: BuildContext, reporter: StageReporter?
    ) throws {
        var arguments = Self.arguments(
            source, image, settings: context.profile.squashfs, epoch: context.epoch)
        if reporter == nil { arguments.append("-no-progress") }
        try Command("mksquashfs", arguments).stream(logger: context.logger) { line, _ in
            // The progress bar ends in " NN%"; everything else is the summary.
            guard let reporter, line.hasSuffix("%"),
                let percent = line.split(separator: " ").last.flatMap({ UInt64($0.dropLast()) })
            else { return }
            reporter.update(completed: percent, total: 100, unit: "percent")
        }
    }
}
