import Crypto
import Foundation
import MartletCore

/// SHA-256 for the builder and the flasher, from swift-crypto (BoringSSL's implementation):
/// files are hashed streaming, in chunks, so an ISO never sits in memory whole.
enum Digest {
    /// Bytes read per `read(2)` while hashing a file.
    static let chunkSize = 1 << 20

    /// The digest of the file at `path`, as 64 lower-case hex digits.
    static func sha256(file path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MartletError.system("open", path: path) }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        var hash = SHA256()
        while true {
            let count = read(fd, buffer.baseAddress, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw MartletError.system("read", path: path)
            }
            if count == 0 { break }
            hash.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
        return hex(hash.finalize())
    }

    /// Digests of `paths` (relative to `directory` when given), keyed by the path as given.
    static func sha256(files paths: [String], relativeTo directory: String? = nil) throws
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
    static func sha256(text: String) -> String {
        hex(SHA256.hash(data: Data(text.utf8)))
    }

    /// 64 lower-case hex digits, as `sha256sum` prints them.
    static func hex(_ digest: SHA256.Digest) -> String {
        digest.map { byte in
            let text = String(byte, radix: 16)
            return byte < 0x10 ? "0" + text : text
        }.joined()
    }
}
