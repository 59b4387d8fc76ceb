import Foundation
import Logging
import MartletCore
import MartletSystem
import MartletValidation

/// Makes a copy of a Martlet ISO that installs unattended, from a given answer file or an
/// answer server: a file goes to `/martlet/answer.toml` on the medium; a server's URL (and
/// the fingerprint pinning its certificate) goes onto the kernel command line. The boot
/// menu's default becomes the unattended entry and `/SHA256SUMS` is updated, so the copy
/// still passes `martlet verify`. xorriso replays the original boot setup (El Torito, MBR,
/// GPT, ESP), so the copy boots exactly like the original on both firmwares, from CD and USB.
public struct AnswerEmbedding: Sendable {
    public static let answerPath = "/martlet/answer.toml"

    /// Where the unattended install takes its answer from.
    public enum Source: Sendable, Equatable {
        /// An answer file, copied onto the ISO.
        case file(String)
        /// An answer server: the installer POSTs the machine's facts to `url` and installs
        /// with the reply; `fingerprint` (SHA-256, https only) pins the server's certificate.
        case server(url: String, fingerprint: String?)

        /// The unattended entry's kernel parameters and the words of its menu title.
        var parameters: (kernel: String, title: String) {
            switch self {
            case .file:
                return ("martlet.answer=\(AnswerEmbedding.answerPath)", "answer file \(AnswerEmbedding.answerPath)")
            case .server(let url, let fingerprint):
                let pin = fingerprint.flatMap(CertificateFingerprint.sha256).map { " martlet.answer-fingerprint=\($0)" } ?? ""
                return ("martlet.answer=\(url)\(pin)", "answer from \(url)")
            }
        }
    }

    public var iso: String
    public var source: Source
    public var output: String
    /// Timestamp for the new image (SOURCE_DATE_EPOCH); nil uses the original's volume date.
    public var sourceDateEpoch: Int?

    public init(iso: String, source: Source, output: String, sourceDateEpoch: Int? = nil) {
        self.iso = iso
        self.source = source
        self.output = output
        self.sourceDateEpoch = sourceDateEpoch
    }

    public init(iso: String, answer: String, output: String, sourceDateEpoch: Int? = nil) {
        self.init(iso: iso, source: .file(answer), output: output, sourceDateEpoch: sourceDateEpoch)
    }

    /// Characters GRUB's script reads as syntax (or that end a kernel parameter): a URL
    /// holding one would not reach the installer as written.
    static let menuSyntax = Set(" \t\n\r;&|<>$\"'\\{}`#")

    /// Refuses a server URL the installer cannot use or the menu cannot carry, and a
    /// fingerprint that is not one, before anything is written.
    static func check(_ source: Source) throws {
        guard case .server(let url, let fingerprint) = source else { return }
        let hint = "give the answer server's URL, e.g. https://answers.example.org/answer (percent-encode special characters)"
        guard url.hasPrefix("https://") || url.hasPrefix("http://") else {
            throw MartletError(.invalidInput, "answer URL '\(url)' is not http:// or https://", hint: hint)
        }
        let host = url.split(separator: "/", omittingEmptySubsequences: false).dropFirst(2).first ?? ""
        guard !host.isEmpty else {
            throw MartletError(.invalidInput, "answer URL '\(url)' names no server", hint: hint)
        }
        if let bad = url.first(where: { menuSyntax.contains($0) || $0.asciiValue == nil }) {
            throw MartletError(
                .invalidInput, "answer URL '\(url)' holds '\(bad)', which the boot menu cannot carry", hint: hint)
        }
        if let fingerprint {
            guard CertificateFingerprint.sha256(fingerprint) != nil else {
                throw MartletError(
                    .invalidInput, "fingerprint '\(fingerprint)' is not a SHA-256 fingerprint",
                    hint: "give 64 hex digits, with or without colons, as "
                        + "`openssl x509 -in CERT -noout -fingerprint -sha256` prints them")
            }
            guard url.hasPrefix("https://") else {
                throw MartletError(
                    .invalidInput, "a fingerprint pins an https server, and '\(url)' is http",
                    hint: "use the https:// URL of the answer server, or leave the fingerprint out")
            }
        }
    }

    /// The boot menu with the unattended entry as default, taking its answer from `source`.
    static func rewriteMenu(_ menu: String, for source: Source = .file(answerPath)) throws -> String {
        guard menu.contains("--id unattended"), menu.contains("martlet.answer=") else {
            throw MartletError(
                .invalidInput, "the ISO's /boot/grub/grub.cfg has no unattended entry",
                hint: "use an ISO built by martlet build")
        }
        // The answer source the menu names now, taken from the unattended entry's linux line
        // (with the fingerprint an earlier embedding may have added).
        guard let range = menu.range(of: "martlet.answer=") else { return menu }
        let old = String(menu[range.upperBound...].prefix { $0 != " " && $0 != "\n" })
        let (kernel, title) = source.parameters
        let lines = menu.components(separatedBy: "\n").map { line -> String in
            if line.hasPrefix("set default=") { return "set default=unattended" }
            if line.hasPrefix("menuentry ") && line.contains("--id unattended") {
                return "menuentry \"Unattended install (\(title))\" --id unattended {"
            }
            guard line.contains("martlet.answer=\(old)") else { return line }
            let words = line.split(separator: " ", omittingEmptySubsequences: false).filter {
                !$0.hasPrefix("martlet.answer-fingerprint=")
            }
            return words.joined(separator: " ").replacingOccurrences(of: "martlet.answer=\(old)", with: kernel)
        }
        return lines.joined(separator: "\n")
    }

