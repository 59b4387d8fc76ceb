import Foundation
import MartletCore

/// `SHA256SUMS` files as `sha256sum` writes them: `<sha256>  ./relative/path` per line.
enum SHA256Sums {
    struct Entry: Equatable {
        var hash: String
        /// Relative path without a leading `./` or `/`.
        var path: String
    }

    struct Problem: Error { let text: String }

    /// Parses `text`; a malformed line is an error naming its number.
    static func parse(_ text: String) -> Result<[Entry], Problem> {
        var entries: [Entry] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false)
            .enumerated()
        where !line.isEmpty {
            let hash = line.prefix(64)
            let rest = line.dropFirst(64)
            guard hash.count == 64, hash.allSatisfy(\.isHexDigit),
                rest.hasPrefix("  ") || rest.hasPrefix(" *"), rest.count > 2
            else {
                return .failure(
                    Problem(
                        text: "line \(index + 1) is not '<sha256>  ./path': '\(line.prefix(100))'"))
            }
            entries.append(
                Entry(hash: hash.lowercased(), path: normalize(String(rest.dropFirst(2)))))
        }
        return .success(entries)
    }

    static func normalize(_ path: String) -> String {
        var path = Substring(path)
        while path.hasPrefix("./") { path = path.dropFirst(2) }
        while path.hasPrefix("/") { path = path.dropFirst() }
        return String(path)
    }

    /// Every file listed in `root/SHA256SUMS` must exist and match, and every regular file
    /// under `root` (except `ignoring`) must be listed. `patched` files (El Torito boot images
    /// xorriso rewrote while writing) cannot match, so they may be listed or left out.
    static func checkTree(_ root: String, ignoring: Set<String>, patched: Set<String> = [])
        throws -> ISOCheck
    {
        guard let data = FileManager.default.contents(atPath: root + "/SHA256SUMS") else {
            return ISOCheck(
                name: "sha256sums", passed: false, detail: "/SHA256SUMS is not on the ISO")
        }
        let entries: [Entry]
        switch parse(String(decoding: data, as: UTF8.self)) {
        case .failure(let problem):
            return ISOCheck(
                name: "sha256sums", passed: false, detail: "/SHA256SUMS: \(problem.text)")
        case .success(let parsed): entries = parsed
        }
        let files = regularFiles(under: root).filter { !ignoring.contains($0) }
        let onISO = Set(files)
        var problems: [String] = []
        var listed: Set<String> = []
        for entry in entries where !listed.insert(entry.path).inserted {
            problems.append("/\(entry.path) is listed twice")
        }
        let present = entries.filter { onISO.contains($0.path) }
        let hashes = try Digest.sha256(files: present.map(\.path), relativeTo: root)
        for entry in entries {
            guard onISO.contains(entry.path) else {
                problems.append("/\(entry.path) is listed but not on the ISO")
                continue
            }
            if let found = hashes[entry.path], found != entry.hash, !patched.contains(entry.path) {
                problems.append(
                    "/\(entry.path) does not match (listed \(entry.hash.prefix(12))…, is \(found.prefix(12))…)"
                )
            }
        }
        for file in files where !listed.contains(file) && !patched.contains(file) {
            problems.append("/\(file) is on the ISO but not listed")
        }
        guard problems.isEmpty else {
            let shown = problems.prefix(8).joined(separator: "; ")
            let more = problems.count > 8 ? "; and \(problems.count - 8) more" : ""
            return ISOCheck(name: "sha256sums", passed: false, detail: shown + more)
        }
        let skipped = patched.intersection(onISO).sorted()
        let note =
            skipped.isEmpty
            ? ""
            : " (boot images patched by xorriso not compared: \(skipped.map { "/" + $0 }.joined(separator: ", ")))"
        return ISOCheck(
            name: "sha256sums", passed: true,
            detail:
                "\(entries.count - patched.intersection(listed).count) files match /SHA256SUMS\(note)"
        )
    }

    /// The ISO against a `SHA256SUMS` next to it, when that file exists and names the ISO.
    static func checkNeighbour(iso: String) throws -> ISOCheck? {
        let directory = (iso as NSString).deletingLastPathComponent
        let sums = (directory.isEmpty ? "." : directory) + "/SHA256SUMS"
        guard let data = FileManager.default.contents(atPath: sums) else { return nil }
        let name = (iso as NSString).lastPathComponent
        guard case .success(let entries) = parse(String(decoding: data, as: UTF8.self)),
            let entry = entries.first(where: { $0.path == name })
        else { return nil }
        let found = try Digest.sha256(file: (directory.isEmpty ? "." : directory) + "/" + name)
        return found == entry.hash
            ? ISOCheck(
                name: "iso-sha256", passed: true, detail: "\(name) matches \(sums): \(found)")
            : ISOCheck(
                name: "iso-sha256", passed: false,
                detail: "\(name) has sha256 \(found), \(sums) lists \(entry.hash)")
    }

    /// Regular files under `root`, relative, sorted; symlinks and folders are not files.
    static func regularFiles(under root: String) -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [] }
        var files: [String] = []
        while let relative = walker.nextObject() as? String {
            if walker.fileAttributes?[.type] as? FileAttributeType == .typeRegular {
                files.append(relative)
            }
        }
        return files.sorted()
    }
}
