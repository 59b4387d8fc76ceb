import Foundation
import Logging
import MartletCore
import Synchronization

/// What `martlet build` was asked to do.
public struct BuildOptions: Sendable {
    public var profile: Profile
    /// Folder that receives the ISO, `SHA256SUMS` and the manifest.
    public var outputDirectory: String
    /// Folder holding release builds of `martlet` (which is also the installer) and `martlet-vmm`.
    public var binariesDirectory: String
    /// Boot assets: GRUB templates and the initramfs `init` (the repository's `iso/`).
    public var assetsDirectory: String
    /// Reuse (and fill) the rootfs cache.
    public var useCache: Bool
    public var cacheDirectory: String
    /// Timestamp for every file and the ISO; a fixed value gives a bit-identical ISO.
    public var sourceDateEpoch: Int
    public var progress: any ProgressSink

    public init(
        profile: Profile, outputDirectory: String, binariesDirectory: String,
        assetsDirectory: String, useCache: Bool = true, cacheDirectory: String = "/var/cache/martlet",
        sourceDateEpoch: Int, progress: any ProgressSink = SilentProgress()
    ) {
        self.profile = profile
        self.outputDirectory = outputDirectory
        self.binariesDirectory = binariesDirectory
        self.assetsDirectory = assetsDirectory
        self.useCache = useCache
        self.cacheDirectory = cacheDirectory
        self.sourceDateEpoch = sourceDateEpoch
        self.progress = progress
    }
}

extension BuildOptions {
    /// The `iso/` assets folder of the checkout a profile lives in: the first ancestor of
    /// `directory` (or of the working directory) that has `iso/grub.cfg`.
    public static func findAssets(near directory: String) throws -> String {
        for start in [directory, FileManager.default.currentDirectoryPath] {
            var url = URL(fileURLWithPath: start).standardizedFileURL
            while url.path != "/" {
                let candidate = url.appendingPathComponent("iso")
                if FileManager.default.fileExists(atPath: candidate.path + "/grub.cfg") {
                    return candidate.path
                }
                url.deleteLastPathComponent()
            }
        }
        throw MartletError(
            .notFound, "boot assets (iso/grub.cfg) not found above '\(directory)'",
            hint: "run from the Martlet checkout or pass --assets DIR")
    }
}

/// What a finished build produced.
public struct BuildResult: Sendable, Codable {
    public var iso: String
    public var sha256sums: String
    public var manifest: String
    public var isoSize: UInt64
    public var isoSHA256: String
    /// Seconds each stage took, in pipeline order.
    public var stageSeconds: [String: Double]
}

/// One step of the build. Stages share a `BuildContext` and run in a fixed order; each is
/// timed and reported, and the first failure stops the build with the stage's name.
protocol BuildStage {
    var name: String { get }
    func run(_ context: BuildContext, _ reporter: StageReporter) throws
}

/// The folders and facts every stage works with. All of it lives under one work folder
/// that is removed when the build ends, whatever the outcome.
final class BuildContext {
    let options: BuildOptions
    let logger: Logger
    let work: String
    /// The host root filesystem, the merged view of the base and Martlet layers: what the
    /// installer copies onto a server.
    var rootfs: String { work + "/rootfs" }
    /// The base layer's squashfs (from the cache), mounted read-only.
    var baseMount: String { work + "/base" }
    /// The overlay's upper folder: everything the build adds to or changes in the base layer.
    var martletLayer: String { work + "/martlet" }
    var overlayWork: String { work + "/overlay-work" }
    /// Martlet's executables, moved out of the Martlet layer into a layer of their own.
    var binariesLayer: String { work + "/binaries" }
    /// The live-only layer stacked above the host root at boot.
    var liveLayer: String { work + "/live" }
    /// The tree that becomes the ISO 9660 filesystem.
    var isoTree: String { work + "/iso" }
    var initramfsTree: String { work + "/initramfs" }
    /// Files that go on the ISO's EFI system partition and the BIOS El Torito image.
    var bootImages: String { work + "/boot-images" }

    /// Filled by the stages, read by the manifest.
    var kernelVersion = ""
    var rootfsDigest = ""
    /// The cached mmdebstrap tarball; only needed when the base layer is not cached.
    var rootfsTarball = ""
    var baseKey = ""
    var baseImage = ""
    /// Mount points, in the order they were mounted.
    private var mounts: [String] = []
    var binaryHashes: [String: String] = [:]
    var sizes: [String: UInt64] = [:]
    var stageSeconds: [String: Double] = [:]

