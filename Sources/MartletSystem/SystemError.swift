#if canImport(Glibc)
    import Glibc
#endif

/// A failed system call: which call, on which path (when there is one), and errno.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    public var call: String
    public var path: String?
    public var errno: Int32

    public init(_ call: String, path: String? = nil, errno: Int32 = Glibc.errno) {
        self.call = call
        self.path = path
        self.errno = errno
    }

    /// "connect '/run/x.sock' failed: (2) No such file or directory".
    public var description: String {
        let target = path.map { " '\($0)'" } ?? ""
        return "\(call)\(target) failed: \(SystemError.text(errno))"
    }

    /// "(13) Permission denied" for an errno value.
    public static func text(_ code: Int32) -> String {
        "(\(code)) \(String(cString: strerror(code)))"
    }
}
