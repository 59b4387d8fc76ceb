import Foundation
import MartletCore

extension Profile {
    /// Reads and validates a profile given as a name (`default` → `profiles/default`) or as
    /// a path to a folder or a profile.toml. Every error names the file, the key and the line.
    public static func load(_ nameOrPath: String, profilesDirectory: String = "profiles") throws
        -> Profile
    {
        let file = try locate(nameOrPath, profilesDirectory: profilesDirectory)
        return try parse(TOMLDocument(path: file))
    }

    /// Parses and validates an already read profile; relative paths resolve against the
    /// folder of `document.path`.
    public static func parse(_ document: TOMLDocument) throws -> Profile {
        let reader = ProfileReader(document: document)
        return try reader.read()
    }

    /// The profile.toml that `nameOrPath` means.
    static func locate(_ nameOrPath: String, profilesDirectory: String) throws -> String {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        let looksLikePath =
            nameOrPath.contains("/") || nameOrPath.hasSuffix(".toml") || nameOrPath == "."
            || nameOrPath == ".."
        if looksLikePath || fm.fileExists(atPath: nameOrPath) && !ProfileRules.isName(nameOrPath) {
            guard fm.fileExists(atPath: nameOrPath, isDirectory: &isDirectory) else {
                throw MartletError(
                    .notFound, "profile '\(nameOrPath)' does not exist",
                    hint:
                        "give a profile name (a folder under \(profilesDirectory)/), a profile folder or a profile.toml"
                )
            }
            let file = isDirectory.boolValue ? nameOrPath + "/profile.toml" : nameOrPath
            guard fm.fileExists(atPath: file) else {
                throw MartletError(
                    .notFound, "profile folder '\(nameOrPath)' has no profile.toml",
                    hint: "a profile folder holds a profile.toml; see profiles/README.md")
            }
            return absolute(file)
        }
        let file = "\(profilesDirectory)/\(nameOrPath)/profile.toml"
        guard fm.fileExists(atPath: file) else {
            let available =
                ((try? fm.contentsOfDirectory(atPath: profilesDirectory)) ?? [])
                .filter { fm.fileExists(atPath: "\(profilesDirectory)/\($0)/profile.toml") }
                .sorted()
            throw MartletError(
                .notFound, "no profile named '\(nameOrPath)': '\(file)' does not exist",
                hint: available.isEmpty
                    ? "run martlet from the repository's top folder, or give a path to a profile.toml"
                    : "profiles in \(profilesDirectory)/: \(available.joined(separator: ", "))")
        }
        return absolute(file)
    }

    static func absolute(_ path: String) -> String {
        let url =
            path.hasPrefix("/")
            ? URL(fileURLWithPath: path)
            : URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
                .appendingPathComponent(path)
        return url.standardizedFileURL.path
    }
}

/// Reads one profile.toml key by key, validating each value where it is read so every error
/// carries the key's location.
struct ProfileReader {
    let document: TOMLDocument
    var directory: String { (document.path as NSString).deletingLastPathComponent }

    func read() throws -> Profile {
        let root = document.rootSection
        let name = try root.required(
            try root.string("name"), "name", hint: "e.g. name = \"default\"")
        try check(root, "name", ProfileRules.nameProblem(name))
        let version = try root.required(
            try root.string("version"), "version", hint: "e.g. version = \"0.1.0\"")
        try check(root, "version", ProfileRules.versionProblem(version))
        let description = try root.string("description") ?? ""

        let debian = try readDebian(try requiredSection(root, "debian"))
        let kernel = try readKernel(try root.section("kernel"))
        let (host, live) = try readOverlays(try root.section("overlays"))
        let fileModes = try (try root.sections("file") ?? []).map(readFileMode)
        let trim = try readTrim(try root.section("trim"))
        let squashfs = try readSquashfs(try root.section("squashfs"))
        let iso = try readISO(
            try root.section("iso"), name: name, version: version, architecture: debian.architecture
        )
        let boot = try readBoot(try root.section("boot"))
        try root.finish()

        return Profile(
            name: name, version: version, description: description,
            directory: directory.isEmpty ? "." : directory, path: document.path,
            debian: debian, kernel: kernel, overlays: host, liveOverlays: live,
            fileModes: fileModes, trim: trim, squashfs: squashfs, iso: iso, boot: boot)
    }

    private func requiredSection(_ root: TOMLSection, _ key: String) throws -> TOMLSection {
        try root.required(
            try root.section(key), key, hint: "add a [\(key)] table; see profiles/README.md")
    }

