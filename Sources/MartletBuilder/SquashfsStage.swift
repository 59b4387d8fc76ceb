import Foundation
import MartletCore

/// Packs the host root filesystem and the live layer as squashfs images on the ISO.
/// Timestamps are pinned to SOURCE_DATE_EPOCH so the same inputs give the same bytes.
struct SquashfsStage: BuildStage {
    let name = "squashfs"

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let live = context.isoTree + "/live"
        try FileManager.default.createDirectory(atPath: live, withIntermediateDirectories: true)
        try pack(context.rootfs, to: live + "/host.squashfs", context: context, reporter: reporter)
        try pack(context.liveLayer, to: live + "/live.squashfs", context: context, reporter: nil)
        context.sizes["host.squashfs"] = fileSize(live + "/host.squashfs")
        context.sizes["live.squashfs"] = fileSize(live + "/live.squashfs")
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

    private func pack(
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
