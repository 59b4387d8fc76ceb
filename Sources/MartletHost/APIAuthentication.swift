import Foundation
import HTTPTypes
import Hummingbird
import Logging
import MartletCore
import MartletValidation

/// The HTTPS side's gate. Every API request (under /v1/) is either
/// - a script's: `Authorization: Bearer TOKEN` for a token in the store; a read-only token may
///   only read (403 for any other method); or
/// - a person's: the session cookie from `POST /v1/login` (a host account's password through
///   PAM, or an API token typed into the web UI's login: a session with that token's rights,
///   ended when it is revoked); anything but a read must also carry the session's
///   `X-CSRF-Token`, which a page from another site cannot know.
/// Anything else is 401. Every request that may change something is written to the journal
/// with who made it, and so is every refusal and failed login (each failure answered only
/// after a pause, so passwords cannot be tried fast).
struct Authentication: RouterMiddleware {
    typealias Context = BasicRequestContext

    let tokens: APITokenStore
    let sessions: SessionStore
    let pam: PAMAuthenticator
    /// The host accounts that may log in.
    let loginUsers: [String]
    let logger: Logger
    /// How long a failed login waits before it is answered.
    var failedLoginPause: Duration = .seconds(2)

    /// The methods a read-only token, or a session without its CSRF token, may use.
    static let readingMethods: Set<HTTPRequest.Method> = [.get, .head]
    static let csrfHeader = HTTPField.Name("X-CSRF-Token")!

    /// A host account and its password, or an API token (for a page: a browser cannot put
    /// a token on an EventSource or a WebSocket, but it sends the session's cookie).
    struct LoginRequest: Decodable {
        var user: String?
        var password: String?
        var token: String?
    }

