import ArgumentParser
import Foundation
import Logging
import MartletBuilder
import MartletCore

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build the hybrid ISO (BIOS+UEFI, CD and USB) of a profile.",
        discussion: """
            Stages: rootfs (mmdebstrap, cached) → base layer (the Debian packages, trimmed, \
            cached as a squashfs) → overlays → binaries → trim → host initramfs (cached) → \
            initramfs → squashfs (the Martlet layer: what the stages added to the base) → \
            grub → iso → checksums. Needs root. The ISO, SHA256SUMS and a \
            manifest are written into the output folder only when every stage succeeded.
            """)

    @Option(name: .shortAndLong, help: "Profile name (folder under profiles/) or path.")
    var profile: String = "default"

    @Option(name: .shortAndLong, help: "Output folder.")
    var output: String = "out"

    @Option(help: "Folder with release builds of the Martlet binaries (default: next to martlet).")
    var binaries: String?

    @Option(help: "Boot assets folder (GRUB templates, initramfs init; default: the iso/ folder above the profile).")
    var assets: String?

    @Option(help: "Cache folder for root filesystems, base layers and host initramfs images.")
    var cacheDir: String = "/var/cache/martlet"

    @Flag(help: "Build the root filesystem, the base layer and the host initramfs afresh instead of taking them from the cache (and store the new ones there).")
    var noCache = false

    @Flag(
        help: """
            Development build: pack the squashfs with zstd level 3 instead of the profile's \
            [squashfs] setting (seconds instead of minutes, an ISO about a third larger).
            """)
    var fast = false

    @Option(help: "Timestamp for reproducible output (default: $SOURCE_DATE_EPOCH, else the profile's mtime).")
    var sourceDateEpoch: Int?

    @Flag(help: "Print progress and the result as JSON lines on stdout.")
    var json = false

    @Flag(name: .shortAndLong, help: "Log every command run.")
    var verbose = false

    func run() throws {
        MartletLogging.bootstrap(level: verbose ? .debug : .info)
        let logger = Logger(label: "martlet.build")
        do {
            var profile = try Profile.load(self.profile)
            if fast { profile.squashfs = .fast }
            let binaries =
                binaries
                ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
                .deletingLastPathComponent().path
            let epoch =
                sourceDateEpoch
                ?? ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { Int($0) }
                ?? Int(
                    ((try? FileManager.default.attributesOfItem(atPath: profile.path)[.modificationDate])
                        as? Date)?.timeIntervalSince1970 ?? 0)
            let options = BuildOptions(
                profile: profile, outputDirectory: output, binariesDirectory: binaries,
                assetsDirectory: try assets ?? BuildOptions.findAssets(near: profile.directory),
                useCache: !noCache, cacheDirectory: cacheDir, sourceDateEpoch: epoch,
                progress: json ? JSONLinesProgress() : TextProgress())
            let result = try BuildPipeline(options).run(logger: logger)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(result), as: UTF8.self))
            } else {
                print("\(result.iso)  \(ByteSize(result.isoSize))  sha256 \(result.isoSHA256)")
            }
        } catch let error as MartletError {
            FileHandle.standardError.write(Data("martlet build: \(error.description)\n".utf8))
            throw ExitCode(error.code.exitStatus)
        }
    }
}
