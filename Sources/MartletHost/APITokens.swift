import Foundation
import MartletCore
import MartletSystem
import MartletValidation
import Synchronization

/// The API's bearer tokens for scripts: each has a name, a role, and only the SHA-256 of its
/// secret on disk (the secret is shown once, when it is made). A token is 32 random bytes, so
/// a plain hash is as good as a slow one here: nothing can be guessed from it.
public struct APIToken: Codable, Sendable, Equatable {
    public var name: String
    /// Read-only tokens may only GET; every other method is 403.
    public var readOnly: Bool
    /// Hex SHA-256 of the secret.
    public var sha256: String
    /// ISO 8601, UTC.
    public var created: String
}

/// `tokens.json` (mode 0600, root only): read on every check whose file changed since the last
/// read, so a revoked token stops working at once without a restart.
public final class APITokenStore: Sendable {
    /// The prefix every secret starts with: tells a Martlet token apart in logs and configs.
    public static let prefix = "martlet_"
    public static let fileMode: mode_t = 0o600

    public let path: String
    /// The list as last read, and which file it came from (inode, size, change time): an
    /// atomic replace is a new inode even within one clock tick.
    private let cache = Mutex<(file: [Int], tokens: [APIToken])?>(nil)

    public init(path: String) {
        self.path = path
    }

    /// The tokens in the file; none when it does not exist yet.
    public func list() throws -> [APIToken] {
        var status = stat()
        guard stat(path, &status) == 0 else {
            if errno == ENOENT { return [] }
            throw MartletError(.failed, "API tokens '\(path)': \(SystemError.text(errno))")
        }
        let file = [
            Int(status.st_ino), Int(status.st_size), Int(status.st_ctim.tv_sec), Int(status.st_ctim.tv_nsec),
        ]
        if let cached = cache.withLock({ $0 }), cached.file == file { return cached.tokens }
        let text = try readConfigText(path)
        let tokens: [APIToken]
        do {
            tokens = try JSONDecoder().decode([APIToken].self, from: Data(text.utf8))
        } catch {
            throw MartletError(
                .invalidInput, "API tokens '\(path)' is not a list of tokens: \(error)",
                hint: "restore it from a backup, or remove it and create the tokens again")
        }
        cache.withLock { $0 = (file, tokens) }
        return tokens
    }

    /// Makes token `name` and returns its secret, the only time it is known.
    public func create(name: String, readOnly: Bool, now: Date = Date()) throws -> String {
        guard Name.isValid(name) else {
            throw MartletError(.invalidInput, "token name \(quoted(name)) is not valid; \(Name.rule())")
        }
        var random = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }
        let secret = Self.prefix + Digest.hex(bytes)
        try modify { tokens in
            guard !tokens.contains(where: { $0.name == name }) else {
                throw MartletError(
                    .refused, "an API token named '\(name)' exists already",
                    hint: "revoke it first (martlet api token revoke \(name)) or choose another name")
            }
            tokens.append(
                APIToken(
                    name: name, readOnly: readOnly, sha256: Digest.sha256(text: secret),
                    created: ISO8601DateFormatter().string(from: now)))
        }
        return secret
    }

    /// Removes token `name`; requests carrying it are refused from now on.
    public func revoke(name: String) throws {
        try modify { tokens in
            guard let index = tokens.firstIndex(where: { $0.name == name }) else {
                throw MartletError(.notFound, "no API token named \(quoted(name))", hint: "martlet api token list shows them")
            }
            tokens.remove(at: index)
        }
    }

    /// The token whose secret `presented` is, or nil. Compares every stored hash in full, so
    /// the time taken does not tell how much of a hash matched.
    public func authenticate(_ presented: String) -> APIToken? {
        guard presented.hasPrefix(Self.prefix), presented.utf8.count < 256, let tokens = try? list() else { return nil }
        let hash = Digest.sha256(text: presented)
        var found: APIToken?
        for token in tokens where equalInConstantTime(token.sha256, hash) { found = token }
        return found
    }

    /// The token with stored hash `sha256` while it is not revoked (a browser session opened
    /// with it ends when it is).
    public func live(sha256: String) -> APIToken? {
        (try? list())?.first { $0.sha256 == sha256 }
    }

    /// Changes the list and replaces the file atomically: the new list goes to `PATH.new`
    /// (created exclusively, mode 0600, so it is also the lock against a second writer) and is
    /// renamed over the file, so a reader never sees half a list.
    private func modify(_ change: (inout [APIToken]) throws -> Void) throws {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let temporary = "\(path).new"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, Self.fileMode)
        guard fd >= 0 else {
            let reason = errno
            throw MartletError(
                reason == EEXIST ? .refused : .failed, "cannot write '\(temporary)': \(SystemError.text(reason))",
                hint: reason == EEXIST
                    ? "another token change is under way; if none is, remove that file (left by an interrupted one)"
                    : nil)
        }
        let file = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        do {
            var tokens = try list()
            try change(&tokens)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try file.write(contentsOf: try encoder.encode(tokens))
            try file.synchronize()
            guard fchmod(fd, Self.fileMode) == 0, rename(temporary, path) == 0 else {
                throw MartletError(.failed, "cannot replace '\(path)': \(SystemError.text(errno))")
            }
        } catch {
            unlink(temporary)
            throw error
        }
        cache.withLock { $0 = nil }
    }
}
