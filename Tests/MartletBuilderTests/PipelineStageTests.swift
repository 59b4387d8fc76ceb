import Foundation
import Logging
import MartletCore
import Testing

@testable import MartletBuilder

/// A scratch build context over a temporary folder, for stage-level tests.
private final class ScratchBuild {
    let root: String
    let context: BuildContext

    init(profile: Profile) throws {
        root = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-stage-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        context = try BuildContext(
            options: BuildOptions(
                profile: profile, outputDirectory: root + "/out", binariesDirectory: root,
                assetsDirectory: TestBuilds.packageRoot + "/iso", cacheDirectory: root + "/cache",
                sourceDateEpoch: 1_700_000_000),
            logger: Logger(label: "test"))
        try FileManager.default.createDirectory(
            atPath: context.rootfs, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }
}

private func write(_ text: String, _ path: String, mode: mode_t = 0o644) throws {
    try FileManager.default.createDirectory(
        atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try text.write(toFile: path, atomically: false, encoding: .utf8)
    chmod(path, mode)
}

private func mode(_ path: String) -> mode_t {
    var info = stat()
    lstat(path, &info)
    return info.st_mode & 0o7777
}

@Suite struct OverlayStageTests {
    func profile(overlays: [String], live: [String], files: [Profile.FileMode]) throws -> Profile {
        var profile = try Profile.load(TestBuilds.packageRoot + "/profiles/test")
        profile.overlays = overlays.map { .init(source: $0, path: $0) }
        profile.liveOverlays = live.map { .init(source: $0, path: $0) }
        profile.fileModes = files
        return profile
    }

    @Test func overlaysApplyInOrderKeepModesAndSymlinksAndLiveStaysApart() throws {
        let scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-overlays-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try write("first\n", scratch + "/a/etc/motd")
        try write("#!/bin/sh\n", scratch + "/a/usr/bin/tool", mode: 0o750)
        try FileManager.default.createSymbolicLink(
            atPath: scratch + "/a/etc/link", withDestinationPath: "/usr/bin/tool")
        try write("second\n", scratch + "/b/etc/motd")
        try write("live only\n", scratch + "/live/etc/martlet/live")

        let build = try ScratchBuild(
            profile: try profile(
                overlays: [scratch + "/a", scratch + "/b"], live: [scratch + "/live"],
                files: [.init(path: "/etc/motd", mode: 0o600, owner: 12, group: 34)]))
        try OverlayStage().run(build.context, StageReporter(sink: SilentProgress(), stage: "overlays"))

        let rootfs = build.context.rootfs
        #expect(try String(contentsOfFile: rootfs + "/etc/motd", encoding: .utf8) == "second\n")
        #expect(mode(rootfs + "/usr/bin/tool") == 0o750)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: rootfs + "/etc/link") == "/usr/bin/tool")
        #expect(mode(rootfs + "/etc/motd") == 0o600)
        var info = stat()
        lstat(rootfs + "/etc/motd", &info)
        #expect(info.st_uid == 12 && info.st_gid == 34)
        #expect(!FileManager.default.fileExists(atPath: rootfs + "/etc/martlet/live"))
        #expect(FileManager.default.fileExists(atPath: build.context.liveLayer + "/etc/martlet/live"))
        let release = try String(contentsOfFile: rootfs + "/etc/martlet/release", encoding: .utf8)
        #expect(release.contains("VERSION=0.1.0") && release.contains("PROFILE=test"))
    }

    @Test func fileModeForAMissingPathNamesIt() throws {
        let build = try ScratchBuild(
            profile: try profile(overlays: [], live: [], files: [.init(path: "/etc/nope", mode: 0o600)]))
        let error = #expect(throws: MartletError.self) {
            try OverlayStage().run(build.context, StageReporter(sink: SilentProgress(), stage: "overlays"))
        }
        #expect(error?.message.contains("'/etc/nope' does not exist") == true)
    }

    @Test("the /initrd.img links name the image of the kernel /vmlinuz names, and an existing link stays")
    func initramfsLinksFollowTheKernelLinks() throws {
        let build = try ScratchBuild(profile: try profile(overlays: [], live: [], files: []))
        let root = build.context.rootfs
        let files = FileManager.default
        try files.createSymbolicLink(atPath: root + "/vmlinuz", withDestinationPath: "boot/vmlinuz-6.1.0-9-amd64")
        try files.createSymbolicLink(atPath: root + "/vmlinuz.old", withDestinationPath: "boot/vmlinuz-6.1.0-8-amd64")
        try files.createSymbolicLink(atPath: root + "/initrd.img.old", withDestinationPath: "boot/mine")
        try TrimStage.linkInitramfs(root)
        #expect(try files.destinationOfSymbolicLink(atPath: root + "/initrd.img") == "boot/initrd.img-6.1.0-9-amd64")
        #expect(try files.destinationOfSymbolicLink(atPath: root + "/initrd.img.old") == "boot/mine")

        // No kernel link (a layout without them): nothing is made.
        let bare = try ScratchBuild(profile: try profile(overlays: [], live: [], files: []))
        try TrimStage.linkInitramfs(bare.context.rootfs)
        #expect(try files.contentsOfDirectory(atPath: bare.context.rootfs).isEmpty)
    }
}

@Suite struct BaseTreeScratchTests {
    @Test("the base tree's tmpfs is sized by MemAvailable, and an unreadable meminfo means disk")
    func availableMemoryReadsMemAvailable() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:    2097152 kB\n"
        #expect(BaseLayerStage.availableMemory(meminfo) == 2 << 30)
        #expect(BaseLayerStage.availableMemory("MemTotal: 5 kB\n") == 0)
        #expect(BaseLayerStage.availableMemory(nil) == 0)
    }
}

