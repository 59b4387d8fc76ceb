import Foundation
import MartletCore

/// Child processes through `posix_spawn` and `waitpid`, for the runner and the CLI paths that
/// start long-lived detached processes. Foundation's `Process` watches children through a
/// run loop and SIGCHLD; in a runner spawned from a thread of a concurrency pool, or inside
/// `ip netns exec`, it was seen never to notice a child's exit ("Could not create wakeup
/// socket pair for CFSocket"), hanging `martlet vm run` on its first `ip` command.
public enum ChildProcess {
    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Spawns `arguments` (argv[0] resolved on PATH) with the given fds as 0, 1 and 2, a
    /// clean signal mask and default dispositions; every other fd is closed-on-exec.
    public static func spawn(_ arguments: [String], stdin: Int32, stdout: Int32, stderr: Int32)
        throws -> pid_t
    {
        let executable = try Tool.resolve(arguments[0])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, &argv, environ)
        guard result == 0 else {
            throw MartletError.system("posix_spawn", path: executable, errno: result)
        }
        return pid
    }

    /// `waitpid` until `pid` ends; returns its exit status (128 + signal when killed).
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    /// `waitpid(WNOHANG)`: the exit status (as `wait`) when `pid` has ended, nil while it runs.
    public static func exitStatus(_ pid: pid_t) -> Int32? {
        var status: Int32 = 0
        var result: pid_t
        repeat { result = waitpid(pid, &status, WNOHANG) } while result < 0 && errno == EINTR
        if result == 0 { return nil }
        if result < 0 { return -1 }
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    /// Runs `arguments` to completion, collecting stdout and stderr.
    public static func run(_ arguments: [String], input: String? = nil) throws -> Output {
        let inPipe = try makePipe()
        let outPipe = try makePipe()
        let errPipe = try makePipe()
        let pid: pid_t
        do {
            pid = try spawn(arguments, stdin: inPipe[0], stdout: outPipe[1], stderr: errPipe[1])
        } catch {
            for fd in inPipe + outPipe + errPipe { close(fd) }
            throw error
        }
        close(inPipe[0])
        close(outPipe[1])
        close(errPipe[1])
        let writer = inPipe[1]
        let bytes = Array((input ?? "").utf8)
        Thread.detachNewThread {
            UnixSocket.writeAll(writer, bytes)
            close(writer)
        }
        var out: [UInt8] = []
        var err: [UInt8] = []
        var open = [outPipe[0], errPipe[0]]
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds where entry.revents != 0 {
                let count = buffer.withUnsafeMutableBytes {
                    read(entry.fd, $0.baseAddress, $0.count)
                }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 {
                    close(entry.fd)
                    open.removeAll { $0 == entry.fd }
                } else if entry.fd == outPipe[0] {
                    out += buffer.prefix(count)
                } else {
                    err += buffer.prefix(count)
                }
            }
        }
        let status = wait(pid)
        return Output(
            status: status, stdout: String(decoding: out, as: UTF8.self),
            stderr: String(decoding: err, as: UTF8.self))
    }

    /// A pipe whose both ends are close-on-exec (children get them only through dup2).
    static func makePipe() throws -> [Int32] {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw MartletError.system("pipe") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return fds
    }

    /// Runs and throws, naming the command and its stderr, unless it exits 0.
    @discardableResult
    public static func check(_ arguments: [String]) throws -> Output {
        let output = try run(arguments)
        guard output.status == 0 else {
            throw MartletError(
                .failed,
                "'\(arguments.joined(separator: " "))' exited with status \(output.status)",
                cause: output.stderr.isEmpty ? output.stdout : output.stderr)
        }
        return output
    }
}
