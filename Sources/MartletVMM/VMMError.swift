#if canImport(Glibc)
    import Glibc
#endif

/// Every failure of the VMM: what failed, why, and what to do about it.
public struct VMMError: Error, CustomStringConvertible, Equatable {
    public enum Code: String, Sendable {
        case kvmUnavailable, kvmPermission, kvmCapability, ioctl, memory, boot, config, io
        case device, guest, control
    }
    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// An ioctl failure, naming the request and errno.
    static func ioctl(_ name: String, _ negativeErrno: Int, hint: String? = nil) -> VMMError {
        var text = "\(name) failed: \(errnoText(Int32(-negativeErrno)))"
        if let hint { text += "; \(hint)" }
        return VMMError(.ioctl, text)
    }

    /// A system call failure on a path, naming the call and errno.
    static func syscall(_ call: String, path: String, errno code: Int32) -> VMMError {
        VMMError(.io, "\(call) '\(path)' failed: \(errnoText(code))")
    }
}

/// "(13) Permission denied" for an errno value.
func errnoText(_ code: Int32) -> String {
    "(\(code)) \(String(cString: strerror(code)))"
}
