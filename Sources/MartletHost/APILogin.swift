import CPAM
import Foundation
import MartletCore
import Synchronization

/// Logins for people: a host account's password checked through PAM (service `martlet-api`,
/// /etc/pam.d/martlet-api), then a session cookie. Only the accounts in api.toml's
/// `login-users` may log in (root by default).
public struct PAMAuthenticator: Sendable {
    public var service: String
    /// A folder to read the PAM service from instead of /etc/pam.d (pam_start_confdir): tests
    /// use their own stack.
    public var configurationDirectory: String?

    public init(service: String = "martlet-api", configurationDirectory: String? = nil) {
        self.service = service
        self.configurationDirectory = configurationDirectory
    }

    /// Whether `password` is `user`'s and the account may be used now (pam_authenticate, then
    /// pam_acct_mgmt).
    public func authenticate(user: String, password: String) -> Bool {
        // PAM asks through this function; it answers every prompt with the password (the one
        // thing a login form has). PAM frees the answers, so they are malloc'd here.
        let converse: @convention(c) (
            Int32, UnsafeMutablePointer<UnsafePointer<pam_message>?>?,
            UnsafeMutablePointer<UnsafeMutablePointer<pam_response>?>?, UnsafeMutableRawPointer?
        ) -> Int32 = { count, messages, responses, context in
            guard count > 0, let messages, let responses, let context,
                let replies = calloc(Int(count), MemoryLayout<pam_response>.stride)?.assumingMemoryBound(to: pam_response.self)
            else { return PAM_CONV_ERR }
            for index in 0..<Int(count) {
                guard let message = messages[index] else { continue }
                let style = message.pointee.msg_style
                if style == PAM_PROMPT_ECHO_OFF || style == PAM_PROMPT_ECHO_ON {
                    replies[index].resp = strdup(context.assumingMemoryBound(to: CChar.self))
                }
            }
            responses.pointee = replies
            return PAM_SUCCESS
        }
        return password.withCString { secret in
            var conversation = pam_conv(conv: converse, appdata_ptr: UnsafeMutableRawPointer(mutating: secret))
            var handle: OpaquePointer?
            let started =
                configurationDirectory.map { pam_start_confdir(service, user, &conversation, $0, &handle) }
                ?? pam_start(service, user, &conversation, &handle)
            guard started == PAM_SUCCESS, let handle else { return false }
            var status = pam_authenticate(handle, Int32(PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK))
            if status == PAM_SUCCESS { status = pam_acct_mgmt(handle, Int32(PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)) }
            pam_end(handle, status)
            return status == PAM_SUCCESS
        }
    }
}

/// The browser sessions of logged-in people, in memory (a restart logs everyone out): a
/// random id in an HttpOnly, Secure, SameSite=Strict cookie, and a CSRF token the page sends
/// back in `X-CSRF-Token` with every request that changes something.
public final class SessionStore: Sendable {
    public struct Session: Sendable {
        /// The host account, or the token's name for a session opened with a token.
        public var user: String
        public var csrfToken: String
        public var expires: Double
        /// The API token the page logged in with (the web UI's token login): the session
        /// has that token's rights and ends when the token is revoked. Nil for a password.
        public var token: APIToken?
    }

    public static let cookieName = "martlet_session"
    /// A working day; a session unused that long is gone.
    public let lifetime: Double

    private let sessions = Mutex<[String: Session]>([:])

    /// Seconds since 1970; a test's own clock in tests.
    let clock: @Sendable () -> Double

    public init(lifetime: Double = 8 * 3600, clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.lifetime = lifetime
        self.clock = clock
    }

    /// A new session for `user` (or for `token`, named by it): its cookie id and the session.
    public func open(user: String, token: APIToken? = nil) -> (id: String, session: Session) {
        let id = Self.random()
        let session = Session(user: user, csrfToken: Self.random(), expires: clock() + lifetime, token: token)
        sessions.withLock {
            let now = clock()
            $0 = $0.filter { $0.value.expires > now }
            $0[id] = session
        }
        return (id, session)
    }

    /// The live session with cookie id `id`; its lifetime starts again.
    public func session(_ id: String) -> Session? {
        sessions.withLock {
            guard var session = $0[id], session.expires > clock() else {
                $0[id] = nil
                return nil
            }
            session.expires = clock() + lifetime
            $0[id] = session
            return session
        }
    }

    public func close(_ id: String) {
        _ = sessions.withLock { $0.removeValue(forKey: id) }
    }

    static func random() -> String {
        var generator = SystemRandomNumberGenerator()
        return Digest.hex((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }
}
