import CMartletSystem
#if canImport(Glibc)
    import Glibc
#endif

/// AF_UNIX stream sockets: the VMM's control and serial sockets, the runner's console socket.
public enum UnixSocket {
    /// The address of `path`; a path that does not fit `sun_path` is ENAMETOOLONG. An empty
    /// path or one with a NUL is EINVAL: either would name an abstract socket, which has no
    /// file mode and which any local user can connect to.
    public static func address(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, !bytes.contains(0) else { throw SystemError("socket address", path: path, errno: EINVAL) }
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw SystemError("socket address", path: path, errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        return address
    }

    /// `socket` + `connect` to the listener at `path`.
    public static func connect(_ path: String) throws -> FileDescriptor {
        var address = try address(path)
        let fd = try stream()
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else { throw SystemError("connect", path: path) }
        return fd
    }

    /// `socket` + `bind` + `chmod(mode)` + `listen` at `path`. A socket file nobody listens
    /// on any more (left by a process that died) is replaced; anything else at `path` — a
    /// live socket, a file, a directory — is refused with EADDRINUSE or EEXIST.
    public static func listen(_ path: String, mode: mode_t, backlog: Int32 = 16) throws
        -> FileDescriptor
    {
        var address = try address(path)
        try removeStale(path)
        let fd = try stream()
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd.raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw SystemError("bind", path: path) }
        guard chmod(path, mode) == 0 else {
            let error = SystemError("chmod", path: path)
            unlink(path)
            throw error
        }
        guard Glibc.listen(fd.raw, backlog) == 0 else {
            let error = SystemError("listen", path: path)
            unlink(path)
            throw error
        }
        return fd
    }

    /// Makes `path` free for a new listener: a socket file nobody listens on any more (left
    /// by a process that died) is removed; a live socket is EADDRINUSE and anything else —
    /// a file, a directory, a FIFO — EEXIST, never deleted.
    public static func removeStale(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw SystemError("bind", path: path, errno: EEXIST)
        }
        if (try? connect(path)) != nil { throw SystemError("bind", path: path, errno: EADDRINUSE) }
        unlink(path)
    }

    /// The next client of `listener` (close-on-exec), retrying on EINTR and ECONNABORTED; nil
    /// once the listener is shut down or closed.
    public static func accept(_ listener: FileDescriptor) -> FileDescriptor? {
        while true {
            let client = martlet_accept4(listener.raw, Int32(SOCK_CLOEXEC.rawValue))
            if client >= 0 { return FileDescriptor(client) }
            if errno == EINTR || errno == ECONNABORTED { continue }
            return nil
        }
    }

    private static func stream() throws -> FileDescriptor {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        return FileDescriptor(fd)
    }
}
