import Logging
import MartletCore

/// What `martlet build` was asked to do.
public struct BuildOptions: Sendable {
    public var profile: Profile
    /// Folder that receives the ISO, `SHA256SUMS` and the manifest.
    public var outputDirectory: String
    /// Folder holding release builds of `martlet`, `martlet-installer` and `martlet-vmm`.
    public var binariesDirectory: String
    /// Reuse (and fill) the rootfs cache.
    public var useCache: Bool
    public var cacheDirectory: String
    /// Timestamp for every file and the ISO; a fixed value gives a bit-identical ISO.
    public var sourceDateEpoch: Int
    public var progress: any ProgressSink

    public init(
        profile: Profile, outputDirectory: String, binariesDirectory: String,
        useCache: Bool = true, cacheDirectory: String = "/var/cache/martlet",
        sourceDateEpoch: Int, progress: any ProgressSink = SilentProgress()
    ) {
        self.profile = profile
        self.outputDirectory = outputDirectory
        self.binariesDirectory = binariesDirectory
        self.useCache = useCache
        self.cacheDirectory = cacheDirectory
        self.sourceDateEpoch = sourceDateEpoch
        self.progress = progress
    }
}

/// What a finished build produced.
public struct BuildResult: Sendable, Codable {
    public var iso: String
    public var sha256sums: String
    public var manifest: String
    public var isoSize: UInt64
    public var isoSHA256: String
}

/// The build: rootfs → overlays → binaries → trim → squashfs → initramfs → GRUB → ISO.
public struct BuildPipeline: Sendable {
    public let options: BuildOptions
    public init(_ options: BuildOptions) { self.options = options }

    public func run(logger: Logger) throws -> BuildResult {
        throw MartletError(.unavailable, "the build pipeline is not available yet")
    }
}
