import Foundation
import MartletBuilder
import MartletCore

extension QEMUMachine {
    /// Runs one human-monitor (HMP) command, e.g. `sendkey ret`, and returns what QEMU
    /// answered. Connects to `monitorSocketPath` (retrying while QEMU creates it), waits for
    /// the `(qemu)` prompt, sends the command and reads up to the next prompt.
    @discardableResult
    public func monitor(_ command: String, timeout: Duration = .seconds(10)) throws -> String {
        guard configuration.headless else {
            throw MartletError(
                .invalidInput, "monitor command '\(command)': the monitor is on the terminal",
                hint: "only headless machines have a monitor socket")
        }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let fd = try connectMonitor(until: deadline)
        defer { close(fd) }
        var received = try readUntilPrompt(fd, after: 0, until: deadline, command: command)
        let promptEnd = received.count
        let line = Array((command + "\n").utf8)
        let written = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == line.count else {
            throw MartletError.system("write", path: monitorSocketPath)
        }
        received = try readUntilPrompt(
            fd, after: promptEnd, until: deadline, command: command, prefix: received)
        // The monitor echoes the command line (with readline's redraws) up to the first
        // newline; the answer is what follows, up to the next prompt.
        var reply = String(decoding: received[promptEnd...], as: UTF8.self)
        if let echoEnd = reply.firstIndex(where: \.isNewline) {
            reply = String(reply[reply.index(after: echoEnd)...])
        }
        return reply.replacingOccurrences(of: "(qemu) ", with: "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Presses keys on the guest's keyboard like a person would, one after the other, with
    /// `pause` between them: QEMU key names (`down`, `ret`, `esc`, `ctrl-alt-delete`).
    public func sendKeys(_ keys: [String], pause: Duration = .milliseconds(300)) throws {
        for key in keys {
            let reply = try monitor("sendkey \(key)")
            // QEMU answers nothing when it took the key ("invalid parameter: …" otherwise).
            guard reply.isEmpty else {
                throw MartletError(.failed, "QEMU refused 'sendkey \(key)': \(reply)")
            }
            Thread.sleep(forTimeInterval: Self.interval(pause))
        }
    }

    private func connectMonitor(until deadline: ContinuousClock.Instant) throws -> Int32 {
        while true {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw MartletError.system("socket", path: monitorSocketPath) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let path = Array(monitorSocketPath.utf8)
            guard path.count < MemoryLayout.size(ofValue: address.sun_path) else {
                close(fd)
                throw MartletError(
                    .invalidInput, "monitor socket path '\(monitorSocketPath)' is too long",
                    hint: "use a shorter TMPDIR")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { buffer in
                buffer.copyBytes(from: path)
                buffer[path.count] = 0
            }
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if result == 0 { return fd }
            let code = errno
            close(fd)
            if !isRunning || ContinuousClock.now >= deadline {
                throw MartletError.system(
                    "connect", path: monitorSocketPath, errno: code,
                    hint: isRunning ? "QEMU does not answer on its monitor" : "QEMU is not running")
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// Reads until the bytes after `after` contain the `(qemu) ` prompt.
    private func readUntilPrompt(
        _ fd: Int32, after: Int, until deadline: ContinuousClock.Instant, command: String,
        prefix: [UInt8] = []
    ) throws -> [UInt8] {
        var received = prefix
        let prompt = Array("(qemu) ".utf8)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !received[after...].containsSequence(prompt) {
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else {
                throw MartletError(
                    .failed, "QEMU's monitor did not answer '\(command)' in time",
                    cause: String(decoding: received, as: UTF8.self))
            }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(min(Self.interval(left) * 1000, 1000))
            guard poll(&poller, 1, max(milliseconds, 1)) >= 0 || errno == EINTR else {
                throw MartletError.system("poll", path: monitorSocketPath)
            }
            guard poller.revents != 0 else { continue }
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                throw MartletError(
                    .failed, "QEMU closed its monitor while answering '\(command)'",
                    cause: String(decoding: received, as: UTF8.self))
            }
            received += buffer[..<count]
        }
        return received
    }

    static func interval(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

extension ArraySlice where Element == UInt8 {
    fileprivate func containsSequence(_ needle: [UInt8]) -> Bool {
        guard count >= needle.count else { return false }
        var index = startIndex
        while index + needle.count <= endIndex {
            if self[index..<(index + needle.count)].elementsEqual(needle) { return true }
            index += 1
        }
        return false
    }
}
