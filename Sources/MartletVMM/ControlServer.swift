import MartletSystem
import MartletVMMProtocol

#if canImport(Glibc)
    import Glibc
#endif

/// The control socket: a unix stream socket taking one `ControlRequest` per line and
/// answering each with one `ControlReply` line.
public final class ControlServer: Sendable {
    public let path: String
    private let listener: FileDescriptor
    private let machine: Machine
    private let thread = ThreadHandle()

    /// Listens on `path` (mode 0600: whoever may control the VM owns the socket).
    public init(path: String, machine: Machine) throws {
        do {
            listener = try UnixSocket.listen(path, mode: 0o600, backlog: 8)
        } catch let error as SystemError {
            throw VMMError(.config, "control_socket: \(error)")
        }
        self.path = path
        self.machine = machine
    }

    /// Serves requests on a dedicated thread until `close()`.
    public func start() throws {
        try thread.start { [self] in serve() }
    }

    /// Stops serving and removes the socket file.
    public func close() {
        listener.shutdown()
        thread.join()
        listener.close()
        unlink(path)
    }

    private func serve() {
        while let client = UnixSocket.accept(listener) {
            // One client at a time: a silent one must not hold the API forever.
            client.setTimeouts(receive: 5, send: 5)
            handle(client)
        }
    }

    private func handle(_ client: FileDescriptor) {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = client.read(into: &chunk)
            guard count > 0 else { return }
            pending += chunk.prefix(count)
            guard pending.count <= 65536 else { return }
            while let newline = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                guard client.writeAll((respond(to: line).json.text + "\n").utf8) else { return }
            }
        }
    }

    /// The reply to one request line.
    public func respond(to line: String) -> ControlReply {
        let request: ControlRequest
        do {
            request = try ControlRequest(line: line)
        } catch {
            return ControlReply(error: "\(error)")
        }
        switch request {
        case .state:
            break
        case .info:
            let config = machine.config
            return ControlReply(
                state: machine.state,
                info: ControlReply.Info(
                    vcpus: config.vcpus, memoryMiB: config.memoryMiB, kernel: config.kernel,
                    disks: config.disks.map(\.path), nics: config.nics.map(\.tap),
                    portIOExits: machine.portIOExits, deviceErrors: machine.deviceErrors,
                    devices: machine.deviceCounters))
        case .pause:
            machine.pause()
        case .resume:
            machine.resume()
        case .shutdown:
            machine.pressPowerButton()
        case .stop:
            machine.stop()
        }
        return ControlReply(state: machine.state)
    }
}
