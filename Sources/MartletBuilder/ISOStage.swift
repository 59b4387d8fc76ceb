import Foundation
import MartletCore

/// Writes the hybrid image with xorriso: ISO 9660 + Rock Ridge + Joliet; El Torito with a
/// BIOS entry (GRUB's eltorito image) and an EFI entry (the appended EFI system
/// partition); GRUB's hybrid MBR and a GPT listing the ESP, so the same file boots from a
/// CD and, written with `dd`, from a USB stick on both firmwares.
struct ISOStage: BuildStage {
    let name = "iso"

    /// xorriso patches the boot info table into the BIOS image on the ISO, so its bytes on
    /// the medium differ from the tree's and it cannot be listed in `/SHA256SUMS`.
    static let unlistedFiles: Set<String> = ["./boot/grub/bios.img"]

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let tree = context.isoTree
        let profile = context.profile
        try FileManager.default.createDirectory(
            atPath: tree + "/.disk", withIntermediateDirectories: true)
        try "Martlet \(profile.version) amd64 (profile \(profile.name))\n".write(
            toFile: tree + "/.disk/info", atomically: false, encoding: .utf8)
        try writeChecksums(tree)
        try context.run("touch", ["-h", "-d", "@\(context.epoch)"] + allPaths(tree))

        let iso = context.work + "/image.iso"
        let arguments = Self.xorrisoArguments(
            output: iso, label: profile.iso.label,
            publisher: profile.iso.publisher.isEmpty ? "Martlet" : profile.iso.publisher,
            application: "Martlet \(profile.version)", efiImage: context.bootImages + "/efi.img",
            tree: tree)
        try Command(
            "xorriso", arguments, environment: ["SOURCE_DATE_EPOCH": String(context.epoch)]
        ).stream(logger: context.logger) { line, _ in
            // "xorriso : UPDATE :  42.17% done"
            if let range = line.range(of: "% done"),
                let percent = Double(line[..<range.lowerBound].split(separator: " ").last ?? "")
            {
                reporter.update(completed: UInt64(percent), total: 100, unit: "percent")
            }
        }
        context.sizes["iso"] = fileSize(iso)
    }

    /// xorriso's arguments that master `tree` into the hybrid image `output`, with the EFI
    /// system partition image `efiImage` appended as GPT partition 2 and used as the EFI
    /// El Torito image. Tests master their fixtures with these same arguments.
    static func xorrisoArguments(
        output: String, label: String, publisher: String, application: String,
        efiImage: String, tree: String
    ) -> [String] {
        [
            "-as", "mkisofs", "-o", output, "-V", label,
            "-publisher", publisher, "-A", application,
            "-iso-level", "3", "-r", "-J", "-joliet-long",
            "--grub2-mbr", "/usr/lib/grub/i386-pc/boot_hybrid.img",
            "-partition_offset", "16", "--mbr-force-bootable",
            "-append_partition", "2", "0xef", efiImage,
            "-appended_part_as_gpt", "-iso_mbr_part_type", "0x00",
            "-c", "boot/boot.cat",
            "-b", "boot/grub/bios.img", "-no-emul-boot", "-boot-load-size", "4",
            "-boot-info-table", "--grub2-boot-info",
            "-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::", "-no-emul-boot",
            tree,
        ]
    }

    /// `/SHA256SUMS` inside the ISO: one line per file, `<sha256>  ./path`.
    private func writeChecksums(_ tree: String) throws {
        let files = try CPIOWriter.entries(of: tree).filter { path in
            var info = stat()
            return lstat(tree + "/" + path, &info) == 0 && info.st_mode & S_IFMT == S_IFREG
        }.map { "./" + $0 }.filter { !Self.unlistedFiles.contains($0) && $0 != "./SHA256SUMS" }
        let hashes = try Digest.sha256(files: files, relativeTo: tree)
        let text = files.map { "\(hashes[$0] ?? "")  \($0)\n" }.joined()
        try text.write(toFile: tree + "/SHA256SUMS", atomically: false, encoding: .utf8)
    }

    private func allPaths(_ tree: String) throws -> [String] {
        [tree] + (try CPIOWriter.entries(of: tree)).map { tree + "/" + $0 }
    }

    /// Moves the finished image into the output folder under its final name, with
    /// `SHA256SUMS` and the manifest beside it. Each file is written under a temporary
    /// name first, so a failed build never leaves a half-written ISO at the output path.
    static func publish(_ context: BuildContext) throws -> BuildResult {
        let fm = FileManager.default
        let output = context.options.outputDirectory
        try fm.createDirectory(atPath: output, withIntermediateDirectories: true)
        let name = context.profile.iso.output
        let isoPath = output + "/" + name
        let source = context.work + "/image.iso"
        let isoHash = try Digest.sha256(file: source)
        let manifest = try Manifest.make(context, isoName: name, isoSHA256: isoHash)

        let staged = isoPath + ".partial"
        try? fm.removeItem(atPath: staged)
        // Same filesystem most of the time; fall back to a copy across filesystems.
        do { try fm.moveItem(atPath: source, toPath: staged) } catch {
            try fm.copyItem(atPath: source, toPath: staged)
        }
        let sumsPath = output + "/SHA256SUMS"
        let manifestPath = output + "/" + (name.hasSuffix(".iso") ? String(name.dropLast(4)) : name)
            + ".manifest.json"
        try atomicWrite("\(isoHash)  \(name)\n", to: sumsPath)
        try atomicWrite(manifest, to: manifestPath)
        if rename(staged, isoPath) != 0 { throw MartletError.system("rename", path: isoPath) }
        return BuildResult(
            iso: isoPath, sha256sums: sumsPath, manifest: manifestPath,
            isoSize: fileSize(isoPath), isoSHA256: isoHash, stageSeconds: context.stageSeconds)
    }

    static func atomicWrite(_ text: String, to path: String) throws {
        let temporary = path + ".partial"
        try text.write(toFile: temporary, atomically: false, encoding: .utf8)
        if rename(temporary, path) != 0 { throw MartletError.system("rename", path: path) }
    }
}