    struct LoginReply: Encodable {
        var user: String
        var csrfToken: String
        /// A read-only token's session: it may read and watch consoles only.
        var readOnly: Bool
    }

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        // Outside /v1/ are only the web UI's files (or a 404): no data, no token. Hummingbird's
        // FileMiddleware answers those when what comes after it says 404.
        let path = request.uri.path
        guard path.hasPrefix("/v1/") || path == "/v1" else { return try await next(request, context) }
        if path == "/v1/login" { return try await login(request, context) }
        let what = "\(request.method) \(path)"
        let reads = Self.readingMethods.contains(request.method)
        let who: String
        switch caller(request) {
        case .unknownToken:
            return refuse(what, "unknown or revoked token")
        case .token(let token):
            if token.readOnly && !reads {
                logger.warning("api: refused \(what) for read-only token '\(token.name)'")
                return APIServer.errorResponse(
                    MartletError(.permissionDenied, "token '\(token.name)' is read-only; \(request.method) needs a full token"))
            }
            who = "token '\(token.name)'"
        case .session(let id, let session):
            let name = Caller.session(id: id, session).name ?? session.user
            if !reads {
                guard let sent = request.headers[Self.csrfHeader], equalInConstantTime(sent, session.csrfToken) else {
                    logger.warning("api: refused \(what) for \(name): no or a wrong CSRF token")
                    return APIServer.errorResponse(
                        MartletError(.permissionDenied, "this request needs the session's CSRF token", hint: "send the csrfToken from POST /v1/login as X-CSRF-Token"))
                }
            }
            if path == "/v1/logout" && request.method == .post {
                sessions.close(id)
                logger.notice("api: \(name) logged out")
                var response = Response(status: .noContent)
                response.headers[.setCookie] = Self.sessionCookie("", maxAge: 0)
                return response
            }
            // After the logout: a read-only login may end itself.
            if let token = session.token, token.readOnly && !reads {
                logger.warning("api: refused \(what) for the session of read-only token '\(token.name)'")
                return APIServer.errorResponse(
                    MartletError(.permissionDenied, "this login (token '\(token.name)') is read-only; \(request.method) needs a full token or a password login"))
            }
            who = name
        case .none:
            return refuse(what, "no credentials")
        }
        let response = try await next(request, context)
        if !reads {
            logger.notice("api: \(what) by \(who): \(response.status.code)")
        }
        return response
    }

    /// Who sent a request, by its credentials alone (no method or CSRF rules applied).
    enum Caller {
        case token(APIToken)
        case session(id: String, SessionStore.Session)
        /// An Authorization header that names no live token.
        case unknownToken
        case none

        /// Who it is, for the journal; nil without valid credentials.
        var name: String? {
            switch self {
            case .token(let token): "token '\(token.name)'"
            case .session(_, let session):
                session.token.map { "token '\($0.name)' (web login)" } ?? "user '\(session.user)'"
            case .unknownToken, .none: nil
            }
        }

        /// Whether it may change things (type on a console): not a read-only token.
        var mayChange: Bool {
            switch self {
            case .token(let token): !token.readOnly
            case .session(_, let session): session.token?.readOnly != true
            case .unknownToken, .none: false
            }
        }
    }

    /// The request's token (the Authorization header wins) or live session.
    func caller(_ request: Request) -> Caller {
        if let header = request.headers[.authorization] {
            guard header.hasPrefix("Bearer "), let token = tokens.authenticate(String(header.dropFirst("Bearer ".count))) else {
                return .unknownToken
            }
            return .token(token)
        }
        if let id = Self.cookie(SessionStore.cookieName, in: request), let session = sessions.session(id) {
            // A token's session lives only as long as the token: a revoke ends it at once.
            if let token = session.token, tokens.live(sha256: token.sha256) == nil {
                sessions.close(id)
                return .unknownToken
            }
            return .session(id: id, session)
        }
        return .none
    }

    /// `POST /v1/login` with `{"user", "password"}`: a session cookie and the CSRF token, or
    /// 401 after a pause.
    func login(_ request: Request, _ context: Context) async throws -> Response {
        guard request.method == .post else {
            var response = APIServer.errorResponse(MartletError(.invalidInput, "\(request.method) is not allowed on /v1/login", hint: "use POST"))
            response.status = .methodNotAllowed
            response.headers[.allow] = "POST"
            return response
        }
        let body = try await APIServer.decode(LoginRequest.self, request, context)
        let user: String
        var token: APIToken?
        if let secret = body.token {
            guard let known = tokens.authenticate(secret) else {
                return try await failedLogin("with an unknown or revoked token", "that API token is not valid")
            }
            user = known.name
            token = known
        } else {
            guard let name = body.user, let password = body.password else {
                throw HTTPError(.badRequest, message: "a login needs 'user' and 'password', or 'token'")
            }
            // PAM blocks (and may sleep on a failure itself): off the event loop.
            let pam = self.pam
            var accepted = false
            if loginUsers.contains(name) {
                accepted = try await APIServer.workers.runIfActive { pam.authenticate(user: name, password: password) }
            }
            guard accepted else { return try await failedLogin("for user \(quoted(name))", "wrong user name or password") }
            user = name
        }
        let (id, session) = sessions.open(user: user, token: token)
        logger.notice("api: \(Caller.session(id: id, session).name ?? user) logged in")
        var response = APIServer.json(
            LoginReply(user: user, csrfToken: session.csrfToken, readOnly: token?.readOnly ?? false), status: .ok)
        response.headers[.setCookie] = Self.sessionCookie(id, maxAge: Int(sessions.lifetime))
        return response
    }

    /// A refused login: logged, and answered 401 only after a pause.
    func failedLogin(_ what: String, _ message: String) async throws -> Response {
        logger.warning("api: failed login \(what)")
        try await Task.sleep(for: failedLoginPause)
        var response = APIServer.errorResponse(MartletError(.permissionDenied, message))
        response.status = .unauthorized
        return response
    }

    func refuse(_ what: String, _ reason: String) -> Response {
        logger.warning("api: refused \(what): \(reason)")
        var response = APIServer.errorResponse(
            MartletError(
                .permissionDenied, "this request needs a valid API token or a login",
                hint: "send 'Authorization: Bearer TOKEN' (martlet api token create NAME), or log in with POST /v1/login"))
        response.status = .unauthorized
        response.headers[.wwwAuthenticate] = "Bearer realm=\"martlet\""
        return response
    }

    static func sessionCookie(_ id: String, maxAge: Int) -> String {
        "\(SessionStore.cookieName)=\(id); Path=/; Max-Age=\(maxAge); HttpOnly; Secure; SameSite=Strict"
    }

    /// The value of cookie `name` in the request's Cookie header.
    static func cookie(_ name: String, in request: Request) -> String? {
        for header in request.headers[values: .cookie] {
            for pair in header.split(separator: ";") {
                let parts = pair.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
                if parts.count == 2, parts[0] == name { return String(parts[1]) }
            }
        }
        return nil
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths.
func equalInConstantTime(_ a: String, _ b: String) -> Bool {
    let left = Array(a.utf8), right = Array(b.utf8)
    guard left.count == right.count else { return false }
    var difference: UInt8 = 0
    for index in left.indices { difference |= left[index] ^ right[index] }
    return difference == 0
}

/// Headers that keep a browser strict with everything the HTTPS side serves: scripts and
/// styles only from the host itself, no framing, no MIME sniffing, HTTPS only from now on.
struct BrowserHeaders: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var response = try await next(request, context)
        response.headers[.contentSecurityPolicy] = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        response.headers[.xContentTypeOptions] = "nosniff"
        response.headers[.strictTransportSecurity] = "max-age=31536000"
        response.headers[.cacheControl] = "no-store"
        // Names without a constant in HTTPTypes; both are valid tokens, so init never fails.
        response.headers[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        response.headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        return response
    }
}
