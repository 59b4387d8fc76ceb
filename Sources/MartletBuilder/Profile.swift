import MartletCore

/// A build profile: everything `martlet build` needs to turn Debian packages, overlays and
/// Martlet's binaries into one hybrid ISO. Read from `profiles/NAME/profile.toml`;
/// `profiles/README.md` documents every key.
public struct Profile: Sendable, Equatable {
    /// Short identifier, `[a-z0-9-]+`; names the output and the manifest.
    public var name: String
    /// Version string shown in the boot menu, the installer and `MARTLET-LIVE-READY`.
    public var version: String
    /// Human description (optional).
    public var description: String
    /// Where the profile was read from; relative paths (overlays) resolve against its folder.
    public var directory: String
    /// Path of the profile.toml (for error messages and the manifest digest).
    public var path: String

    public var debian: Debian
    public var kernel: Kernel
    /// Overlays applied in order on top of the host root filesystem.
    public var overlays: [Overlay]
    /// Overlays that go only into the live layer (never into the installed host).
    public var liveOverlays: [Overlay]
    /// Owner/mode overrides applied after overlays (`[[file]]` tables).
    public var fileModes: [FileMode]
    public var trim: Trim
    public var squashfs: Squashfs
    public var iso: ISO
    public var boot: Boot

    public struct Debian: Sendable, Equatable {
        /// Debian suite, e.g. `bookworm`.
        public var suite: String
        /// Mirror URL, e.g. `http://deb.debian.org/debian`.
        public var mirror: String
        public var components: [String]
        /// Debian architecture; only `amd64` is supported.
        public var architecture: String
        /// mmdebstrap variant (`minbase` by default).
        public var variant: String
        /// Packages to install (besides the kernel package).
        public var packages: [String]
    }

    public struct Kernel: Sendable, Equatable {
        /// The kernel package, e.g. `linux-image-amd64`.
        public var package: String
        /// Command line for every boot entry (entries add their own options).
        public var cmdline: String
    }

    public struct Overlay: Sendable, Equatable {
        /// The overlay folder as written in the profile.
        public var source: String
        /// Its absolute path.
        public var path: String
    }

    public struct FileMode: Sendable, Equatable {
        /// Absolute path inside the root filesystem.
        public var path: String
        public var mode: UInt32?
        public var owner: UInt32?
        public var group: UInt32?
    }

    public struct Trim: Sendable, Equatable {
        /// Paths or globs (absolute, inside the rootfs) removed from the host rootfs.
        public var paths: [String]
        /// Kernel module subtrees under `/lib/modules/<version>/kernel/` removed, e.g.
        /// `drivers/gpu`, `sound`.
        public var kernelModules: [String]
    }

    public struct Squashfs: Sendable, Equatable {
        /// `zstd` or `xz`.
        public var compression: String
        /// Compression level (zstd 1–22, xz ignores it).
        public var level: Int?
        /// Block size in bytes (power of two, 4 KiB – 1 MiB).
        public var blockSize: Int
        /// With xz, also try the x86 branch filter on every block (kept where smaller).
        public var x86Filter = true

        /// What `martlet build --fast` packs with, whatever the profile says. Measured with
        /// scripts/bench-squashfs on the host tree of profiles/default (498 MiB): zstd level 3
        /// packs it in about 2 s where xz with the x86 filter takes minutes, for an image about
        /// a third larger, so the ISO outgrows the release size limit: development only.
        public static let fast = Squashfs(compression: "zstd", level: 3, blockSize: 1 << 20)

        /// For the manifest and logs, e.g. `zstd level 3, 1048576-byte blocks`.
        public var summary: String {
            compression + (level.map { " level \($0)" } ?? "")
                + (compression == "xz" && !x86Filter ? " without the x86 filter" : "")
                + ", \(blockSize)-byte blocks"
        }
    }

    public struct ISO: Sendable, Equatable {
        /// ISO 9660 volume label (≤ 32 chars, `[A-Z0-9_-]`); the live initramfs finds the
        /// boot medium by it.
        public var label: String
        /// Output file name (without folder), e.g. `martlet-0.1.0-amd64.iso`.
        public var output: String
        /// Publisher and application fields of the ISO (optional).
        public var publisher: String
    }

    public struct Boot: Sendable, Equatable {
        /// Id of the default menu entry: `install`, `install-serial`, `unattended`,
        /// `rescue`, `firstdisk`.
        public var defaultEntry: String
        /// Seconds before the default entry boots; 0 boots at once, -1 waits forever.
        public var timeout: Int
        /// Serial console options for the serial entry, e.g. `ttyS0,115200`.
        public var serial: String
    }
}