    var profile: Profile { options.profile }
    var assets: String { options.assetsDirectory }
    var epoch: Int { options.sourceDateEpoch }

    private static let builds = Atomic<Int>(0)

    init(options: BuildOptions, logger: Logger) throws {
        self.options = options
        self.logger = logger
        let base = options.cacheDirectory + "/work"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        // A killed build leaves its folder (NAME-PID) behind; once PID is gone it is garbage.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [] {
            guard let pid = name.split(separator: "-").last.flatMap({ pid_t($0) }),
                kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            Self.detachMounts(under: base + "/" + name)
            try? FileManager.default.removeItem(atPath: base + "/" + name)
        }
        // NAME.N-PID: builds running at once in one process (the tests) each get their own.
        let number = Self.builds.add(1, ordering: .relaxed).newValue
        self.work = base + "/\(options.profile.name).\(number)-\(getpid())"
        Self.detachMounts(under: work)
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    /// Runs `command`, logging it; failures carry the command and its stderr.
    @discardableResult
    func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:])
        throws -> CommandResult
    {
        try Command(executable, arguments, environment: environment).run(logger: logger)
    }

    /// A killed build also leaves its mounts; they are detached before its folder is removed,
    /// deepest first.
    static func detachMounts(under folder: String) {
        let table = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        let points = table.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count > 1 else { return nil }
            // The table writes a space in a path as \040; build folders have none.
            let point = String(fields[1])
            return point.hasPrefix(folder + "/") ? point : nil
        }
        for point in points.reversed() {
            _ = try? Command("umount", ["-l", point]).run()
        }
    }

    /// `mount ARGUMENTS`, the last one being the mount point; unmounted by `unmount` or when
    /// the build ends.
    func mount(_ arguments: [String]) throws {
        try run("mount", arguments)
        mounts.append(arguments.last!)
    }

    func unmount(_ point: String) throws {
        try run("umount", [point])
        mounts.removeAll { $0 == point }
    }

    deinit {
        for point in mounts.reversed() {
            // A lazy unmount as the fallback still detaches the tree, so the removal below
            // can never walk into the cached base layer.
            if (try? Command("umount", [point]).run()) == nil {
                _ = try? Command("umount", ["-l", point]).run()
            }
        }
        // Removing a tree with device nodes and root-owned files needs nothing special as
        // root; a leftover work folder would only waste disk.
        try? FileManager.default.removeItem(atPath: work)
    }
}

/// The build: rootfs → base layer → overlays → binaries → trim → host initramfs → live
/// initramfs → squashfs → grub → ISO.
public struct BuildPipeline: Sendable {
    public let options: BuildOptions
    public init(_ options: BuildOptions) { self.options = options }

    /// The tools every build needs, checked before anything starts.
    static let requiredTools = [
        "mmdebstrap", "mksquashfs", "xorriso", "grub-mkimage", "grub-script-check", "mkfs.vfat",
        "mmd", "mcopy", "sha256sum", "dpkg-query", "depmod", "tar", "strip", "readelf", "mount",
        "umount",
    ]

    public func run(logger: Logger) throws -> BuildResult {
        try Privilege.requireRoot(for: "building an ISO (mmdebstrap, device nodes, file owners)")
        try Tool.require(Self.requiredTools)
        try checkBinaries()
        let context = try BuildContext(options: options, logger: logger)
        let stages: [any BuildStage] = [
            RootfsStage(), BaseLayerStage(), OverlayStage(), BinariesStage(), TrimStage(),
            HostInitramfsStage(), InitramfsStage(), SquashfsStage(), BootloaderStage(), ISOStage(),
        ]
        for (index, stage) in stages.enumerated() {
            let reporter = StageReporter(
                sink: options.progress, stage: stage.name, index: index + 1, count: stages.count)
            reporter.begin()
            do {
                try stage.run(context, reporter)
            } catch var error as MartletError {
                error.message = "stage '\(stage.name)' failed: \(error.message)"
                throw error
            }
            context.stageSeconds[stage.name] = reporter.elapsed
            reporter.end()
        }
        return try ISOStage.publish(context)
    }

    /// The binaries must exist and be built with the Swift runtime inside them: the host
    /// image has no Swift runtime libraries.
    func checkBinaries() throws {
        for name in BinariesStage.files {
            let path = options.binariesDirectory + "/" + name
            guard FileManager.default.isExecutableFile(atPath: path) else {
                throw MartletError(
                    .notFound, "Martlet binary '\(path)' not found",
                    hint:
                        "build them with: swift build -c release --static-swift-stdlib, "
                        + "or pass --binaries DIR")
            }
        }
    }
}