/// The manifest written next to the ISO: what went into it, for audits and support.
struct Manifest: Codable {
    struct Package: Codable { var name: String; var version: String }
    var name: String
    var version: String
    var profile: String
    var profileSHA256: String
    var debian: [String: String]
    var kernel: String
    var rootfsDigest: String
    var sourceDateEpoch: Int
    var iso: [String: String]
    var sizes: [String: UInt64]
    var binaries: [String: String]
    var packages: [Package]

    static func make(_ context: BuildContext, isoName: String, isoSHA256: String) throws -> String {
        let profile = context.profile
        let status = try context.run(
            "dpkg-query",
            ["--admindir=\(context.rootfs)/var/lib/dpkg", "-W", "-f=${Package}\t${Version}\n"]
        ).stdoutText
        let packages = status.split(separator: "\n").compactMap { line -> Package? in
            let parts = line.split(separator: "\t", maxSplits: 1)
            return parts.count == 2 ? Package(name: String(parts[0]), version: String(parts[1])) : nil
        }.sorted { $0.name < $1.name }
        let manifest = Manifest(
            name: profile.name, version: profile.version, profile: profile.path,
            profileSHA256: try Digest.sha256(file: profile.path),
            debian: [
                "suite": profile.debian.suite, "mirror": profile.debian.mirror,
                "architecture": profile.debian.architecture,
            ],
            kernel: context.kernelVersion, rootfsDigest: context.rootfsDigest,
            sourceDateEpoch: context.epoch,
            iso: [
                "file": isoName, "sha256": isoSHA256, "label": profile.iso.label,
                // Says whether this is a release image or a `--fast` development one.
                "squashfs": profile.squashfs.summary,
            ],
            sizes: context.sizes, binaries: context.binaryHashes, packages: packages)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(manifest), as: UTF8.self) + "\n"
    }
}
