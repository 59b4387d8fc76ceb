import Foundation
import MartletCore

/// Thin wrappers over AF_UNIX stream sockets for the VMM's control socket and the console.
enum UnixSocket {
    static func address(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw MartletError(
                .invalidInput, "socket path '\(path)' is longer than 107 bytes",
                hint: "use a shorter run directory")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        return address
    }

    /// `socket` + `connect`; returns the fd.
    static func connect(_ path: String) throws -> Int32 {
        var address = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw MartletError.system("socket") }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let error = MartletError.system("connect", path: path)
            close(fd)
            throw error
        }
        return fd
    }

    /// `socket` + `bind` + `listen`, replacing a stale socket file; returns the fd.
    static func listen(_ path: String, mode: mode_t = 0o600) throws -> Int32 {
        var address = try address(path)
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw MartletError.system("socket") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0, chmod(path, mode) == 0, Glibc.listen(fd, 16) == 0 else {
            let error = MartletError.system("bind/listen", path: path)
            close(fd)
            throw error
        }
        return fd
    }

    /// Writes all of `bytes`, retrying on EINTR; false when the peer is gone.
    @discardableResult
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes {
                write(fd, $0.baseAddress! + sent, bytes.count - sent)
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            sent += count
        }
        return true
    }

    /// Sends one JSON line to the VMM's control socket and returns the reply object.
    static func request(_ path: String, _ command: String, timeout: Int = 5) throws -> [String: Any]
    {
        let fd = try connect(path)
        defer { close(fd) }
        var interval = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &interval, socklen_t(MemoryLayout<timeval>.size))
        guard writeAll(fd, Array("{\"command\": \"\(command)\"}\n".utf8)) else {
            throw MartletError.system("write", path: path)
        }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !reply.contains(0x0A) {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            reply += chunk.prefix(count)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(reply)) as? [String: Any]
        else {
            throw MartletError(
                .failed, "the VMM's control socket '\(path)' gave no valid reply to '\(command)'")
        }
        return object
    }
}