    private func readDebian(_ section: TOMLSection) throws -> Profile.Debian {
        let suite = try section.required(
            try section.string("suite"), "suite", hint: "e.g. suite = \"bookworm\"")
        try check(section, "suite", ProfileRules.suiteProblem(suite))
        let mirror = try section.required(
            try section.string("mirror"), "mirror",
            hint: "e.g. mirror = \"http://deb.debian.org/debian\"")
        try check(section, "mirror", ProfileRules.mirrorProblem(mirror))
        let components = try section.strings("components") ?? ["main"]
        try check(section, "components", ProfileRules.componentsProblem(components))
        let architecture = try section.string("architecture") ?? "amd64"
        try check(
            section, "architecture",
            architecture == "amd64"
                ? nil : "'\(architecture)' is not supported; Martlet builds only \"amd64\"")
        let variant =
            try section.choice("variant", ProfileRules.variants) ?? "minbase"
        let packages = try section.required(
            try section.strings("packages"), "packages",
            hint: "list the Debian packages of the root filesystem, e.g. packages = [\"systemd\"]")
        try check(
            section, "packages", ProfileRules.packagesProblem(packages),
            hint:
                "Debian package names are lower case letters, digits and + - . (at least two characters)"
        )
        try section.finish()
        return Profile.Debian(
            suite: suite, mirror: mirror, components: components, architecture: architecture,
            variant: variant, packages: packages)
    }

    private func readKernel(_ section: TOMLSection?) throws -> Profile.Kernel {
        guard let section else { return Profile.Kernel(package: "linux-image-amd64", cmdline: "") }
        let package = try section.string("package") ?? "linux-image-amd64"
        try check(section, "package", ProfileRules.packageNameProblem(package))
        let cmdline = try section.string("cmdline") ?? ""
        try check(section, "cmdline", ProfileRules.cmdlineProblem(cmdline))
        try section.finish()
        return Profile.Kernel(package: package, cmdline: cmdline)
    }

    private func readOverlays(_ section: TOMLSection?) throws -> (
        [Profile.Overlay], [Profile.Overlay]
    ) {
        guard let section else { return ([], []) }
        let host = try readOverlayList(section, "host")
        let live = try readOverlayList(section, "live")
        try section.finish()
        return (host, live)
    }

    private func readOverlayList(_ section: TOMLSection, _ key: String) throws -> [Profile.Overlay]
    {
        let sources = try section.strings(key) ?? []
        return try sources.map { source in
            let path = Profile.absolute(
                source.hasPrefix("/")
                    ? source : (directory.isEmpty ? source : "\(directory)/\(source)"))
            var isDirectory: ObjCBool = false
            guard !source.isEmpty,
                FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
            else {
                throw section.error(
                    key, "overlay '\(source)' does not exist (looked for '\(path)')",
                    hint: "overlay paths are relative to the profile's folder \(directory)")
            }
            guard path != "/" else {
                throw section.error(
                    key, "overlay '\(source)' is the build machine's whole root folder",
                    hint: "an overlay is a folder of files for the image, e.g. \"../../overlays/host\"")
            }
            guard isDirectory.boolValue else {
                throw section.error(
                    key, "overlay '\(source)' is not a folder ('\(path)')",
                    hint: "an overlay is a folder whose tree is copied into the root filesystem")
            }
            return Profile.Overlay(source: source, path: path)
        }
    }

    private func readFileMode(_ section: TOMLSection) throws -> Profile.FileMode {
        try relocating {
            let path = try section.required(
                try section.string("path"), "path", hint: "e.g. path = \"/etc/martlet\"")
            try check(section, "path", ProfileRules.rootfsPathProblem(path, allowGlob: false))
            var mode: UInt32?
            let modeHint = "write the mode as a string of 3 or 4 octal digits, e.g. mode = \"0755\""
            do {
                if let text = try section.string("mode") {
                    guard let parsed = ProfileRules.octalMode(text) else {
                        throw fail(
                            section, "mode", "'\(text)' is not an octal mode", hint: modeHint)
                    }
                    mode = parsed
                }
            } catch var error as MartletError {
                error.hint = error.hint ?? modeHint
                throw error
            }
            let owner = try readID(section, "owner")
            let group = try readID(section, "group")
            if mode == nil && owner == nil && group == nil {
                throw fail(
                    section, "path", "sets neither mode, owner nor group",
                    hint: "add mode = \"0755\", owner = 0 and/or group = 0, or remove this [[file]]"
                )
            }
            try section.finish()
            return Profile.FileMode(path: path, mode: mode, owner: owner, group: group)
        }
    }

    private func readID(_ section: TOMLSection, _ key: String) throws -> UInt32? {
        guard let value = try section.int(key) else { return nil }
        guard let id = UInt32(exactly: value), value < 0xFFFF_FFFF else {
            throw fail(section, key, "\(value) is not a user/group id (0–4294967294)")
        }
        return id
    }

