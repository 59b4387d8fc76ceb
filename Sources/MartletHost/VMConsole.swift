import Foundation
import MartletCore
import MartletSystem

/// The client side of a VM's console socket (served by `VMRunner`).
public enum VMConsole {
    public enum Outcome: Equatable, Sendable { case detached, matched, closed, timedOut }

    /// Connects to the console socket at `path`.
    public static func connect(_ path: String) throws -> FileDescriptor {
        do {
            return try UnixSocket.connect(path)
        } catch let error as SystemError {
            throw MartletError(error, hint: "is the VM's runner still running? see 'martlet vm show'")
        }
    }

    /// Copies the console to stdout and stdin to the console until the detach key, the
    /// `expect` text, the end of the console, or `timeout` seconds (0: none). On a terminal
    /// stdin is put in raw mode (restored before returning) so keys reach the guest as typed.
    public static func attach(
        console: FileDescriptor, detachKey: UInt8, expect: String?, timeout: Double, interactive: Bool
    ) -> Outcome {
        var saved = termios()
        if interactive, tcgetattr(STDIN_FILENO, &saved) == 0 {
            var raw = saved
            cfmakeraw(&raw)
            tcsetattr(STDIN_FILENO, TCSANOW, &raw)
        }
        defer { if interactive { tcsetattr(STDIN_FILENO, TCSANOW, &saved) } }
        let deadline = timeout > 0 ? Date().addingTimeInterval(timeout) : nil
        var seen: [UInt8] = []
        let needle = expect.map { Array($0.utf8) }
        var stdinOpen = true
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            var fds = [pollfd(fd: console.raw, events: Int16(POLLIN), revents: 0)]
            if stdinOpen { fds.append(pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)) }
            let wait = deadline.map { max(0, Int32($0.timeIntervalSinceNow * 1000)) } ?? 1000
            let ready = poll(&fds, nfds_t(fds.count), min(wait, 1000))
            if ready < 0 && errno != EINTR { return .closed }
            if let deadline, Date() >= deadline { return .timedOut }
            if fds[0].revents != 0 {
                let count = console.read(into: &buffer)
                guard count > 0 else { return .closed }
                let chunk = Array(buffer.prefix(count))
                FileDescriptor.writeAll(to: STDOUT_FILENO, chunk)
                if let needle {
                    seen += chunk
                    if seen.count > 65536 { seen.removeFirst(seen.count - 65536) }
                    if contains(seen, needle) { return .matched }
                }
            }
            if stdinOpen, fds.count > 1, fds[1].revents != 0 {
                let count = buffer.withUnsafeMutableBytes {
                    read(STDIN_FILENO, $0.baseAddress, $0.count)
                }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else {
                    // Stdin ended (a script): keep showing the console until it closes or times out.
                    stdinOpen = false
                    continue
                }
                let keys = Array(buffer.prefix(count))
                if let index = keys.firstIndex(of: detachKey) {
                    console.writeAll(keys[..<index])
                    return .detached
                }
                console.writeAll(keys)
            }
        }
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return needle.isEmpty }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if Array(haystack[start..<(start + needle.count)]) == needle { return true }
        }
        return false
    }
}
