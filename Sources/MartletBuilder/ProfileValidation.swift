import Foundation

/// The rules a profile's values must follow. Each `…Problem` returns what is wrong with a
/// value (to be shown after the key's location), or nil when it is fine.
enum ProfileRules {
    /// mmdebstrap's variants.
    static let variants = [
        "extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important",
        "debootstrap", "standard",
    ]
    /// Ids of the boot menu entries in iso/ (the GRUB templates).
    static let bootEntries = ["install", "install-serial", "unattended", "rescue", "firstdisk"]
    static let baudRates = [9600, 19200, 38400, 57600, 115200]

    static func isName(_ text: String) -> Bool {
        !text.isEmpty
            && text.allSatisfy {
                ("a"..."z").contains($0) || $0.isASCII && $0.isNumber || $0 == "-"
            }
    }

    static func nameProblem(_ name: String) -> String? {
        isName(name)
            ? nil : "'\(name)' is not a profile name: use lower case letters, digits and '-'"
    }

    static func versionProblem(_ version: String) -> String? {
        if version.isEmpty { return "is empty; give a version such as \"0.1.0\"" }
        let allowed = version.allSatisfy {
            $0.isASCII && ($0.isLetter || $0.isNumber || ".+~-_".contains($0))
        }
        return allowed
            ? nil
            : "'\(version)' may only hold letters, digits and . + ~ - _ (it names the ISO file)"
    }

    static func suiteProblem(_ suite: String) -> String? {
        guard !suite.isEmpty else { return "is empty; give a Debian suite such as \"bookworm\"" }
        let allowed = suite.allSatisfy {
            $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-")
        }
        return allowed
            ? nil : "'\(suite)' is not a Debian suite name (e.g. \"bookworm\", \"stable\")"
    }

    static func mirrorProblem(_ mirror: String) -> String? {
        guard let url = URL(string: mirror), let scheme = url.scheme?.lowercased(),
            ["http", "https", "file"].contains(scheme)
        else {
            return "'\(mirror)' is not an http://, https:// or file:// URL"
        }
        if scheme != "file" && (url.host ?? "").isEmpty {
            return "'\(mirror)' has no host name"
        }
        if scheme == "file" && url.path.isEmpty { return "'\(mirror)' has no path" }
        // mmdebstrap reads "URL SUITE COMPONENTS" from one string: a space would smuggle in
        // a suite and components of the profile writer's choosing.
        if mirror.contains(where: { $0.isWhitespace || !$0.isASCII || "\"'<>\\`{}|^".contains($0) }) {
            return "'\(mirror)' contains spaces or characters a URL cannot hold"
        }
        return nil
    }

    static func componentsProblem(_ components: [String]) -> String? {
        if components.isEmpty { return "is empty; list at least \"main\"" }
        for component in components
        where component.isEmpty
            || !component.allSatisfy({
                $0.isASCII && ($0.isLowercase || $0.isNumber || "-/".contains($0))
            })
        {
            return
                "'\(component)' is not an archive component (e.g. \"main\", \"non-free-firmware\")"
        }
        return nil
    }

    /// Debian policy §5.6.7: lower case letters, digits, + - .; at least two characters,
    /// starting with a letter or digit.
    static func packageNameProblem(_ name: String) -> String? {
        let characters = Array(name)
        guard characters.count >= 2, let first = characters.first,
            first.isASCII && (first.isLowercase || first.isNumber),
            characters.allSatisfy({
                $0.isASCII && ($0.isLowercase || $0.isNumber || "+-.".contains($0))
            })
        else {
            return "'\(name)' is not a valid Debian package name"
        }
        return nil
    }

    static func packagesProblem(_ packages: [String]) -> String? {
        if packages.isEmpty { return "is empty; a root filesystem needs packages" }
        var seen: Set<String> = []
        for (index, package) in packages.enumerated() {
            if let problem = packageNameProblem(package) {
                return "element \(index + 1): \(problem)"
            }
            if !seen.insert(package).inserted { return "'\(package)' is listed twice" }
        }
        return nil
    }

    /// The characters a kernel command line in grub.cfg may hold: an allow-list, as GRUB's
    /// script syntax gives meaning to many more (`| & > < { } # ; $` quotes, brackets).
    static let cmdlineCharacters = Set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,:=/+@%")

