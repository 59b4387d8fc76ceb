#if canImport(Glibc)
    import Glibc
#endif

/// COM1 on a unix listening socket (`serial: "socket:PATH"`), the way host tooling attaches a
/// console to a VMM it does not own the terminal of. One client at a time (others wait in the
/// listen backlog until it disconnects): the guest's output goes to it, its bytes go to the
/// UART's receive side. While nobody is connected the last 64 KiB of output wait for the next
/// client, so a console that connects just after start-up misses nothing.
final class SerialSocket: @unchecked Sendable {
    static let backlogLimit = 65536

    let path: String
    private let listener: Int32
    private let lock = ConditionLock()
    private var client: Int32 = -1
    private var backlog: [UInt8] = []
    private var closed = false

    /// Listens on `path` (an existing socket file is replaced).
    init(path: String) throws {
        listener = try listenOnUnixSocket(path, field: "serial")
        self.path = path
    }

    /// Accepts clients and feeds what they send to `receive` on a dedicated thread.
    func start(receive: @escaping ([UInt8]) -> Void) throws {
        _ = try startThread { [self] in serve(receive) }
    }

    /// Guest output: to the client, or kept for the next one.
    func send(_ byte: UInt8) {
        lock.withLock {
            if client >= 0 {
                var byte = byte
                // MSG_NOSIGNAL: a console that went away must not kill the VMM with SIGPIPE;
                // a client that stops reading for SO_SNDTIMEO is dropped, not waited for.
                if Glibc.send(client, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 { return }
                shutdown(client, Int32(SHUT_RDWR))
            }
            backlog.append(byte)
            if backlog.count > SerialSocket.backlogLimit {
                backlog.removeFirst(backlog.count - SerialSocket.backlogLimit)
            }
        }
    }

    /// Stops accepting and removes the socket file.
    func close() {
        lock.withLock {
            closed = true
            if client >= 0 { shutdown(client, Int32(SHUT_RDWR)) }
        }
        shutdown(listener, Int32(SHUT_RDWR))
        unlink(path)
    }

    private func serve(_ receive: ([UInt8]) -> Void) {
        var chunk = [UInt8](repeating: 0, count: 1024)
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let accepted: Bool = lock.withLock {
                guard !closed else { return false }
                var pending = backlog
                backlog.removeAll()
                while !pending.isEmpty {
                    let count = pending.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if count <= 0 { break }
                    pending.removeFirst(count)
                }
                client = fd
                return true
            }
            guard accepted else {
                Glibc.close(fd)
                return
            }
            while true {
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { break }
                receive(Array(chunk.prefix(count)))
            }
            lock.withLock {
                client = -1
                Glibc.close(fd)
            }
        }
    }
}

/// Creates a unix stream socket listening on `path`, replacing a stale socket file; errors
/// name `field` of the configuration.
func listenOnUnixSocket(_ path: String, field: String) throws -> Int32 {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let pathBytes = Array(path.utf8)
    guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
        throw VMMError(.config, "\(field): '\(path)' is longer than \(MemoryLayout.size(ofValue: address.sun_path) - 1) bytes")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
    }
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw VMMError(.control, "\(field): socket() failed: \(errnoText(errno))") }
    unlink(path)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard bound == 0, listen(fd, 8) == 0 else {
        let code = errno
        Glibc.close(fd)
        throw VMMError(.config, "\(field): cannot listen on '\(path)': \(errnoText(code))")
    }
    return fd
}
