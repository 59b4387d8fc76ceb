import Foundation
import MartletCore
import Hummingbird
import Logging

/// The HTTPS side's gate: every API request (under /v1/) carries `Authorization: Bearer TOKEN` for a token in
/// the store (401 otherwise); a read-only token may only read (403 for any other method).
/// Every request that may change something is written to the journal with the token's name,
/// and so is every refusal.
struct TokenAuthentication: RouterMiddleware {
    typealias Context = BasicRequestContext

    let tokens: APITokenStore
    let logger: Logger

    /// The methods a read-only token may use.
    static let readingMethods: Set<HTTPRequest.Method> = [.get, .head]

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        // Outside /v1/ are only the web UI's files (or a 404): no data, no token. Hummingbird's
        // FileMiddleware answers those when what comes after it says 404.
        guard request.uri.path.hasPrefix("/v1/") || request.uri.path == "/v1" else {
            return try await next(request, context)
        }
        let what = "\(request.method) \(request.uri.path)"
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer "),
            let token = tokens.authenticate(String(header.dropFirst("Bearer ".count)))
        else {
            logger.warning("api: refused \(what): \(request.headers[.authorization] == nil ? "no token" : "unknown or revoked token")")
            var response = APIServer.errorResponse(
                MartletError(.permissionDenied, "this request needs a valid API token", hint: "send 'Authorization: Bearer TOKEN'; martlet api token create NAME makes one"))
            response.status = .unauthorized
            response.headers[.wwwAuthenticate] = "Bearer realm=\"martlet\""
            return response
        }
        let reads = Self.readingMethods.contains(request.method)
        if token.readOnly && !reads {
            logger.warning("api: refused \(what) for read-only token '\(token.name)'")
            return APIServer.errorResponse(
                MartletError(.permissionDenied, "token '\(token.name)' is read-only; \(request.method) needs a full token"))
        }
        let response = try await next(request, context)
        if !reads {
            logger.notice("api: \(what) by token '\(token.name)': \(response.status.code)")
        }
        return response
    }
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
        response.headers[.init("Referrer-Policy")!] = "no-referrer"
        response.headers[.init("X-Frame-Options")!] = "DENY"
        return response
    }
}
