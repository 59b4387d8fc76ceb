import Foundation
import Logging
import MartletCore
import MartletSystem
import MartletValidation

/// Makes a copy of a Martlet ISO that installs unattended with a given answer file: the
/// file goes to `/martlet/answer.toml` on the medium, the boot menu's default becomes the
/// unattended entry pointing at it, and `/SHA256SUMS` is updated, so the copy still passes
/// `martlet verify`. xorriso replays the original boot setup (El Torito, MBR, GPT, ESP), so
/// the copy boots exactly like the original on both firmwares, from CD and USB.
public struct AnswerEmbedding: Sendable {
    public static let answerPath = "/martlet/answer.toml"

    public var iso: String
    public var answer: String
    public var output: String
    /// Timestamp for the new image (SOURCE_DATE_EPOCH); nil uses the original's volume date.
    public var sourceDateEpoch: Int?

    public init(iso: String, answer: String, output: String, sourceDateEpoch: Int? = nil) {
        self.iso = iso
        self.answer = answer
        self.output = output
        self.sourceDateEpoch = sourceDateEpoch
    }

    /// The boot menu with the unattended entry as default, pointing at the embedded file.
    static func rewriteMenu(_ menu: String) throws -> String {
        guard menu.contains("--id unattended"), menu.contains("martlet.answer=") else {
            throw MartletError(
                .invalidInput, "the ISO's /boot/grub/grub.cfg has no unattended entry",
                hint: "use an ISO built by martlet build")
        }
        // The answer source the menu names now, taken from the unattended entry's linux line.
        guard let range = menu.range(of: "martlet.answer=") else { return menu }
        let old = String(menu[range.upperBound...].prefix { $0 != " " && $0 != "\n" })
        let lines = menu.components(separatedBy: "\n").map { line -> String in
            if line.hasPrefix("set default=") { return "set default=unattended" }
            return line
                .replacingOccurrences(of: "martlet.answer=\(old)", with: "martlet.answer=\(answerPath)")
                .replacingOccurrences(of: "(answer file \(old))", with: "(answer file \(answerPath))")
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
        try Self.rewriteMenu(menu).write(toFile: work + "/grub.cfg.new", atomically: false, encoding: .utf8)
        try FileManager.default.copyItem(atPath: answer, toPath: work + "/answer.toml")

        let hashes = try Digest.sha256(files: [work + "/grub.cfg.new", work + "/answer.toml"])
        let replaced: [String: String] = [
            "./boot/grub/grub.cfg": hashes[work + "/grub.cfg.new"] ?? "",
            "." + Self.answerPath: hashes[work + "/answer.toml"] ?? "",
        ]
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
                ["-indev", iso, "-outdev", staged, "-boot_image", "any", "replay",
                 "-map", work + "/grub.cfg.new", "/boot/grub/grub.cfg",
                 "-map", work + "/answer.toml", Self.answerPath,
                 "-map", work + "/SHA256SUMS.new", "/SHA256SUMS", "-commit"],
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
