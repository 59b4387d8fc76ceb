import MartletSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// COM1 on a unix listening socket (`serial: "socket:PATH"`), the way host tooling attaches a
/// console to a VMM it does not own the terminal of. One client at a time (others wait in the
/// listen backlog until it disconnects): the guest's output goes to it, its bytes go to the
/// UART's receive side. While nobody is connected the last 64 KiB of output wait for the next
/// client, so a console that connects just after start-up misses nothing.
final class SerialSocket: Sendable {
    static let backlogLimit = 65536

    let path: String
    private let listener: FileDescriptor
    /// What the guest's output side (a vCPU thread) and the serving thread share.
    private struct Shared {
        var client: FileDescriptor?
        var backlog: [UInt8] = []
        var closed = false
    }
    private let shared = Mutex(Shared())

    /// Listens on `path` (mode 0600; a stale socket file is replaced, anything else refused).
    init(path: String) throws {
        do {
            listener = try UnixSocket.listen(path, mode: 0o600, backlog: 8)
        } catch let error as SystemError {
            throw VMMError(.config, "serial: \(error)")
        }
        self.path = path
    }

    /// Accepts clients and feeds what they send to `receive` on a dedicated thread.
    func start(receive: @escaping ([UInt8]) -> Void) throws {
        _ = try startThread { [self] in serve(receive) }
    }

    /// Guest output: to the client, or kept for the next one.
    func send(_ byte: UInt8) {
        shared.withLock { state in
            if let client = state.client {
                // A console that went away is an error here (MSG_NOSIGNAL), not a SIGPIPE; a
                // client that stops reading for SO_SNDTIMEO is dropped, not waited for.
                if client.writeAll(CollectionOfOne(byte)) { return }
                client.shutdown()
            }
            state.backlog.append(byte)
            // Trimmed once it is twice the limit, not per byte: a memmove of 64 KiB for every
            // byte a guest prints with nobody attached would cost more than the UART exit.
            if state.backlog.count >= 2 * SerialSocket.backlogLimit {
                state.backlog.removeFirst(state.backlog.count - SerialSocket.backlogLimit)
            }
        }
    }

    /// Stops accepting and removes the socket file.
    func close() {
        shared.withLock { state in
            state.closed = true
            state.client?.shutdown()
        }
        listener.shutdown()
        unlink(path)
    }

    private func serve(_ receive: ([UInt8]) -> Void) {
        Seccomp.confineThreadOrExit(.io)
        var chunk = [UInt8](repeating: 0, count: 1024)
        while let connection = UnixSocket.accept(listener) {
            connection.setTimeouts(send: 2)
            let accepted = shared.withLock { state in
                guard !state.closed else { return false }
                connection.writeAll(state.backlog.suffix(SerialSocket.backlogLimit))
                state.backlog.removeAll()
                state.client = connection
                return true
            }
            guard accepted else { return }
            while true {
                let count = connection.read(into: &chunk)
                guard count > 0 else { break }
                receive(Array(chunk.prefix(count)))
            }
            // The output side lets go under the lock; the descriptor closes with the last owner.
            shared.withLock { $0.client = nil }
        }
    }
}