@Suite struct InitramfsTests {
    @Test func moduleClosureFollowsModulesDep() throws {
        let graph = try ModuleDependencies(
            modulesDep: """
                kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko kernel/drivers/scsi/scsi_common.ko
                kernel/drivers/cdrom/cdrom.ko:
                kernel/drivers/scsi/scsi_common.ko:
                kernel/drivers/usb/storage/usb-storage.ko.xz: kernel/drivers/usb/core/usbcore.ko
                kernel/drivers/usb/core/usbcore.ko:
                kernel/fs/unused.ko:
                """)
        #expect(
            graph.closure(of: ["sr_mod", "usb_storage", "not-there"]) == [
                "kernel/drivers/cdrom/cdrom.ko", "kernel/drivers/scsi/scsi_common.ko",
                "kernel/drivers/scsi/sr_mod.ko", "kernel/drivers/usb/core/usbcore.ko",
                "kernel/drivers/usb/storage/usb-storage.ko.xz",
            ])
    }

    @Test func cpioIsSortedRootOwnedAndReproducible() throws {
        let tree = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-cpio-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: tree) }
        try write("#!/bin/sh\necho hi\n", tree + "/in/init", mode: 0o755)
        try write("x", tree + "/in/lib/modules/a.ko")
        try FileManager.default.createSymbolicLink(atPath: tree + "/in/sbin", withDestinationPath: "bin")
        try CPIOWriter.write(tree: tree + "/in", to: tree + "/a.cpio.zst", epoch: 1_700_000_000)
        try CPIOWriter.write(tree: tree + "/in", to: tree + "/b.cpio.zst", epoch: 1_700_000_000)
        #expect(try Digest.sha256(file: tree + "/a.cpio.zst") == Digest.sha256(file: tree + "/b.cpio.zst"))

        let listing = try Command(
            "/bin/sh", ["-c", "zstd -dc '\(tree)/a.cpio.zst' | cpio -itv --quiet"]
        ).run().stdoutText.split(separator: "\n").map(String.init)
        #expect(listing.count == 5)
        #expect(listing.prefix(4).map { $0.split(separator: " ").last.map(String.init) ?? "" }
            == ["init", "lib", "lib/modules", "lib/modules/a.ko"])
        #expect(listing.last?.hasSuffix("sbin -> bin") == true)
        #expect(listing.allSatisfy { $0.contains(" root ") || $0.contains(" 0 ") })
        #expect(listing[0].hasPrefix("-rwxr-xr-x"))
        #expect(listing[4].hasPrefix("l"))
    }

    @Test func builtInitramfsHasInitBusyboxAndTheMediumModules() throws {
        let result = try TestBuilds.first.get()
        let work = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-initrd-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        try Command(
            "xorriso", ["-osirrox", "on", "-indev", result.iso, "-extract", "/boot/initrd.img", work + "/initrd.img"]
        ).run()
        let names = Set(
            try Command("/bin/sh", ["-c", "zstd -dc '\(work)/initrd.img' | cpio -it --quiet"]).run()
                .stdoutText.split(separator: "\n").map(String.init))
        #expect(names.contains("init"))
        #expect(names.contains("bin/busybox"))
        for module in ["isofs", "squashfs", "overlay", "sr_mod", "cdrom", "usb-storage", "virtio_blk", "virtio_mmio", "nvme"] {
            #expect(names.contains { $0.hasSuffix("/\(module).ko") }, "\(module).ko missing from the initramfs")
        }
        #expect(names.contains { $0.hasSuffix("/modules.dep") })
        let initScript = try String(contentsOfFile: TestBuilds.packageRoot + "/iso/initramfs/init", encoding: .utf8)
        #expect(initScript.contains("@LABEL@"))
    }
}

