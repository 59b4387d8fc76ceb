#if canImport(Glibc)
    import Glibc
#endif

/// The control socket: a unix stream socket taking one JSON request per line,
/// `{"command": "info"|"state"|"pause"|"resume"|"shutdown"|"stop"}`, answering one JSON line.
public final class ControlServer: @unchecked Sendable {
    public let path: String
    private let fd: Int32
    private let machine: Machine
    private var thread: pthread_t?

    public init(path: String, machine: Machine) throws {
        let fd = try listenOnUnixSocket(path, field: "control_socket")
        self.path = path
        self.fd = fd
        self.machine = machine
    }

    /// Serves requests on a dedicated thread until `close()`.
    public func start() throws {
        thread = try startThread { [self] in serve() }
    }

    /// Stops serving and removes the socket file.
    public func close() {
        shutdown(fd, Int32(SHUT_RDWR))
        if let thread { pthread_join(thread, nil) }
        Glibc.close(fd)
        unlink(path)
    }

    private func serve() {
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            // One client at a time: a silent one must not hold the API forever.
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            handle(client)
            Glibc.close(client)
        }
    }

    private func handle(_ client: Int32) {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(client, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return }
            pending += chunk.prefix(count)
            guard pending.count <= 65536 else { return }
            while let newline = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                let reply = Array((respond(to: line).text + "\n").utf8)
                var sent = 0
                while sent < reply.count {
                    let written = reply.withUnsafeBytes { write(client, $0.baseAddress! + sent, reply.count - sent) }
                    if written < 0 && errno == EINTR { continue }
                    guard written > 0 else { return }
                    sent += written
                }
            }
        }
    }

    /// The reply to one request line.
    public func respond(to line: String) -> JSON {
        func failure(_ message: String) -> JSON { .object([("ok", .bool(false)), ("error", .string(message))]) }
        let request: JSON
        do {
            request = try JSON(parsing: line)
        } catch {
            return failure("\(error)")
        }
        guard case .string(let command)? = request["command"] else {
            return failure("expected {\"command\": \"info|state|pause|resume|shutdown|stop\"}")
        }
        switch command {
        case "state":
            return .object([("ok", .bool(true)), ("state", .string(machine.state.rawValue))])
        case "info":
            let config = machine.config
            return .object([
                ("ok", .bool(true)),
                ("state", .string(machine.state.rawValue)),
                ("vcpus", .number(Double(config.vcpus))),
                ("memory_mib", .number(Double(config.memoryMiB))),
                ("kernel", .string(config.kernel)),
                ("disks", .array(config.disks.map { .string($0.path) })),
                ("nics", .array(config.nics.map { .string($0.tap) })),
                ("port_io_exits", .number(Double(machine.portIOExits))),
                ("device_errors", .array(machine.deviceErrors.map { .string($0) })),
            ])
        case "pause":
            machine.pause()
        case "resume":
            machine.resume()
        case "shutdown":
            machine.pressPowerButton()
        case "stop":
            machine.stop()
        default:
            return failure("unknown command '\(command)'; use info, state, pause, resume, shutdown or stop")
        }
        return .object([("ok", .bool(true)), ("state", .string(machine.state.rawValue))])
    }
}

/// The client side of the control socket (`martlet-vmm control`), so hosts need no socat.
public enum ControlClient {
    /// Sends one request line and returns the reply line.
    public static func send(_ request: JSON, to path: String) throws -> JSON {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw VMMError(.control, "socket path '\(path)' is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VMMError(.control, "socket() failed: \(errnoText(errno))") }
        defer { Glibc.close(fd) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            throw VMMError(.control, "cannot connect to '\(path)': \(errnoText(errno)); is the VM running with this control_socket?")
        }
        let line = Array((request.text + "\n").utf8)
        var sent = 0
        while sent < line.count {
            let count = line.withUnsafeBytes { write(fd, $0.baseAddress! + sent, line.count - sent) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw VMMError(.control, "write to '\(path)' failed: \(errnoText(errno))") }
            sent += count
        }
        var reply: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let count = read(fd, &byte, 1)
            if count < 0 && errno == EINTR { continue }
            guard count == 1, byte != 0x0A else { break }
            reply.append(byte)
        }
        return try JSON(parsing: String(decoding: reply, as: UTF8.self))
    }
}
