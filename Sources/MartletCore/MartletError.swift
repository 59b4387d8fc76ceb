import Foundation
import MartletSystem

/// The one error type Martlet's libraries throw: what failed, why, and what to do.
///
/// `description` renders like:
/// ```
/// martlet: profile 'profiles/default/profile.toml': unknown key 'iso.lable' (line 12:1)
/// ├─ Reason: ...
/// └─ Cause: 'mmdebstrap' exited with status 1: E: Unable to locate package foo
/// ```
public struct MartletError: Error, LocalizedError, CustomStringConvertible, Sendable {
    /// Broad classes of failure; they map onto process exit codes.
    public enum Code: String, Sendable {
        /// The user's input (a file, a flag, a value) is wrong.
        case invalidInput
        /// Something the user named does not exist.
        case notFound
        /// A tool, package or capability is missing on this machine.
        case missingDependency
        /// Root (or another privilege) is needed.
        case permissionDenied
        /// A safety check refused to go on (a mounted disk, the boot medium, ...).
        case refused
        /// A subprocess or system call failed.
        case failed
        /// A check of a produced artefact failed.
        case verificationFailed
        /// The feature is not built yet.
        case unavailable

        /// The exit status a command returns for this class of error.
        public var exitStatus: Int32 {
            switch self {
            case .invalidInput: 2
            case .notFound: 3
            case .missingDependency: 4
            case .permissionDenied: 5
            case .refused: 6
            case .failed: 1
            case .verificationFailed: 7
            case .unavailable: 69
            }
        }
    }

    public var code: Code
    public var message: String
    /// What to do about it, when Martlet knows.
    public var hint: String?
    /// The underlying error or output that caused this one.
    public var cause: String?

    public init(_ code: Code, _ message: String, hint: String? = nil, cause: String? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
        self.cause = cause
    }

    public var description: String {
        var text = message
        if let cause, !cause.isEmpty {
            let trimmed = cause.trimmingCharacters(in: .whitespacesAndNewlines)
            let lines = trimmed.split(separator: "\n", omittingEmptySubsequences: false)
            text += "\n├─ Cause: " + lines.joined(separator: "\n│    ")
        }
        if let hint {
            text += "\n└─ Fix: \(hint)"
        }
        return text
    }

    public var errorDescription: String? { description }
}

extension MartletError {
    /// Wraps a failed system call: names the call, the path and errno.
    public static func system(
        _ call: String, path: String? = nil, errno code: Int32 = errno, hint: String? = nil
    ) -> MartletError {
        let target = path.map { " on '\($0)'" } ?? ""
        return MartletError(
            .failed, "'\(call)'\(target) failed with (\(code)) \(String(cString: strerror(code)))",
            hint: hint)
    }
}

extension MartletError {
    /// A failed system call from the process and fd layer, with what to do about it.
    public init(_ error: SystemError, hint: String? = nil) {
        self.init(.failed, error.description, hint: hint)
    }
}
