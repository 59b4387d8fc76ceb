import Foundation
import MartletCore
import Synchronization

/// Debian root filesystem from mmdebstrap, cached as a tarball keyed by a digest of
/// everything that decides its contents (suite, mirror, components, architecture,
/// variant, packages). A cache entry appears only once complete (written under a
/// temporary name, then renamed), so an interrupted build never leaves a bad entry.
/// `BaseLayerStage` unpacks it; when the base layer is cached, nothing here runs.
struct RootfsStage: BuildStage {
    let name = "rootfs"

    /// Bumped when the way the rootfs is made changes, so old cache entries are not reused.
    static let cacheFormat = "3"

    static func cacheKey(_ profile: Profile) -> String {
        let debian = profile.debian
        let text = [
            "format=\(cacheFormat)", "suite=\(debian.suite)", "mirror=\(debian.mirror)",
            "components=\(debian.components.joined(separator: ","))",
            "architecture=\(debian.architecture)", "variant=\(debian.variant)",
            "kernel=\(profile.kernel.package)",
            "packages=\(Set(debian.packages).sorted().joined(separator: ","))",
        ].joined(separator: "\n")
        return Digest.sha256(text: text)
    }

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let profile = context.profile
        let key = Self.cacheKey(profile)
        context.rootfsDigest = key
        let cacheDir = context.options.cacheDirectory + "/rootfs"
        try FileManager.default.createDirectory(atPath: cacheDir, withIntermediateDirectories: true)
        let tarball = "\(cacheDir)/\(profile.debian.suite)-\(key.prefix(16)).tar"
        context.rootfsTarball = tarball
        BuildCache.removeAbandonedPartials(in: cacheDir)

        if try BaseLayerStage.isCached(context.options) {
            // The base layer was made from it already; the tarball may even be gone.
            reporter.note("base layer cached; the root filesystem is not needed")
            return
        }
        if context.options.useCache, FileManager.default.fileExists(atPath: tarball) {
            reporter.note("using cached root filesystem \(tarball)")
        } else {
            try bootstrap(profile, into: tarball, context: context, reporter: reporter)
        }
    }

    private func bootstrap(
        _ profile: Profile, into tarball: String, context: BuildContext, reporter: StageReporter
    ) throws {
        let debian = profile.debian
        let temporary = tarball + ".partial-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        let packages = ([profile.kernel.package] + debian.packages).joined(separator: ",")
        let arguments = [
            "--format=tar", "--variant=\(debian.variant)", "--architectures=\(debian.architecture)",
            "--components=\(debian.components.joined(separator: ","))",
            "--include=\(packages)",
            // The host image never needs recommends; they only add size.
            "--aptopt=APT::Install-Recommends \"false\"",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            // Merged /usr the way debootstrap makes it (usr-is-merged), instead of the
            // usrmerge package, which would drag full perl into the host image.
            "--hook-dir=/usr/share/mmdebstrap/hooks/maybe-merged-usr",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            debian.suite, temporary, debian.mirror,
        ]
        reporter.note("mmdebstrap \(debian.suite) from \(debian.mirror) (\(debian.packages.count + 1) packages)")
        let stderrLines = LineLog()
        do {
            // INITRD=No: the kernel's postinst makes no initramfs. One made here would be for
            // the build machine, and the base layer would throw it away (HostInitramfsStage
            // makes the host's); skipping it saves about 35 s of the bootstrap.
            try Command(
                "mmdebstrap", arguments,
                environment: ["SOURCE_DATE_EPOCH": String(context.epoch), "INITRD": "No"]
            ).stream(logger: context.logger) { line, _ in
                stderrLines.append(line)
                if line.hasPrefix("I: ") { reporter.update(message: String(line.dropFirst(3))) }
            }
        } catch var error as MartletError {
            // Surface apt's own words for the most common mistake: a package that does not exist.
            if let missing = stderrLines.lines.first(where: { $0.contains("Unable to locate package") }) {
                let package = missing.components(separatedBy: "Unable to locate package ").last ?? ""
                error = MartletError(
                    .invalidInput,
                    "\(profile.path): key 'debian.packages': package '\(package)' does not exist in \(debian.suite) (\(debian.mirror))",
                    hint: "fix the package name, or the suite/components in [debian]",
                    cause: missing)
            }
            throw error
        }
        // rename(2) replaces atomically: a concurrent build that stored the same key first
        // is simply overwritten with identical content.
        if rename(temporary, tarball) != 0 { throw MartletError.system("rename", path: tarball) }
    }
}

/// Lines gathered from a streaming subprocess, readable after it ends.
final class LineLog: Sendable {
    private let storage = Mutex<[String]>([])
    func append(_ line: String) { storage.withLock { $0.append(line) } }
    var lines: [String] { storage.withLock { $0 } }
}

func fileSize(_ path: String) -> UInt64 {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.uint64Value
        ?? 0
}
