import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import MartletCore
import MartletValidation
import NIOCore
import NIOPosix

/// A VM's serial console over a WebSocket on the HTTPS listener,
/// `GET /v1/vms/{name}/console/ws`: the web UI's terminal.
///
/// Each viewer is its own client of the runner's `console.sock`, which already serves several
/// consoles at once: it replays the recent output (the end of console.log) to a new one,
/// then copies the guest's live output to every one. The guest's bytes go to the viewer as
/// binary messages; the viewer's text or binary messages go to the guest's UART.
///
/// The same credentials as every other route: a token (`Authorization: Bearer`) for scripts,
/// the session cookie for the page (a browser cannot set headers on a WebSocket). A browser
/// sends the cookie to this host whatever page opened the socket, so with a session cookie an
/// `Origin` other than this host itself (or none) is refused (cross-site WebSocket hijacking). A refused handshake gets no
/// 101 (the WebSocket layer answers 400) and the reason goes to the journal; the same request
/// without the upgrade headers gets the reason's own status (401, 403, 404, 409). A read-only token may watch;
/// the first key it sends closes its socket with 1008 (policy violation).
struct ConsoleWebSocket: Sendable {
    let host: VMHost
    let authentication: Authentication
    let logger: Logger

    /// The route; on the unix socket it only says where the console is.
    static let path = "/v1/vms/:name/console/ws"
    /// The largest message a viewer may send (keys, a paste).
    static let maxMessage = 1 << 16
    /// The largest frame sent to a viewer.
    static let maxFrame = 1 << 14

    /// Who may attach to VM `name`'s console, and whether they may type; a refusal (an error
    /// naming the reason, also logged) otherwise. A refused WebSocket handshake is answered
    /// 400 by the WebSocket layer whatever the reason, so the journal is where the reason is.
    func admit(_ request: Request, name: String) throws -> (who: String, mayType: Bool) {
        do {
            return try check(request, name: name)
        } catch {
            logger.warning("api: refused the console of '\(name)': \((error as? MartletError)?.message ?? "\(error)")")
            throw error
        }
    }

    func check(_ request: Request, name: String) throws -> (who: String, mayType: Bool) {
        let caller = authentication.caller(request)
        guard let who = caller.name else {
            throw MartletError(.permissionDenied, "no valid API token or session cookie")
        }
        // The cookie is what a browser sends by itself, so only a session needs the page's
        // Origin (every one the request carries); a token is never sent by a browser unasked.
        if case .session = caller {
            let expected = "https://\(request.head.authority ?? "")"
            let origins = request.headers[values: .origin]
            guard !origins.isEmpty, origins.allSatisfy({ $0.lowercased() == expected.lowercased() }) else {
                throw MartletError(
                    .permissionDenied,
                    "a console WebSocket from \(origins.isEmpty ? "no Origin" : quoted(origins.joined(separator: ", "))) is refused: only pages of \(expected) may open it",
                    hint: "open the console from this host's own web UI")
            }
        }
        guard try host.isRunning(name) else {
            _ = try host.definition(name)
            throw MartletError(.refused, "VM '\(name)' is not running; its console has nothing to show", hint: "start it first")
        }
        return (who, caller.mayChange)
    }

    /// The WebSocket router: upgrades only what `admit` lets in; anything else falls through
    /// to the HTTP routes, where the same checks answer with their status and reason.
    func router() -> Router<BasicWebSocketRequestContext> {
        let router = Router(context: BasicWebSocketRequestContext.self)
        router.ws(
            RouterPath(Self.path),
            shouldUpgrade: { request, context in
                guard let name = try? APIServer.name(context, "name"),
                    (try? await APIServer.workers.runIfActive { try admit(request, name: name) }) != nil
                else { return .dontUpgrade }
                return .upgrade()
            },
            onUpgrade: { inbound, outbound, context in
                let name = try APIServer.name(context.requestContext, "name")
                let viewer = try await APIServer.workers.runIfActive { try admit(context.request, name: name) }
                try await relay(name: name, viewer: viewer, inbound: inbound, outbound: outbound)
            })
        return router
    }

    /// What the plain HTTP route answers a request that was not upgraded: why.
    func refusal(_ request: Request, name: String) async throws -> Response {
        try await APIServer.offload {
            _ = try admit(request, name: name)
            return APIServer.errorResponse(
                MartletError(
                    .invalidInput, "GET \(request.uri.path) is a WebSocket: the request needs 'Connection: Upgrade' and 'Upgrade: websocket'",
                    hint: "open it with a WebSocket client, e.g. the web UI's console"))
        }
    }

    /// Copies the console socket to the viewer and the viewer's keys to the socket until
    /// either side ends (the VM stops, the viewer closes).
    func relay(
        name: String, viewer: (who: String, mayType: Bool), inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter
    ) async throws {
        let console = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: host.paths.consoleSocket(name)) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        logger.info("api: \(viewer.who) attached to the console of '\(name)'\(viewer.mayType ? "" : " (watching only)")")
        defer { logger.info("api: \(viewer.who) left the console of '\(name)'") }
        try await console.executeThenClose { output, input in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await var chunk in output {
                        // In frames no larger than a WebSocket client's default limit (16 KiB).
                        while let frame = chunk.readSlice(length: min(chunk.readableBytes, Self.maxFrame)), frame.readableBytes > 0 {
                            try await outbound.write(.binary(frame))
                        }
                    }
                    try await outbound.close(.normalClosure, reason: "the console of '\(name)' ended")
                }
                group.addTask {
                    for try await message in inbound.messages(maxSize: Self.maxMessage) {
                        guard viewer.mayType else {
                            try await outbound.close(.policyViolation, reason: "read-only token: this console may be watched, not typed into")
                            return
                        }
                        switch message {
                        case .text(let text): try await input.write(ByteBuffer(string: text))
                        case .binary(let bytes): try await input.write(bytes)
                        }
                    }
                }
                // Whichever side ends first ends the other.
                try await group.next()
                group.cancelAll()
            }
        }
    }
}
