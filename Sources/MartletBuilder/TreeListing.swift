import CMartletSystem
import Foundation
import MartletCore

/// Every entry of a tree, one line each, sorted: path, type, mode, owner, group, size, device,
/// link target, SHA-256 of the content and of the extended attributes (but overlayfs's own).
/// Two trees with the same listing have the same files; used as a cache key and by the
/// tests that compare the layered image with a single tree.
struct TreeListing: Equatable {
    struct Entry: Equatable {
        /// Relative to the tree's root.
        var path: String
        /// `f`, `d`, `l`, `c`, `b`, `p` or `s`.
        var type: Character
        /// Permission bits.
        var mode: mode_t
        /// The whole line.
        var line: String
    }

    var entries: [Entry]
    var lines: [String] { entries.map(\.line) }
    var text: String { lines.joined(separator: "\n") + "\n" }

    init(_ root: String, excluding excluded: Set<String> = []) throws {
        var entries: [Entry] = []
        guard let walker = FileManager.default.enumerator(atPath: root) else {
            throw MartletError(.notFound, "cannot read the tree '\(root)'")
        }
        while let relative = walker.nextObject() as? String {
            if excluded.contains(relative) { continue }
            entries.append(try Self.entry(root + "/" + relative, relative))
        }
        self.entries = entries.sorted { $0.line < $1.line }
    }

    static func entry(_ path: String, _ relative: String) throws -> Entry {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw MartletError.system("lstat", path: path) }
        let type: Character
        var detail = ""
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            type = "f"
            detail = "\(info.st_size) " + (try Digest.sha256(file: path))
        case S_IFDIR: type = "d"
        case S_IFLNK:
            type = "l"
            detail = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
        case S_IFCHR: type = "c"; detail = "\(info.st_rdev)"
        case S_IFBLK: type = "b"; detail = "\(info.st_rdev)"
        case S_IFIFO: type = "p"
        default: type = "s"
        }
        var attributes = ""
        for name in try OverlayAttributes.names(path).sorted()
        where !name.hasPrefix(OverlayAttributes.prefix) {
            let size = lgetxattr(path, name, nil, 0)
            var value = [UInt8](repeating: 0, count: max(size, 0))
            if size > 0 { _ = lgetxattr(path, name, &value, value.count) }
            attributes += name + "=" + Digest.sha256(text: value.map { String($0) }.joined(separator: ",")) + ";"
        }
        let mode = info.st_mode & 0o7777
        return Entry(
            path: relative, type: type, mode: mode,
            line: "\(relative) \(type) \(String(mode, radix: 8)) \(info.st_uid):\(info.st_gid) \(detail) \(attributes)")
    }
}