    static func cmdlineProblem(_ cmdline: String) -> String? {
        guard let bad = cmdline.first(where: { !cmdlineCharacters.contains($0) }) else { return nil }
        return "'\(bad.unicodeScalars.map { $0.escaped(asASCII: true) }.joined())' may not appear: it is written "
            + "into grub.cfg, so only letters, digits, spaces and - _ . , : = / + @ % are allowed"
    }

    /// An absolute path inside the root filesystem without `..`; globs (`*`, `?`, `[`) only
    /// when `allowGlob`.
    static func rootfsPathProblem(_ path: String, allowGlob: Bool) -> String? {
        guard path.hasPrefix("/") else {
            return "'\(path)' is not absolute: paths inside the root filesystem start with '/'"
        }
        let components = path.split(separator: "/")
        guard !components.isEmpty else { return "'\(path)' would be the whole root filesystem" }
        if components.contains("..") { return "'\(path)' contains '..'" }
        if components.contains(".") { return "'\(path)' contains '.'; name the path itself" }
        if components[0].allSatisfy({ "*?[]".contains($0) }) {
            return "'\(path)' would match top-level folders of the root filesystem"
        }
        if !allowGlob && path.contains(where: { "*?[".contains($0) }) {
            return "'\(path)' contains a glob; name one path"
        }
        return nil
    }

    static func moduleTreeProblem(_ tree: String) -> String? {
        if tree.isEmpty { return "an empty module tree would remove every module" }
        if tree.hasPrefix("/") { return "'\(tree)' must be relative to the kernel's module folder" }
        let components = tree.split(separator: "/")
        if components.contains("..") { return "'\(tree)' contains '..'" }
        if components.isEmpty || components.contains(".") || components.contains(where: { $0.contains("*") }) {
            return "'\(tree)' would remove every module; name a subtree such as \"kernel/sound\""
        }
        return nil
    }

    /// `"0755"`, `"755"`, `"1777"` → the mode bits; nil when not 3–4 octal digits.
    static func octalMode(_ text: String) -> UInt32? {
        guard (3...4).contains(text.count), text.allSatisfy({ ("0"..."7").contains($0) }) else {
            return nil
        }
        return UInt32(text, radix: 8)
    }

    static func blockSizeProblem(_ size: UInt64) -> String? {
        let isPowerOfTwo = size > 0 && size & (size - 1) == 0
        return isPowerOfTwo && (4096...1_048_576).contains(size)
            ? nil : "\(size) bytes is not a power of two between 4 KiB and 1 MiB"
    }

    static func labelProblem(_ label: String) -> String? {
        if label.isEmpty { return "is empty" }
        if label.count > 32 {
            return "'\(label)' has \(label.count) characters; ISO 9660 allows 32"
        }
        let allowed = label.allSatisfy {
            $0.isASCII && ($0.isUppercase || $0.isNumber || $0 == "_")
        }
        return allowed ? nil : "'\(label)' may only hold A-Z, 0-9 and _"
    }

    /// `MARTLET_0_1_0` style label from the name and version.
    static func defaultLabel(name: String, version: String) -> String {
        let raw = "\(name)_\(version)".uppercased().map {
            $0.isASCII && ($0.isUppercase || $0.isNumber) ? $0 : "_"
        }
        return String(String(raw).prefix(32))
    }

    static func outputProblem(_ output: String) -> String? {
        if output.contains("/") { return "'\(output)' must be a file name without '/'" }
        if !output.hasSuffix(".iso") || output == ".iso" {
            return "'\(output)' does not end in .iso"
        }
        if output.hasPrefix(".") { return "'\(output)' would be a hidden file" }
        return nil
    }

    static func serialProblem(_ serial: String) -> String? {
        let parts = serial.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].hasPrefix("ttyS"), let unit = Int(parts[0].dropFirst(4)),
            (0...3).contains(unit), let baud = Int(parts[1])
        else {
            return "'\(serial)' is not a serial console"
        }
        return baudRates.contains(baud)
            ? nil
            : "\(baud) is not a baud rate (\(baudRates.map(String.init).joined(separator: ", ")))"
    }
}