/// The squashfs settings of a release build (the profile's) and of `martlet build --fast`,
/// packed for real with mksquashfs.
@Suite struct SquashfsSettingsTests {
    @Test func releaseXZUsesTheX86FilterAndZstdCarriesItsLevel() {
        let xz = SquashfsStage.arguments(
            "/src", "/img", settings: .init(compression: "xz", level: nil, blockSize: 1 << 20),
            epoch: 7)
        #expect(xz.starts(with: ["/src", "/img", "-noappend", "-comp", "xz", "-b", "1048576"]))
        #expect(xz.contains("-mkfs-time") && xz.contains("-all-time") && xz.contains("7"))
        #expect(xz.suffix(2) == ["-Xbcj", "x86"])
        // The binaries layer: the filter would double mksquashfs's time for 5 %.
        let binaries = SquashfsStage.arguments(
            "/src", "/img",
            settings: SquashfsStage.binariesSettings(.init(compression: "xz", level: nil, blockSize: 1 << 20)),
            epoch: 7)
        #expect(!binaries.contains("-Xbcj"))
        let fast = SquashfsStage.arguments("/src", "/img", settings: .fast, epoch: 7)
        #expect(fast.suffix(2) == ["-Xcompression-level", "3"])
        #expect(!fast.contains("-Xbcj"))
        #expect(Profile.Squashfs.fast.summary == "zstd level 3, 1048576-byte blocks")
    }

    @Test func fastSettingPacksZstdAndTheSameTreeGivesTheSameBytes() throws {
        let tree = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-squashfs-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: tree) }
        try write("#!/bin/sh\necho hi\n", tree + "/in/usr/bin/hello", mode: 0o755)
        try write(String(repeating: "martlet ", count: 50_000), tree + "/in/etc/big")
        for image in ["a", "b"] {
            let arguments = SquashfsStage.arguments(
                tree + "/in", tree + "/\(image).squashfs", settings: .fast, epoch: 1_700_000_000)
            // As under `SOURCE_DATE_EPOCH=… martlet build`: mksquashfs must not see the variable
            // beside its -mkfs-time and -all-time, which it refuses.
            var command = SquashfsStage.mksquashfs(arguments + ["-no-progress"])
            command.environment["SOURCE_DATE_EPOCH"] = "1700000000"
            try command.run()
        }
        #expect(try Digest.sha256(file: tree + "/a.squashfs") == Digest.sha256(file: tree + "/b.squashfs"))
        let superblock = try Command("unsquashfs", ["-s", tree + "/a.squashfs"]).run().stdoutText
        #expect(superblock.contains("Compression zstd"), "\(superblock)")
        #expect(superblock.contains("Block size 1048576"), "\(superblock)")
        let listing = try Command("unsquashfs", ["-lls", tree + "/a.squashfs"]).run().stdoutText
        #expect(listing.contains("-rwxr-xr-x") && listing.contains("/usr/bin/hello"), "\(listing)")
    }
}
