import Foundation
import Logging
import MartletCore
import MartletInstaller
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// The host image comes in layers: the Debian packages and Martlet's executables (both cached),
/// and Martlet's other files.
/// These tests hold the layered image to the single tree the builder made before layers, to
/// the installer's copy of it, and to the promises of a rebuild: bit-identical whether the
/// caches were warm or cold, and only the small layer repacked after an overlay change.
@Suite(.serialized) struct LayeredImageTests {
    /// The host layers of `iso`, mounted read-only and merged the way the live initramfs
    /// merges them for the installer; unmounted on deinit.
    final class MergedLayers {
        let scratch: ScratchDirectory
        var merged: String { scratch.file("merged") }
        private var mounts: [String] = []

        init(iso: String) throws {
            scratch = try ScratchDirectory("martlet-layers")
            try Command(
                "xorriso",
                ["-osirrox", "on", "-indev", iso, "-extract", "/live", scratch.file("images")]
            ).run()
            for layer in SquashfsStage.hostLayers {
                try mount(["-t", "squashfs", "-o", "ro,loop"], scratch.file("images/\(layer).squashfs"), layer)
            }
            let lower = SquashfsStage.hostLayers.map { scratch.file($0) }.joined(separator: ":")
            try mount(["-t", "overlay", "-o", "ro,lowerdir=\(lower)"], "overlay", "merged")
        }

        private func mount(_ options: [String], _ source: String, _ point: String) throws {
            try FileManager.default.createDirectory(
                atPath: scratch.file(point), withIntermediateDirectories: true)
            try Command("mount", options + [source, scratch.file(point)]).run()
            mounts.append(scratch.file(point))
        }

        func hash(_ layer: String) throws -> String {
            try Digest.sha256(file: scratch.file("images/\(layer).squashfs"))
        }

        deinit {
            for point in mounts.reversed() {
                _ = try? Command("umount", [point]).runAllowingFailure()
            }
        }
    }

