import CCrypto
import Foundation

/// SHA-256 for the builder, the flasher and volume imports, from OpenSSL's libcrypto (`SHA256`): files are
/// hashed streaming, in chunks, so an ISO never sits in memory whole.
public enum Digest {
    /// Bytes read per `read(2)` while hashing a file.
    public static let chunkSize = 1 << 20

    /// The digest of the file at `path`, as 64 lower-case hex digits; `progress` gets the
    /// bytes hashed so far after every chunk.
    public static func sha256(file path: String, progress: ((UInt64) -> Void)? = nil) throws
        -> String
    {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MartletError.system("open", path: path) }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        let hash = SHA256()
        var hashed: UInt64 = 0
        while true {
            let count = read(fd, buffer.baseAddress, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw MartletError.system("read", path: path)
            }
            if count == 0 { break }
            hash.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            hashed += UInt64(count)
            progress?(hashed)
        }
        return hex(hash.finalize())
    }

    /// Digests of `paths` (relative to `directory` when given), keyed by the path as given.
    public static func sha256(files paths: [String], relativeTo directory: String? = nil) throws
        -> [String: String]
    {
        var result: [String: String] = [:]
        for path in paths {
            let full = directory.map { path.hasPrefix("/") ? path : "\($0)/\(path)" } ?? path
            result[path] = try sha256(file: full)
        }
        return result
    }

    /// The digest of `text`'s UTF-8 bytes.
    public static func sha256(text: String) -> String {
        let hash = SHA256()
        Array(text.utf8).withUnsafeBytes { hash.update(bufferPointer: $0) }
        return hex(hash.finalize())
    }

    /// 64 lower-case hex digits, as `sha256sum` prints them.
    public static func hex(_ digest: [UInt8]) -> String {
        digest.map { byte in
            let text = String(byte, radix: 16)
            return byte < 0x10 ? "0" + text : text
        }.joined()
    }
}

/// A streaming SHA-256 over OpenSSL's EVP interface. libcrypto is on every Debian build
/// machine and host already (openssh, curl), so the build carries no second copy of a
/// crypto library for one hash.
public final class SHA256 {
    private let context: OpaquePointer

    public init() {
        // EVP_MD_CTX_new fails only when malloc does.
        guard let context = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new: out of memory") }
        self.context = context
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    /// Adds `bytes` to the digest.
    public func update(bufferPointer bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        EVP_DigestUpdate(context, base, bytes.count)
    }

    /// The 32-byte digest of everything added; the hasher is spent afterwards.
    public func finalize() -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &digest, &length)
        return Array(digest.prefix(Int(length)))
    }
}
