import CMartletSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// An open file descriptor with one owner: it is closed exactly once, by `close()` or when
/// the owner lets go of it. A thread that reads it keeps the object alive, so the number is
/// never closed (and reused) under it; wake such a reader with `shutdown()` first.
public final class FileDescriptor: Sendable {
    private let value: Atomic<Int32>
    /// Sockets are written with send(MSG_NOSIGNAL), everything else with write.
    private let isSocket: Bool

    /// Takes ownership of `raw` (which should be close-on-exec).
    public init(_ raw: Int32) {
        value = Atomic(raw)
        isSocket = FileDescriptor.isSocket(raw)
    }

    deinit { close() }

    /// The descriptor number, -1 once closed.
    public var raw: Int32 { value.load(ordering: .acquiring) }

    /// Closes now; later calls do nothing.
    public func close() {
        let fd = value.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    /// `shutdown(SHUT_RDWR)` on a socket: readers and writers on other threads return at once.
    public func shutdown() {
        _ = Glibc.shutdown(raw, Int32(SHUT_RDWR))
    }

    /// `open(2)` with O_CLOEXEC; `mode` applies when O_CREAT creates the file.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws -> FileDescriptor {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SystemError("open", path: path) }
        return FileDescriptor(fd)
    }

    /// `pipe2(O_CLOEXEC)`: (read end, write end); children get them only through dup2.
    public static func pipe() throws -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        guard martlet_pipe2(&fds, O_CLOEXEC) == 0 else { throw SystemError("pipe2") }
        return (FileDescriptor(fds[0]), FileDescriptor(fds[1]))
    }

    /// `read(2)` into `buffer`, retrying on EINTR: the count, 0 at end of file, -1 on error.
    public func read(into buffer: inout [UInt8]) -> Int {
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(raw, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            return count
        }
    }

    /// Writes all of `bytes`, retrying on EINTR; false when the other end is gone or a send
    /// timeout passed. On a socket it sends with MSG_NOSIGNAL, so a peer that went away is
    /// an error here rather than a SIGPIPE for the whole process.
    @discardableResult
    public func writeAll(_ bytes: some Collection<UInt8>) -> Bool {
        FileDescriptor.writeAll(to: raw, bytes, isSocket: isSocket)
    }

    /// `writeAll` on a descriptor this process does not own (stdout, stderr).
    @discardableResult
    public static func writeAll(to raw: Int32, _ bytes: some Collection<UInt8>) -> Bool {
        writeAll(to: raw, bytes, isSocket: isSocket(raw))
    }

    private static func isSocket(_ raw: Int32) -> Bool {
        var info = stat()
        return fstat(raw, &info) == 0 && (info.st_mode & S_IFMT) == S_IFSOCK
    }

    private static func writeAll(to raw: Int32, _ bytes: some Collection<UInt8>, isSocket: Bool) -> Bool {
        let bytes = Array(bytes)
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { buffer in
                isSocket
                    ? Glibc.send(raw, buffer.baseAddress! + sent, buffer.count - sent, Int32(MSG_NOSIGNAL))
                    : Glibc.write(raw, buffer.baseAddress! + sent, buffer.count - sent)
            }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return false }
            sent += count
        }
        return true
    }

    /// SO_RCVTIMEO and SO_SNDTIMEO on a socket, in seconds (nil leaves one unchanged).
    public func setTimeouts(receive: Double? = nil, send: Double? = nil) {
        for (option, seconds) in [(SO_RCVTIMEO, receive), (SO_SNDTIMEO, send)] {
            guard let seconds else { continue }
            var interval = timeval(
                tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1_000_000))
            setsockopt(raw, SOL_SOCKET, option, &interval, socklen_t(MemoryLayout<timeval>.size))
        }
    }
}