    private func readTrim(_ section: TOMLSection?) throws -> Profile.Trim {
        guard let section else { return Profile.Trim(paths: [], kernelModules: []) }
        let paths = try section.strings("paths") ?? []
        for path in paths {
            try check(section, "paths", ProfileRules.rootfsPathProblem(path, allowGlob: true))
        }
        let modules = try section.strings("kernel-modules") ?? []
        for module in modules {
            try check(
                section, "kernel-modules", ProfileRules.moduleTreeProblem(module),
                hint:
                    "write module trees relative to /lib/modules/<version>/kernel/, e.g. \"drivers/gpu\""
            )
        }
        try section.finish()
        return Profile.Trim(paths: paths, kernelModules: modules)
    }

    private func readSquashfs(_ section: TOMLSection?) throws -> Profile.Squashfs {
        guard let section else {
            return Profile.Squashfs(compression: "xz", level: nil, blockSize: 1 << 20)
        }
        let compression = try section.choice("compression", ["zstd", "xz"]) ?? "xz"
        let level = try section.int("level")
        if let level {
            try check(
                section, "level",
                compression == "zstd"
                    ? ((1...22).contains(level) ? nil : "\(level) is out of range for zstd (1–22)")
                    : "xz takes no level in mksquashfs",
                hint: compression == "zstd" ? nil : "remove 'level', or use compression = \"zstd\"")
        }
        let blockSize = try section.size("block-size")?.bytes ?? (1 << 20)
        try check(
            section, "block-size", ProfileRules.blockSizeProblem(blockSize),
            hint: "use a power of two from 4096 to 1048576, e.g. \"1MiB\" or 131072")
        try section.finish()
        return Profile.Squashfs(compression: compression, level: level, blockSize: Int(blockSize))
    }

    private func readISO(
        _ section: TOMLSection?, name: String, version: String, architecture: String
    ) throws -> Profile.ISO {
        let defaultOutput = "\(name)-\(version)-\(architecture).iso"
        guard let section else {
            return Profile.ISO(
                label: ProfileRules.defaultLabel(name: name, version: version),
                output: defaultOutput, publisher: "Martlet")
        }
        let label =
            try section.string("label") ?? ProfileRules.defaultLabel(name: name, version: version)
        try check(
            section, "label", ProfileRules.labelProblem(label),
            hint: "use 1 to 32 characters of A-Z, 0-9 and _, e.g. \"MARTLET_0_1_0\"")
        let output = try section.string("output") ?? defaultOutput
        try check(
            section, "output", ProfileRules.outputProblem(output),
            hint:
                "give a file name ending in .iso, e.g. \"martlet-0.1.0-amd64.iso\"; the folder comes from --output"
        )
        let publisher = try section.string("publisher") ?? "Martlet"
        try check(
            section, "publisher",
            publisher.utf8.count <= 128 ? nil : "is longer than the 128 characters ISO 9660 allows")
        try section.finish()
        return Profile.ISO(label: label, output: output, publisher: publisher)
    }

    private func readBoot(_ section: TOMLSection?) throws -> Profile.Boot {
        guard let section else {
            return Profile.Boot(defaultEntry: "install", timeout: 5, serial: "ttyS0,115200")
        }
        let entry = try section.choice("default", ProfileRules.bootEntries) ?? "install"
        let timeout = try section.int("timeout") ?? 5
        try check(
            section, "timeout",
            timeout >= -1 ? nil : "\(timeout) is not a timeout",
            hint: "seconds before the default entry boots: 0 boots at once, -1 waits forever")
        let serial = try section.string("serial") ?? "ttyS0,115200"
        try check(
            section, "serial", ProfileRules.serialProblem(serial),
            hint: "write PORT,BAUD, e.g. \"ttyS0,115200\"")
        try section.finish()
        return Profile.Boot(defaultEntry: entry, timeout: timeout, serial: serial)
    }

    // MARK: - Errors with locations

    /// Throws an error at `key` when `problem` is set.
    private func check(
        _ section: TOMLSection, _ key: String, _ problem: String?, hint: String? = nil
    ) throws {
        guard let problem else { return }
        throw fail(section, key, problem, hint: hint)
    }

    private func fail(
        _ section: TOMLSection, _ key: String, _ message: String, hint: String? = nil
    ) -> MartletError {
        relocated(section.error(key, message, hint: hint))
    }

    /// Runs `body`, adding the line to errors about keys inside arrays of tables (`[[file]]`),
    /// which `TOMLDocument.location` cannot place.
    private func relocating<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as MartletError {
            throw relocated(error)
        }
    }

    private func relocated(_ error: MartletError) -> MartletError {
        let prefix = "\(document.path): key '"
        guard error.message.hasPrefix(prefix) else { return error }
        let rest = error.message.dropFirst(prefix.count)
        guard let end = rest.firstIndex(of: "'") else { return error }
        let keyPath = String(rest[..<end])
        guard let (line, column) = document.line(of: keyPath) else {
            return error
        }
        var fixed = error
        fixed.message =
            "\(document.path):\(line):\(column): "
            + error.message.dropFirst(document.path.count + 2)
        return fixed
    }
}
