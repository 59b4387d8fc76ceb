import Foundation
import MartletCore

/// Copies the profile's overlays, in order, onto the host root filesystem, and the live
/// overlays into the separate live layer. Modes and symlinks are kept; everything becomes
/// root-owned (a git checkout's owner means nothing on the target); `[[file]]` entries then
/// set owners and modes explicitly.
struct OverlayStage: BuildStage {
    let name = "overlays"

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let profile = context.profile
        try FileManager.default.createDirectory(
            atPath: context.liveLayer, withIntermediateDirectories: true)
        for overlay in profile.overlays {
            reporter.note("host overlay \(overlay.source)")
            try Self.copyTree(overlay.path, into: context.rootfs, context: context)
        }
        for overlay in profile.liveOverlays {
            reporter.note("live overlay \(overlay.source)")
            try Self.copyTree(overlay.path, into: context.liveLayer, context: context)
        }
        try writeRelease(context)
        for entry in profile.fileModes {
            let target = context.rootfs + entry.path
            guard FileManager.default.fileExists(atPath: target) else {
                throw MartletError(
                    .invalidInput,
                    "\(profile.path): [[file]] path '\(entry.path)' does not exist in the root filesystem",
                    hint: "add it through an overlay or a package, or remove the [[file]] entry")
            }
            if let mode = entry.mode, chmod(target, mode_t(mode)) != 0 {
                throw MartletError.system("chmod", path: target)
            }
            if entry.owner != nil || entry.group != nil {
                let owner = entry.owner.map { uid_t($0) } ?? uid_t.max
                let group = entry.group.map { gid_t($0) } ?? gid_t.max
                if lchown(target, owner, group) != 0 {
                    throw MartletError.system("lchown", path: target)
                }
            }
        }
    }

    /// `/etc/martlet/release` tells an installed host (and the live system) what it is.
    private func writeRelease(_ context: BuildContext) throws {
        let profile = context.profile
        let text = """
            NAME=Martlet
            VERSION=\(profile.version)
            PROFILE=\(profile.name)
            BUILD_EPOCH=\(context.epoch)

            """
        for root in [context.rootfs] {
            try FileManager.default.createDirectory(
                atPath: root + "/etc/martlet", withIntermediateDirectories: true)
            try text.write(toFile: root + "/etc/martlet/release", atomically: false, encoding: .utf8)
        }
    }

    /// `cp -R` keeps symlinks as symlinks and modes with `--preserve=mode`; running as root
    /// makes every copy root-owned.
    static func copyTree(_ source: String, into destination: String, context: BuildContext) throws {
        try context.run(
            "cp", ["-R", "--preserve=mode,links", "--no-preserve=ownership", source + "/.", destination])
    }
}

/// Installs the release builds of Martlet's executables into `/usr/bin` and records their
/// hashes for the manifest. `martlet` is a multi-call binary that also holds the installer,
/// so `martlet-installer` is a link to it rather than a second copy of Foundation and its
/// ICU data.
struct BinariesStage: BuildStage {
    let name = "binaries"
    /// The release builds copied into the image.
    static let files = ["martlet", "martlet-vmm"]
    /// Names the image gives a multi-call binary: link name → binary.
    static let links = ["martlet-installer": "martlet"]
    /// Every executable name in `/usr/bin`, as the manifest lists them.
    static var names: [String] { (files + links.keys).sorted() }

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        for binary in Self.files {
            let source = context.options.binariesDirectory + "/" + binary
            let dynamic = try context.run("readelf", ["-d", source]).stdoutText
            if dynamic.contains("libswiftCore.so") {
                throw MartletError(
                    .invalidInput,
                    "'\(source)' links the Swift runtime dynamically; the host image has no Swift runtime",
                    hint: "build with: swift build -c release --static-swift-stdlib")
            }
            let target = context.rootfs + "/usr/bin/" + binary
            try? FileManager.default.removeItem(atPath: target)
            try FileManager.default.copyItem(atPath: source, toPath: target)
            // Symbols are a third of a static Swift binary; the ISO has better uses for it.
            try context.run("strip", ["--strip-unneeded", target])
            chmod(target, 0o755)
            context.binaryHashes[binary] = try Digest.sha256(file: target)
            context.sizes["binary-\(binary)"] = fileSize(target)
        }
        for (link, binary) in Self.links {
            let target = context.rootfs + "/usr/bin/" + link
            try? FileManager.default.removeItem(atPath: target)
            try FileManager.default.createSymbolicLink(atPath: target, withDestinationPath: binary)
            context.binaryHashes[link] = context.binaryHashes[binary]
        }
    }
}

