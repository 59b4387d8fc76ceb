// swift-tools-version: 6.0
import PackageDescription

/// How the shipped executables link: with lld and DT_RELR (`-z pack-relative-relocs`, glibc
/// 2.36), so the tens of thousands of relative relocations of a static-stdlib Swift binary are
/// a 5-KB bitmap instead of a 0.6-MB (martlet-vmm) or 2.8-MB (martlet) table that every start
/// reads. martlet-vmm also takes libstdc++ from its archive in release builds: a
/// static-stdlib Swift program still loads libstdc++.so, ≈ 0.9 MiB of RSS in every VMM for the
/// few symbols the runtime uses. The Swift driver's own `-lstdc++` comes first on the link
/// line, so the archive is found through a folder that holds only it (scripts/link-static).
/// Together: the VMM's RSS without guest RAM 8.1 → 6.7 MiB, its time to main 3.0 → 2.2 ms
/// (scripts/bench-vmm --startup --trace).
let leanLink: [LinkerSetting] = [.unsafeFlags(["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"])]
let staticLibstdcxx: [LinkerSetting] = [
    .unsafeFlags(["-L", Context.packageDirectory + "/scripts/link-static"], .when(configuration: .release))
]

let package = Package(
    name: "Martlet",
    products: [
        .executable(name: "martlet", targets: ["martlet"]),
        .executable(name: "martlet-installer", targets: ["martlet-installer"]),
        .executable(name: "martlet-vmm", targets: ["martlet-vmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // Already under Hummingbird; named for NIOThreadPool (the API's blocking work).
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        // TLS for the API's HTTPS listener (HummingbirdTLS builds on it).
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.2"),
        // HTTP field names for the API's headers (already under Hummingbird).
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        // The VM console over a WebSocket on the HTTPS listener, and its client for tests.
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.1"),
    ],
    targets: [
        // C libraries from Debian, imported through pkg-config. Each has a shim.h with
        // non-variadic wrappers for what Swift cannot call directly.
        .systemLibrary(
            name: "CParted", pkgConfig: "libparted", providers: [.apt(["libparted-dev"])]),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "CPAM", providers: [.apt(["libpam0g-dev"])]),
        .systemLibrary(
            name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "CNewt", pkgConfig: "libnewt", providers: [.apt(["libnewt-dev"])]),
        .systemLibrary(
            name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // ioctl request numbers and thin wrappers for linux/kvm.h.
        .target(name: "CKVM"),
        // libseccomp (Debian's libseccomp-dev) for the VMM's filters, and the SIGSYS handler
        // that names a forbidden syscall (C: it must be async-signal-safe).
        .target(name: "CSeccomp", linkerSettings: [.linkedLibrary("seccomp")]),
        // liburing (Debian's liburing-dev) for virtio-blk's io_uring. Linked from liburing.a: the
        // host image then needs no liburing2 next to martlet-vmm.
        .target(name: "CURing", linkerSettings: [.unsafeFlags(["-Xlinker", "-l:liburing.a"])]),
        // posix_spawn extensions glibc declares only under _GNU_SOURCE.
        .target(name: "CMartletSystem"),

        // Foundation-free: owned fds, unix sockets and the one way to start processes.
        .target(name: "MartletSystem", dependencies: ["CMartletSystem"]),
        // Foundation-free: the one set of checks every parser uses on hostile input (text,
        // paths, names, sizes, addresses, password hashes, SSH keys, bounded config reads).
        .target(name: "MartletValidation", dependencies: ["MartletSystem"]),
        // Foundation-free: what the host and the VMM say to each other (VMConfig and its JSON,
        // control requests and replies, exit codes).
        .target(name: "MartletVMMProtocol", dependencies: ["MartletSystem", "MartletValidation"]),

        .target(
            name: "MartletCore",
            dependencies: [
                "MartletSystem", "MartletValidation", "CCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]),
        .target(
            name: "MartletBuilder",
            dependencies: [
                "MartletCore", "MartletSystem", "MartletValidation", "CArchive",
            ]),
        // The answer-file model: no C libraries, so the builder can check an answer file
        // without linking the installer.
        .target(name: "MartletAnswer", dependencies: ["MartletCore", "MartletValidation"]),
        .target(
            name: "MartletInstaller",
            dependencies: [
                "MartletCore", "MartletAnswer", "MartletValidation", "CParted", "CBlkid", "CArchive", "CNewt",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The VMM stays lean: no Foundation and no MartletCore (which uses Foundation).
        .target(
            name: "MartletVMM", dependencies: ["CKVM", "CSeccomp", "CURing", "MartletSystem", "MartletVMMProtocol", "MartletValidation"],
            exclude: ["Guest"]),

        // What a person or a client writes about VMs — the VM definition and the REST API's
        // request bodies — parsed and checked without the HTTP stack: martlet-fuzz links this,
        // not MartletHost (whose sanitizer build compiles NIO, NIO-SSL and BoringSSL).
        .target(
            name: "MartletHostModel",
            dependencies: ["MartletCore", "MartletValidation", "MartletVMMProtocol"]),
        // The host side: storage pools, the VM runtime and the local REST API (re-exports
        // MartletHostModel).
        .target(
            name: "MartletHost",
            dependencies: [
                "MartletCore", "MartletHostModel", "MartletSystem", "MartletValidation", "MartletVMMProtocol", "CArchive", "CPAM",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            exclude: ["README.md", "openapi.yaml"]),

        // The installer's command line, shared by the thin `martlet-installer` executable and
        // `martlet`: the host image carries one binary for both (Foundation and its ICU data
        // once instead of twice, ≈ 14 MB of the ISO), /usr/bin/martlet-installer a link to it.
        .target(
            name: "MartletInstallerCommands",
            dependencies: [
                "MartletCore", "MartletAnswer", "MartletInstaller",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "martlet",
            dependencies: [
                "MartletCore", "MartletSystem", "MartletBuilder", "MartletHost", "MartletAnswer",
                "MartletInstallerCommands",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ], linkerSettings: leanLink),
        .executableTarget(
            name: "martlet-installer",
            dependencies: ["MartletInstallerCommands"],
            exclude: ["README.md", "answer.example.toml"], linkerSettings: leanLink),
        .executableTarget(
            name: "martlet-vmm", dependencies: ["MartletVMM", "MartletVMMProtocol", "MartletValidation", "MartletSystem"],
            exclude: ["README.md"], linkerSettings: leanLink + staticLibstdcxx),
        // Fuzz targets over the parsers and decoders that take outside input: a corpus
        // replayer in normal builds, libFuzzer's driver when built by scripts/fuzz. The
        // guest-facing ones (martlet-fuzz-vmm) apart from the host's parsers (martlet-fuzz,
        // which links MartletHostModel and not MartletHost: no HTTPS stack in its sanitizer build).
        .target(name: "MartletFuzzing"),
        .executableTarget(
            name: "martlet-fuzz",
            dependencies: ["MartletAnswer", "MartletBuilder", "MartletCore", "MartletFuzzing", "MartletHostModel"]),
        .executableTarget(
            name: "martlet-fuzz-vmm", dependencies: ["MartletFuzzing", "MartletVMM", "MartletVMMProtocol"]),

        // What tests share: QEMU's monitor, scratch folders, tiny GRUB ISOs, where the
        // executables are. Only test targets depend on it; it ships in no binary.
        .target(name: "MartletTestSupport", dependencies: ["MartletBuilder", "MartletCore", "MartletSystem"]),

        .testTarget(name: "MartletCoreTests", dependencies: ["MartletCore", "MartletSystem"]),
        // The shared checks, and property tests of the parsers built on them.
        .testTarget(
            name: "MartletValidationTests",
            dependencies: ["MartletValidation", "MartletVMMProtocol", "MartletAnswer", "MartletCore"]),
        .testTarget(
            name: "MartletBuilderTests",
            dependencies: ["MartletBuilder", "MartletCore", "MartletInstaller", "MartletTestSupport"]),
        .testTarget(
            name: "MartletInstallerTests",
            dependencies: ["MartletInstaller", "MartletAnswer", "MartletCore", "MartletTestSupport"]),
        .testTarget(
            name: "MartletVMMTests",
            dependencies: ["MartletVMM", "MartletVMMProtocol", "MartletSystem", "MartletTestSupport"]),
        .testTarget(
            name: "MartletHostTests",
            dependencies: [
                "MartletHost", "MartletHostModel", "MartletCore", "MartletSystem", "MartletVMMProtocol",
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]),
        // The user journey in QEMU: build the ISO, install on BIOS and UEFI, use the host.
        // Run by `make e2e` (and `make test` after the unit tests); `make unit` skips it.
        .testTarget(
            name: "MartletE2ETests",
            dependencies: ["MartletBuilder", "MartletCore", "MartletTestSupport"],
            exclude: ["README.md"]),
    ]
)