    /// Refuses anything but an image file or block device holding an ISO 9660 volume
    /// descriptor ("CD001" at byte 32769), before xorriso is asked to read it.
    static func checkISO(_ iso: String) throws {
        let notISO = "'\(iso)' is not a Martlet ISO"
        let file: FileDescriptor
        do {
            file = try FilePath.open(iso, O_RDONLY, field: "ISO", kind: .disk)
        } catch {
            throw MartletError(.invalidInput, "\(notISO): \(error.problem)", hint: "give an ISO built by martlet build")
        }
        var magic = [UInt8](repeating: 0, count: 5)
        let count = magic.withUnsafeMutableBytes { pread(file.raw, $0.baseAddress, 5, 32769) }
        guard count == 5, magic == Array("CD001".utf8) else {
            throw MartletError(
                .invalidInput, "\(notISO) (no ISO 9660 volume descriptor)", hint: "give an ISO built by martlet build")
        }
    }

    public func run(logger: Logger? = nil) throws {
        try Tool.require(["xorriso", "sha256sum"])
        let staged = output + ".partial"
        var info = stat()
        guard lstat(staged, &info) != 0 else {
            throw MartletError(
                .invalidInput, "'\(staged)' already exists: another embed may be writing it",
                hint: "remove it when no 'martlet answer embed' is running, or choose another -o")
        }
        guard FileManager.default.fileExists(atPath: iso) else {
            throw MartletError(.notFound, "ISO '\(iso)' not found")
        }
        try Self.checkISO(iso)
        try Self.check(source)
        guard URL(fileURLWithPath: iso).standardizedFileURL != URL(fileURLWithPath: output).standardizedFileURL
        else {
            throw MartletError(
                .invalidInput, "output '\(output)' is the input ISO",
                hint: "write the copy to a new file with -o NEW.iso")
        }
        let work = FileManager.default.temporaryDirectory.appendingPathComponent(
            "martlet-embed-\(getpid())-\(UUID().uuidString.prefix(8))").path
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }

        do {
            try Command(
                "xorriso",
                ["-osirrox", "on", "-indev", iso, "-extract", "/boot/grub/grub.cfg", work + "/grub.cfg",
                 "-extract", "/SHA256SUMS", work + "/SHA256SUMS"]
            ).run(logger: logger)
        } catch {
            throw MartletError(
                .invalidInput, "'\(iso)' is not a Martlet ISO: it has no /boot/grub/grub.cfg and /SHA256SUMS",
                hint: "give an ISO built by martlet build")
        }
        let menu = try String(contentsOfFile: work + "/grub.cfg", encoding: .utf8)
        try Self.rewriteMenu(menu, for: source).write(toFile: work + "/grub.cfg.new", atomically: false, encoding: .utf8)
        var mapped = [(work + "/grub.cfg.new", "/boot/grub/grub.cfg")]
        if case .file(let answer) = source {
            try FileManager.default.copyItem(atPath: answer, toPath: work + "/answer.toml")
            mapped.append((work + "/answer.toml", Self.answerPath))
        }

        let hashes = try Digest.sha256(files: mapped.map(\.0))
        let replaced = Dictionary(uniqueKeysWithValues: mapped.map { ("." + $0.1, hashes[$0.0] ?? "") })
        let oldSums = try String(contentsOfFile: work + "/SHA256SUMS", encoding: .utf8)
        var lines = oldSums.split(separator: "\n").map(String.init).filter { line in
            !replaced.keys.contains { line.hasSuffix("  " + $0) }
        }
        lines += replaced.map { "\($0.value)  \($0.key)" }
        try (lines.sorted { $0.dropFirst(66) < $1.dropFirst(66) }.joined(separator: "\n") + "\n")
            .write(toFile: work + "/SHA256SUMS.new", atomically: false, encoding: .utf8)

        var environment: [String: String] = [:]
        if let sourceDateEpoch { environment["SOURCE_DATE_EPOCH"] = String(sourceDateEpoch) }
        do {
            try Command(
                "xorriso",
                ["-indev", iso, "-outdev", staged, "-boot_image", "any", "replay"]
                    + mapped.flatMap { ["-map", $0.0, $0.1] }
                    + ["-map", work + "/SHA256SUMS.new", "/SHA256SUMS", "-commit"],
                environment: environment
            ).run(logger: logger)
        } catch {
            // This run created the staged file (it did not exist before): no half image stays.
            try? FileManager.default.removeItem(atPath: staged)
            throw error
        }
        if rename(staged, output) != 0 {
            try? FileManager.default.removeItem(atPath: staged)
            throw MartletError.system("rename", path: output)
        }
    }
}