    /// The host tree the way the builder made it before layers: the rootfs unpacked into one
    /// folder and every stage run on that folder.
    static func singleTree() throws -> BuildContext {
        let profile = try Profile.load(TestBuilds.packageRoot + "/profiles/test")
        var options = try TestBuilds.options(output: TestBuilds.outputRoot + "/single", profile: profile)
        options.useCache = true
        let context = try BuildContext(options: options, logger: Logger(label: "test.single"))
        let reporter = StageReporter(sink: SilentProgress(), stage: "single-tree")
        try RootfsStage().run(context, reporter)
        try #require(
            FileManager.default.fileExists(atPath: context.rootfsTarball),
            "the rootfs tarball \(context.rootfsTarball) is gone from the cache (the base layer outlived it); delete /var/cache/martlet/base to rebuild both")
        context.kernelVersion = try context.unpackRootfs(into: context.rootfs)
        _ = try TrimStage.trimPackages(context.rootfs, kernelVersion: context.kernelVersion, context: context, reporter: reporter)
        try OverlayStage().run(context, reporter)
        try BinariesStage().run(context, reporter)
        try TrimStage().run(context, reporter)
        // Its initramfs cache key: one no layered build has (no base layer, no upper folder).
        context.baseKey = "single-tree"
        try FileManager.default.createDirectory(atPath: context.martletLayer, withIntermediateDirectories: true)
        try HostInitramfsStage().run(context, reporter)
        return context
    }

    /// `root`'s listing with the host initramfs replaced by the listing of what it holds.
    /// mkinitramfs keeps the times of files older than SOURCE_DATE_EPOCH; in the base layer
    /// every time is the epoch, in an unpacked rootfs the package's, so the archives differ in
    /// their cpio headers only.
    static func listing(_ root: String, scratch: ScratchDirectory, name: String) throws -> [String] {
        var lines = try TreeListing(root).lines
        let initrds = lines.filter { $0.hasPrefix("boot/initrd.img-") }
        try #require(initrds.count == 1, "\(initrds)")
        lines.removeAll { $0.hasPrefix("boot/initrd.img-") }
        let path = root + "/" + String(initrds[0].prefix { $0 != " " })
        let unpacked = scratch.file("initrd-" + name)
        try Command("sh", [root + "/usr/bin/unmkinitramfs", path, unpacked]).run()
        return lines + (try TreeListing(unpacked).lines.map { "initrd: " + $0 })
    }

    @Test("the merged layers hold exactly the single tree, and the installer's copy of them too")
    func mergedEqualsSingleTreeAndInstalledCopy() throws {
        let result = try TestBuilds.first.get()
        let layers = try MergedLayers(iso: result.iso)
        let merged = try Self.listing(layers.merged, scratch: layers.scratch, name: "merged")
        // mmdebstrap made no initramfs (INITRD=No); Debian's /initrd.img link names the host's.
        let link = try FileManager.default.destinationOfSymbolicLink(atPath: layers.merged + "/initrd.img")
        #expect(link.hasPrefix("boot/initrd.img-") && fileSize(layers.merged + "/" + link) > 1_000_000, "\(link)")

        // The single tree as the ISO carried it: one squashfs, which pins every time and keeps
        // the extended attributes squashfs can hold.
        let single = try Self.singleTree()
        let image = layers.scratch.file("single.squashfs")
        try Command(
            "mksquashfs", SquashfsStage.arguments(
                single.rootfs, image, settings: .fast, epoch: TestBuilds.epoch) + ["-quiet"]
        ).run()
        let mounted = layers.scratch.file("single")
        try FileManager.default.createDirectory(atPath: mounted, withIntermediateDirectories: true)
        try Command("mount", ["-t", "squashfs", "-o", "ro,loop", image, mounted]).run()
        defer { _ = try? Command("umount", [mounted]).runAllowingFailure() }
        let reference = try Self.listing(mounted, scratch: layers.scratch, name: "single")
        #expect(merged.count > 10_000)
        #expect(
            merged == reference,
            "only in the layers: \(Set(merged).subtracting(reference).sorted().prefix(10)); only in the single tree: \(Set(reference).subtracting(merged).sorted().prefix(10))"
        )

        // The installer copies the merged view (what /run/martlet/host-root shows the live
        // system) with its own code; the installed tree must list the same.
        let installed = layers.scratch.file("installed")
        try FileManager.default.createDirectory(atPath: installed, withIntermediateDirectories: true)
        try SystemCopy.copy(from: layers.merged, to: installed)
        let copy = try Self.listing(installed, scratch: layers.scratch, name: "installed")
        #expect(
            copy == merged,
            "only installed: \(Set(copy).subtracting(merged).sorted().prefix(10)); not installed: \(Set(merged).subtracting(copy).sorted().prefix(10))"
        )
    }

    @Test("a build from cold caches (base layer and host initramfs made anew) is bit-identical to one from warm caches")
    func coldAndWarmCachesGiveTheSameISO() throws {
        let warm = try TestBuilds.first.get()
        let profile = try Profile.load(TestBuilds.packageRoot + "/profiles/test")
        var options = try TestBuilds.options(output: TestBuilds.outputRoot + "/cold", profile: profile)
        // A cache of its own holding only the rootfs tarball, linked from the shared cache.
        let cache = try ScratchDirectory("martlet-cold-cache")
        let tarball = try Self.singleTree().rootfsTarball
        try FileManager.default.createDirectory(atPath: cache.file("rootfs"), withIntermediateDirectories: true)
        try FileManager.default.linkItem(
            atPath: tarball, toPath: cache.file("rootfs/" + (tarball as NSString).lastPathComponent))
        options.cacheDirectory = cache.path
        try? FileManager.default.removeItem(atPath: options.outputDirectory)
        let cold = try BuildPipeline(options).run(logger: Logger(label: "test.cold"))
        #expect(FileManager.default.fileExists(atPath: try BaseLayerStage.image(options)))
        #expect(cold.isoSHA256 == warm.isoSHA256)
    }

    @Test("after an overlay change only the Martlet layer is packed again; the base layer is the cached one, byte for byte")
    func overlayChangeRepacksOnlyTheMartletLayer() throws {
        let first = try TestBuilds.first.get()
        var profile = try Profile.load(TestBuilds.packageRoot + "/profiles/test")
        let extra = try ScratchDirectory("martlet-extra-overlay")
        try extra.write("etc/martlet/changed-by-test", "a change\n")
        profile.overlays.append(.init(source: extra.path, path: extra.path))
        let output = TestBuilds.outputRoot + "/changed"
        try? FileManager.default.removeItem(atPath: output)
        let changed = try BuildPipeline(try TestBuilds.options(output: output, profile: profile))
            .run(logger: Logger(label: "test.changed"))
        #expect((changed.stageSeconds["base-layer"] ?? 99) < 5, "\(changed.stageSeconds)")

        let before = try MergedLayers(iso: first.iso)
        let after = try MergedLayers(iso: changed.iso)
        #expect(try before.hash("base") == after.hash("base"))
        #expect(try before.hash("binaries") == after.hash("binaries"))
        #expect(try before.hash("martlet") != after.hash("martlet"))
        #expect(
            try String(contentsOfFile: after.merged + "/etc/martlet/changed-by-test", encoding: .utf8)
                == "a change\n")
        #expect(!FileManager.default.fileExists(atPath: before.merged + "/etc/martlet/changed-by-test"))
    }
}
