import MartletSystem

#if canImport(Glibc)
    import Glibc
#endif

/// What a path in a configuration must name. A FIFO, socket or character device is never
/// one of them: reading a FIFO blocks, `/dev/zero` never ends, `/dev/null` is no disk.
public enum FileKind: Sendable {
    case regularFile
    /// A disk image file or a block device.
    case disk
    case directory
    /// A unix socket (a path a listener is created at).
    case socket

    var noun: String {
        switch self {
        case .regularFile: "a regular file"
        case .disk: "a disk image file or a block device"
        case .directory: "a directory"
        case .socket: "a socket"
        }
    }

    func accepts(_ mode: mode_t) -> Bool {
        switch (mode & S_IFMT, self) {
        case (S_IFREG, .regularFile), (S_IFREG, .disk), (S_IFBLK, .disk), (S_IFDIR, .directory), (S_IFSOCK, .socket): true
        default: false
        }
    }

    static func describe(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        case S_IFBLK: "a block device"
        case S_IFCHR: "a character device"
        case S_IFIFO: "a FIFO"
        case S_IFSOCK: "a socket"
        case S_IFLNK: "a symbolic link"
        default: "an unknown kind of file"
        }
    }
}

/// Paths named by configurations: checked for their text and for what they point at
/// before anything is opened for real or created.
public enum FilePath {
    /// Refuses an empty path and one with NUL or control characters (a NUL would cut the
    /// path short at the system call).
    public static func checkText(_ path: String, field: String) throws(InvalidInput) {
        guard !path.isEmpty else { throw InvalidInput(field, "empty path") }
        try Text.check(path, field: field)
    }

    /// Refuses `path` unless it exists and is of `kind` (symbolic links followed); stat(2)
    /// only, so a FIFO is refused without blocking.
    public static func check(_ path: String, field: String, kind: FileKind) throws(InvalidInput) {
        try checkText(path, field: field)
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw InvalidInput(field, "cannot use \(quoted(path)): \(SystemError.text(errno))")
        }
        guard kind.accepts(info.st_mode) else {
            throw InvalidInput(field, "\(quoted(path)) is \(FileKind.describe(info.st_mode)), not \(kind.noun)")
        }
    }

    /// Refuses a path a file or socket is to be created at unless nothing is there or what
    /// is there is of `kind` (lstat(2): a symbolic link is refused too). Whether a socket
    /// there is stale is for the listener to find out; a regular file is never replaced by
    /// a socket, and a FIFO never opened as a log.
    public static func checkOutput(_ path: String, field: String, kind: FileKind) throws(InvalidInput) {
        try checkText(path, field: field)
        var info = stat()
        if lstat(path, &info) != 0 {
            guard errno == ENOENT else {
                throw InvalidInput(field, "cannot use \(quoted(path)): \(SystemError.text(errno))")
            }
            return
        }
        guard kind.accepts(info.st_mode) else {
            throw InvalidInput(
                field, "\(quoted(path)) already holds \(FileKind.describe(info.st_mode))",
                hint: "choose a path where nothing is, or remove what is there if it is not needed")
        }
    }

    /// Opens `path` (O_CLOEXEC added) and refuses it unless it is of `kind`. The open uses
    /// O_NONBLOCK, so a FIFO put there after a check cannot block; the flag is cleared on a
    /// file that passes.
    public static func open(_ path: String, _ flags: Int32, field: String, kind: FileKind) throws(InvalidInput)
        -> FileDescriptor
    {
        try checkText(path, field: field)
        let raw = Glibc.open(path, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard raw >= 0 else {
            throw InvalidInput(field, "cannot open \(quoted(path)): \(SystemError.text(errno))")
        }
        let fd = FileDescriptor(raw)
        var info = stat()
        guard fstat(fd.raw, &info) == 0 else {
            throw InvalidInput(field, "cannot stat \(quoted(path)): \(SystemError.text(errno))")
        }
        guard kind.accepts(info.st_mode) else {
            throw InvalidInput(field, "\(quoted(path)) is \(FileKind.describe(info.st_mode)), not \(kind.noun)")
        }
        _ = fcntl(fd.raw, F_SETFL, fcntl(fd.raw, F_GETFL) & ~O_NONBLOCK)
        return fd
    }

    /// The default cap on a file read as configuration (JSON, TOML, answer files).
    public static let configLimit = 1 << 20

    /// The bytes of the regular file at `path`, refused when longer than `limit`: a
    /// configuration is read with a bound, never until memory runs out.
    public static func readConfig(_ path: String, field: String, limit: Int = FilePath.configLimit)
        throws(InvalidInput) -> [UInt8]
    {
        let fd = try open(path, O_RDONLY, field: field, kind: .regularFile)
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fd.read(into: &chunk)
            guard count >= 0 else {
                throw InvalidInput(field, "cannot read \(quoted(path)): \(SystemError.text(errno))")
            }
            if count == 0 { return bytes }
            bytes += chunk.prefix(count)
            guard bytes.count <= limit else {
                throw InvalidInput(field, "\(quoted(path)) is larger than \(limit) bytes; this is not a configuration file")
            }
        }
    }
}
