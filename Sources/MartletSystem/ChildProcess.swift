import CMartletSystem

#if canImport(Glibc)
    import Glibc
#endif

/// Child processes through `posix_spawn` and `waitpid`: the one way Martlet starts programs.
/// The child gets exactly the fds it is given as 0, 1 and 2 (every other one is closed in
/// the child, whatever the parent has open and whether or not it is close-on-exec), an empty
/// signal mask and default signal dispositions, whatever the calling thread had.
public enum ChildProcess {
    /// How a child ended.
    public enum Termination: Equatable, Sendable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)
        /// Killed with SIGKILL because it ran longer than the caller allowed.
        case timedOut(seconds: Double)

        /// The shell's convention: the exit code, or 128 + the signal number.
        public var status: Int32 {
            switch self {
            case .exited(let code): code
            case .signaled(let signal): 128 + signal
            case .timedOut: 128 + SIGKILL
            }
        }

        public var description: String {
            switch self {
            case .exited(let code): "exited with status \(code)"
            case .signaled(let signal): "was killed by signal \(signal)"
            case .timedOut(let seconds): "did not finish within \(seconds) s and was killed"
            }
        }

        init(waitStatus: Int32) {
            let signal = waitStatus & 0x7F
            self = signal == 0 ? .exited((waitStatus >> 8) & 0xFF) : .signaled(signal)
        }
    }

    /// What a finished child wrote and how it ended.
    public struct Output: Sendable {
        public var termination: Termination
        public var stdoutBytes: [UInt8]
        public var stderrBytes: [UInt8]

        /// The exit status, 128 + signal when killed.
        public var status: Int32 { termination.status }
        public var stdout: String { String(decoding: stdoutBytes, as: UTF8.self) }
        public var stderr: String { String(decoding: stderrBytes, as: UTF8.self) }
    }

    /// Where a child's output goes while it runs: a chunk of stdout (false) or stderr (true).
    public typealias OutputHandler = (_ chunk: [UInt8], _ isStderr: Bool) -> Void

    /// Spawns `arguments` (argv[0] looked up on PATH unless it contains a slash) with `stdin`,
    /// `stdout` and `stderr` as its fds 0, 1 and 2. `environment` replaces the inherited one
    /// ("NAME=value" entries); `workingDirectory` is where it starts.
    public static func spawn(
        _ arguments: [String], stdin: Int32, stdout: Int32, stderr: Int32,
        environment: [String]? = nil, workingDirectory: String? = nil
    ) throws -> pid_t {
        guard let name = arguments.first else { throw SystemError("posix_spawn", errno: EINVAL) }
        guard let executable = find(name) else {
            throw SystemError("posix_spawn", path: name, errno: ENOENT)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        martlet_spawn_addclosefrom(&actions, 3)
        if let workingDirectory { martlet_spawn_addchdir(&actions, workingDirectory) }
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
        var envp = environment.map { $0.map { strdup($0) } + [nil] }
        defer { for pointer in envp ?? [] { free(pointer) } }
        var pid: pid_t = 0
        let result: Int32
        if envp != nil {
            result = posix_spawn(&pid, executable, &actions, &attributes, &argv, &envp!)
        } else {
            result = posix_spawn(&pid, executable, &actions, &attributes, &argv, environ)
        }
        guard result == 0 else { throw SystemError("posix_spawn", path: executable, errno: result) }
        return pid
    }

    /// Runs `body` with SIGPIPE blocked on this thread and discards a SIGPIPE it raised, so
    /// writing to a child that exited before reading its input fails with EPIPE instead of
    /// ending the whole process (pipes have no MSG_NOSIGNAL), and no caller has to ignore
    /// SIGPIPE process-wide. errno is kept as `body` left it.
    static func withoutSIGPIPE<T>(_ body: () -> T) -> T {
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &pipeSignal, &previous)
        let result = body()
        let bodyErrno = errno
        var pending = sigset_t()
        sigpending(&pending)
        if sigismember(&pending, SIGPIPE) == 1 && sigismember(&previous, SIGPIPE) == 0 {
            var now = timespec()
            _ = sigtimedwait(&pipeSignal, nil, &now)
        }
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        errno = bodyErrno
        return result
    }

    /// `waitpid` until `pid` ends.
    public static func wait(_ pid: pid_t) -> Termination {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return .exited(-1) }
        }
        return Termination(waitStatus: status)
    }

    /// `waitpid(WNOHANG)`: how `pid` ended, nil while it runs.
    public static func termination(_ pid: pid_t) -> Termination? {
        var status: Int32 = 0
        var result: pid_t
        repeat { result = waitpid(pid, &status, WNOHANG) } while result < 0 && errno == EINTR
        if result == 0 { return nil }
        if result < 0 { return .exited(-1) }
        return Termination(waitStatus: status)
    }

    /// Runs `arguments` to completion: `input` on its stdin, stdout and stderr collected (and
    /// handed to `onOutput` as they arrive). After `timeout` seconds the child is killed and
    /// the termination says so. All on the calling thread: one poll loop feeds stdin and
    /// drains both pipes, so neither side can block the other.
    public static func run(
        _ arguments: [String], input: [UInt8] = [], environment: [String]? = nil,
        workingDirectory: String? = nil, timeout: Double? = nil, onOutput: OutputHandler? = nil
    ) throws -> Output {
        let inPipe = try FileDescriptor.pipe()
        let outPipe = try FileDescriptor.pipe()
        let errPipe = try FileDescriptor.pipe()
        let pid = try spawn(
            arguments, stdin: inPipe.read.raw, stdout: outPipe.write.raw, stderr: errPipe.write.raw,
            environment: environment, workingDirectory: workingDirectory)
        inPipe.read.close()
        outPipe.write.close()
        errPipe.write.close()
        _ = fcntl(inPipe.write.raw, F_SETFL, O_NONBLOCK)
        let deadline = timeout.map { monotonicSeconds() + $0 }
        var pendingInput = input[...]
        if pendingInput.isEmpty { inPipe.write.close() }
        var output = ([UInt8](), [UInt8]())
        var buffer = [UInt8](repeating: 0, count: 65536)
        var timedOut = false
        while outPipe.read.raw >= 0 || errPipe.read.raw >= 0 {
            var fds = [
                pollfd(fd: outPipe.read.raw, events: Int16(POLLIN), revents: 0),
                pollfd(fd: errPipe.read.raw, events: Int16(POLLIN), revents: 0),
                pollfd(fd: inPipe.write.raw, events: Int16(POLLOUT), revents: 0),
            ]
            let wait = deadline.map { Int32(max(0, ($0 - monotonicSeconds()) * 1000).rounded(.up)) } ?? -1
            let ready = poll(&fds, nfds_t(fds.count), wait)
            if ready < 0 {
                if errno == EINTR { continue }
                throw SystemError("poll")
            }
            if ready == 0, deadline != nil {
                timedOut = true
                kill(pid, SIGKILL)
                break
            }
            if fds[2].revents != 0 {
                let written = withoutSIGPIPE {
                    pendingInput.withContiguousStorageIfAvailable {
                        Glibc.write(inPipe.write.raw, $0.baseAddress, $0.count)
                    } ?? -1
                }
                if written > 0 { pendingInput = pendingInput.dropFirst(written) }
                if pendingInput.isEmpty || (written < 0 && errno != EAGAIN && errno != EINTR) {
                    inPipe.write.close()
                }
            }
            for (index, pipe) in [outPipe.read, errPipe.read].enumerated() where fds[index].revents != 0 {
                let count = pipe.read(into: &buffer)
                if count <= 0 {
                    pipe.close()
                    continue
                }
                let chunk = Array(buffer.prefix(count))
                if index == 0 { output.0 += chunk } else { output.1 += chunk }
                onOutput?(chunk, index == 1)
            }
        }
        // The child may close its output and still run; the deadline holds for it too.
        var ended: Termination?
        while !timedOut, let deadline {
            ended = termination(pid)
            if ended != nil { break }
            if monotonicSeconds() >= deadline {
                timedOut = true
                kill(pid, SIGKILL)
            } else {
                usleep(10_000)
            }
        }
        let termination = ended ?? wait(pid)
        return Output(
            termination: timedOut ? .timedOut(seconds: timeout ?? 0) : termination,
            stdoutBytes: output.0, stderrBytes: output.1)
    }

    /// The absolute path of `name` on PATH (`name` itself when it contains a slash), or nil.
    /// /usr/sbin and /sbin are searched last, for tools run as root from a user's PATH.
    public static func find(_ name: String) -> String? {
        if name.contains("/") { return name }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        let directories = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        for directory in directories {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// CLOCK_MONOTONIC in seconds, for deadlines that a clock change cannot move.
    public static func monotonicSeconds() -> Double {
        Double(monotonicNanoseconds()) / 1e9
    }

    /// CLOCK_MONOTONIC in nanoseconds: the same clock in every PID and mount namespace, so a
    /// spawner's time and its jailed child's compare.
    public static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}

extension ChildProcess {
    /// Reads a server child's `output` until a line says "port N" (how python3's http.server
    /// and the test servers announce the port the kernel picked), for at most `seconds`.
    /// Returns the port, or nil with what was read.
    public static func announcedPort(on output: FileDescriptor, within seconds: Double) -> (port: Int?, text: String) {
        let deadline = monotonicSeconds() + seconds
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while monotonicSeconds() < deadline {
            var descriptor = pollfd(fd: output.raw, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 200) > 0 else { continue }
            let count = output.read(into: &buffer)
            if count <= 0 { break }
            text += String(decoding: buffer[0..<count], as: UTF8.self)
            if text.contains("\n"), let range = text.firstRange(of: "port ") {
                return (Int(text[range.upperBound...].prefix { $0.isNumber }), text)
            }
        }
        return (nil, text)
    }
}