/// Removes what a hypervisor host does not need, as the profile declares, plus state that
/// must never be shared between machines (machine-id, SSH host keys). All of it is done to
/// the Debian packages when the base layer is made (`trimPackages`); this stage applies the
/// profile's paths again to the merged root, for what the overlays brought.
struct TrimStage: BuildStage {
    let name = "trim"

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let removed = try Self.removePaths(context.profile.trim.paths, in: context.rootfs)
        reporter.note("removed \(removed) paths the overlays brought")
    }

    /// Trims the unpacked Debian root at `root`: paths, kernel module trees (then depmod),
    /// per-machine identity, and any initramfs a package made despite `INITRD=No` (it would be
    /// the build machine's; `HostInitramfsStage` makes the host's own).
    static func trimPackages(
        _ root: String, kernelVersion: String, context: BuildContext, reporter: StageReporter
    ) throws -> Int {
        var removed = try removePaths(context.profile.trim.paths, in: root)
        let modules = root + "/lib/modules/\(kernelVersion)/kernel/"
        for tree in context.profile.trim.kernelModules {
            let path = modules + tree
            if FileManager.default.fileExists(atPath: path) {
                try FileManager.default.removeItem(atPath: path)
                removed += 1
            } else {
                reporter.note("kernel module tree '\(tree)' not present, nothing to trim")
            }
        }
        // Module dependency files must describe what is left, or modprobe fails later.
        try context.run("depmod", ["-b", root, kernelVersion])

        // Per-machine identity: systemd creates the machine-id on first boot of an empty
        // file; SSH host keys are generated on first boot by martlet-ssh-hostkeys.service.
        try "".write(toFile: root + "/etc/machine-id", atomically: false, encoding: .utf8)
        try? FileManager.default.removeItem(atPath: root + "/var/lib/dbus/machine-id")
        for path in glob(root + "/etc/ssh/ssh_host_*") + glob(root + "/boot/initrd.img-*") {
            try FileManager.default.removeItem(atPath: path)
        }
        try linkInitramfs(root)
        return removed
    }

    /// The `/initrd.img` links beside `/vmlinuz` that Debian's linux-update-symlinks makes when
    /// the kernel is installed with an initramfs. mmdebstrap runs with `INITRD=No`
    /// (`RootfsStage`), so it made none; the image they name is HostInitramfsStage's, and the
    /// host keeps the layout it would have had.
    static func linkInitramfs(_ root: String) throws {
        for suffix in ["", ".old"] {
            let initrd = root + "/initrd.img" + suffix
            guard let kernel = try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/vmlinuz" + suffix),
                kernel.hasPrefix("boot/vmlinuz-"),
                (try? FileManager.default.destinationOfSymbolicLink(atPath: initrd)) == nil
            else { continue }
            let version = kernel.dropFirst("boot/vmlinuz-".count)
            try FileManager.default.createSymbolicLink(atPath: initrd, withDestinationPath: "boot/initrd.img-\(version)")
        }
    }

    static func removePaths(_ patterns: [String], in root: String) throws -> Int {
        var removed = 0
        for pattern in patterns {
            for match in glob(root + pattern) where match.hasPrefix(root + "/") {
                try FileManager.default.removeItem(atPath: match)
                removed += 1
            }
        }
        return removed
    }

    static func glob(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard Glibc.glob(pattern, 0, nil, &result) == 0 else { return [] }
        return (0..<Int(result.gl_pathc)).compactMap { index in
            result.gl_pathv[index].map { String(cString: $0) }
        }
    }
}
