import Foundation
import Hummingbird
import HummingbirdTLS
import HummingbirdWebSocket
import NIOSSL
import Logging
import MartletCore
import MartletSystem
import MartletValidation
import NIOPosix

/// The REST API (`martlet api serve`): the operations of `VMHost` over HTTP/JSON on a unix
/// socket for local tools (root only, no credentials), and over HTTPS on the network for
/// scripts and the browser, where every request needs a token. Documented in openapi.yaml
/// next to this file.
public struct APIServer: Sendable {
    public let host: VMHost
    public let socketPath: String
    public let https: HTTPSListener?
    public let logger: Logger

    /// The network side: TLS with `certificate`, requests authenticated against `tokens`.
    public struct HTTPSListener: Sendable {
        public var address: String
        public var port: Int
        public var certificate: APICertificate
        public var tokens: APITokenStore
        /// The web UI's static files, served without a token (they hold no data; every call
        /// the UI makes needs one).
        public var webRoot: String?
        /// People's logins: PAM, and the host accounts allowed.
        public var pam: PAMAuthenticator
        public var loginUsers: [String]
        public var sessions = SessionStore()
        /// xterm.js's modules for the console page (`WebTerminal`).
        public var terminalLibrary = WebTerminal.defaultLibrary

        public init(
            address: String, port: Int, certificate: APICertificate, tokens: APITokenStore, webRoot: String? = nil,
            pam: PAMAuthenticator = PAMAuthenticator(), loginUsers: [String] = ["root"]
        ) {
            self.address = address
            self.port = port
            self.certificate = certificate
            self.tokens = tokens
            self.webRoot = webRoot
            self.pam = pam
            self.loginUsers = loginUsers
        }
    }

    public init(host: VMHost, socketPath: String, https: HTTPSListener? = nil, logger: Logger) {
        self.host = host
        self.socketPath = socketPath
        self.https = https
        self.logger = logger
    }

    // The request bodies live in MartletHostModel (`APIBody`), free of the HTTP stack, so
    // martlet-fuzz decodes and checks them exactly as these routes do.
    public typealias VMRequest = APIBody.VMRequest
    public typealias VMChange = APIBody.VMChange
    public typealias VolumeRequest = APIBody.VolumeRequest
    public typealias ResizeRequest = APIBody.ResizeRequest

    public struct PoolDetail: Codable, Sendable {
        public var pool: PoolStatus
        public var volumes: [VolumeInfo]
    }

    public struct ErrorBody: Codable, Sendable {
        public struct Detail: Codable, Sendable {
            public var code: String
            public var message: String
            public var hint: String?
        }
        public var error: Detail
    }

    /// The API socket's mode: root only, as whoever can connect manages every VM.
    public static let socketMode: mode_t = 0o600

    /// Serves until the task is cancelled or the process gets SIGTERM/SIGINT.
    public func run() async throws {
        try FileManager.default.createDirectory(
            atPath: (socketPath as NSString).deletingLastPathComponent,
            withIntermediateDirectories: true)
        do {
            try UnixSocket.removeStale(socketPath)
        } catch let error as SystemError {
            throw MartletError(
                .refused, "API socket '\(socketPath)': \(SystemError.text(error.errno))",
                hint: error.errno == EADDRINUSE
                    ? "another API server is listening there; stop it first"
                    : "that path holds something that is not a socket; choose another --socket")
        }
        // The HTTP server's bind creates the socket: this umask keeps it owner-only from the
        // first moment whatever the caller's umask was (whoever reaches it manages every
        // VM); once bound its mode is set to exactly `socketMode` and the caller's umask is
        // back, so the run directories requests create stay reachable by the VMM's user.
        let callersUmask = umask(0o077)
        let socketPath = self.socketPath
        let logger = self.logger
        let app = Application(
            router: router(),
            configuration: .init(
                address: .unixDomainSocket(path: socketPath), serverName: "martlet-api"),
            onServerRunning: { _ in
                if chmod(socketPath, APIServer.socketMode) != 0 {
                    logger.error("chmod \(socketPath) failed: \(SystemError.text(errno))")
                }
                umask(callersUmask)
            },
            logger: logger)
        guard let https else {
            try await app.runService()
            return
        }
        // The HTTPS listener failing (a bad certificate, its port taken) leaves the unix
        // socket serving: local tools and the VMs' management keep working while the error
        // is in the journal, as a proxy in front of a daemon would fail alone.
        let secure: (any ApplicationProtocol)?
        do {
            secure = try httpsApplication(https)
        } catch {
            logger.error("HTTPS listener not started, the unix socket serves alone: \(error)")
            secure = nil
        }
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await app.runService()
                return true
            }
            if let secure {
                group.addTask {
                    do {
                        try await secure.runService()
                    } catch {
                        logger.error("HTTPS listener stopped, the unix socket serves alone: \(error)")
                    }
                    return false
                }
            }
            // Until the socket's server ends (a signal ends both).
            while let socketEnded = try await group.next() {
                if socketEnded { break }
            }
            group.cancelAll()
        }
    }

    /// The HTTPS listener: the same routes behind token authentication.
    func httpsApplication(_ https: HTTPSListener) throws -> some ApplicationProtocol {
        let tls: TLSConfiguration
        do {
            tls = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(https.certificate.certificatePath).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: https.certificate.keyPath, format: .pem)))
        } catch {
            throw MartletError(
                .invalidInput,
                "the API's certificate '\(https.certificate.certificatePath)' or key '\(https.certificate.keyPath)' cannot be used: \(error)",
                hint: "remove both to have a new self-signed pair made at the next start")
        }
        let authentication = Authentication(
            tokens: https.tokens, sessions: https.sessions, pam: https.pam, loginUsers: https.loginUsers, logger: logger)
        let console = ConsoleWebSocket(host: host, authentication: authentication, logger: logger)
        return Application(
            router: router(authentication: authentication, webRoot: https.webRoot, terminalLibrary: https.terminalLibrary),
            server: try .tls(.http1WebSocketUpgrade(webSocketRouter: console.router()), tlsConfiguration: tls),
            configuration: .init(address: .hostname(https.address, port: https.port), serverName: "martlet-api"),
            logger: logger)
    }

    /// The API's routes; behind `authentication` when given (the HTTPS side), with the web
    /// UI's files from `webRoot` and xterm.js from `terminalLibrary` in front of it.
    func router(
        authentication: Authentication? = nil, webRoot: String? = nil, terminalLibrary: String = WebTerminal.defaultLibrary
    ) -> Router<BasicRequestContext> {
        let router = Router()
        // Before the routes: Hummingbird builds each route's responder with the middleware
        // added so far. The files come first (a path that is no file falls through).
        if let authentication {
            router.add(middleware: BrowserHeaders())
            if let webRoot {
                router.add(middleware: FileMiddleware(webRoot, searchForIndexHtml: true, threadPool: Self.workers, logger: logger))
            }
            router.add(middleware: authentication)
        }
        if webRoot != nil {
            Self.addTerminalRoutes(router, library: terminalLibrary)
        }
        let host = self.host
        router.get("/v1/host") { _, _ in try await Self.respond { try HostSummary.current(host: host) } }
        router.get("/v1/host/install-log") { _, _ in
            try await Self.offload { try Self.installLog(host.paths.installLog) }
        }
        router.get("/v1/vms") { request, _ in
            if request.headers[values: .accept].contains(where: { $0.contains("text/event-stream") }) {
                return Self.statusEvents(host: host)
            }
            return try await Self.respond { try host.statuses() }
        }
        router.post("/v1/vms") { request, context in
            let body = try await Self.decode(VMRequest.self, request, context)
            return try await Self.respond(status: .created) { () -> VMStatus in
                guard let name = body.name else {
                    throw MartletError(.invalidInput, "the request has no 'name'")
                }
                return try host.create(try body.definition(name: name))
            }
        }
        router.get("/v1/vms/:name") { _, context in
            let name = try Self.name(context, "name")
            return try await Self.respond { try host.status(name) }
        }
        router.put("/v1/vms/:name") { request, context in
            let name = try Self.name(context, "name")
            let body = try await Self.decode(VMRequest.self, request, context)
            return try await Self.respond { () -> VMStatus in
                try host.replace(try body.definition(name: name))
                return try host.status(name)
            }
        }
        router.patch("/v1/vms/:name") { request, context in
            let name = try Self.name(context, "name")
            let change = try await Self.decode(VMChange.self, request, context)
            return try await Self.respond { () -> VMStatus in
                try host.replace(try change.applied(to: try host.definition(name)))
                return try host.status(name)
            }
        }
        router.delete("/v1/vms/:name") { request, context in
            let name = try Self.name(context, "name")
            let volumes = request.uri.queryParameters.get("volumes") == "true"
            return try await Self.respond { () -> VMStatus? in
                try host.delete(name, volumes: volumes)
                return nil
            }
        }
        router.post("/v1/vms/:name/start") { _, context in
            let name = try Self.name(context, "name")
            return try await Self.respond { try host.start(name) }
        }
        router.post("/v1/vms/:name/stop") { request, context in
            let name = try Self.name(context, "name")
            let grace = request.uri.queryParameters.get("grace").flatMap(Double.init) ?? 0
            return try await Self.respond { try host.stop(name, grace: grace) }
        }
        router.post("/v1/vms/:name/restart") { _, context in
            let name = try Self.name(context, "name")
            return try await Self.respond { () -> VMStatus in
                if try host.isRunning(name) { _ = try host.stop(name) }
                return try host.start(name)
            }
        }
        router.get("/v1/vms/:name/console") { _, context in
            let name = try Self.name(context, "name")
            return try await Self.offload { () -> Response in
                _ = try host.definition(name)
                let data =
                    FileManager.default.contents(atPath: host.paths.consoleLog(name)) ?? Data()
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(bytes: data.suffix(65536))))
            }
        }
        // What a console WebSocket request that was not upgraded gets: why (HTTPS), or where
        // the console is (the unix socket serves no WebSocket).
        let console = authentication.map { ConsoleWebSocket(host: host, authentication: $0, logger: logger) }
        router.get(RouterPath(ConsoleWebSocket.path)) { request, context in
            let name = try Self.name(context, "name")
            guard let console else {
                return Self.errorResponse(
                    MartletError(
                        .invalidInput, "the console WebSocket is served on the HTTPS listener only",
                        hint: "on this host, use 'martlet vm console \(name)'"))
            }
            return try await console.refusal(request, name: name)
        }
        router.get("/v1/pools") { _, _ in
            try await Self.respond { try host.pools().map { try $0.status() } }
        }
        router.get("/v1/pools/:pool") { _, context in
            let name = try Self.name(context, "pool")
            return try await Self.respond { () -> PoolDetail in
                let pool = try host.pool(name)
                return PoolDetail(pool: try pool.status(), volumes: try pool.volumes())
            }
        }
        router.get("/v1/pools/:pool/volumes") { _, context in
            let name = try Self.name(context, "pool")
            return try await Self.respond { try host.pool(name).volumes() }
        }
        router.post("/v1/pools/:pool/volumes") { request, context in
            let name = try Self.name(context, "pool")
            let body = try await Self.decode(VolumeRequest.self, request, context)
            return try await Self.respond(status: .created) { () -> VolumeInfo in
                let pool = try host.pool(name)
                if let image = body.image {
                    return try pool.importVolume(
                        body.name, from: image, format: body.format, sha256: body.sha256)
                }
                return try pool.createVolume(body.name, size: try body.emptyVolumeSize())
            }
        }
        router.get("/v1/pools/:pool/volumes/:volume") { _, context in
            let pool = try Self.name(context, "pool")
            let volume = try Self.name(context, "volume")
            return try await Self.respond { try host.pool(pool).volume(volume) }
        }
        router.put("/v1/pools/:pool/volumes/:volume") { request, context in
            let pool = try Self.name(context, "pool")
            let volume = try Self.name(context, "volume")
            let body = try await Self.decode(ResizeRequest.self, request, context)
            return try await Self.respond { () -> VolumeInfo in
                return try host.resizeVolume(pool: pool, volume: volume, size: try body.newSize())
            }
        }
        router.put("/v1/pools/:pool/volumes/:volume/content") { request, context in
            let pool = try Self.name(context, "pool")
            let volume = try Self.name(context, "volume")
            return try await Self.upload(request, host: host, pool: pool, volume: volume)
        }
        router.delete("/v1/pools/:pool/volumes/:volume") { _, context in
            let pool = try Self.name(context, "pool")
            let volume = try Self.name(context, "volume")
            return try await Self.respond { () -> VolumeInfo? in
                try host.deleteVolume(pool: pool, volume: volume)
                return nil
            }
        }
        Self.refuseOtherMethods(router)
        return router
    }

    /// `/xterm/xterm.js` and `/xterm/xterm.css` for the console page, without credentials like
    /// the UI's other files: two fixed names, so no request path reaches the file system.
    static func addTerminalRoutes(_ router: Router<BasicRequestContext>, library: String) {
        let script = Result { try WebTerminal.script(library: library) }
        router.get("/xterm/xterm.js") { _, _ in
            switch script {
            case .success(let text):
                return Response(
                    status: .ok, headers: [.contentType: "text/javascript; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(string: text)))
            case .failure(let error):
                return errorResponse(error as? MartletError ?? MartletError(.failed, "\(error)"))
            }
        }
        router.get("/xterm/xterm.css") { _, _ in
            try await offload {
                let path = "\(library)/xterm.css"
                guard let data = FileManager.default.contents(atPath: path) else {
                    return errorResponse(MartletError(.missingDependency, "no '\(path)'", hint: "install Debian's node-xterm"))
                }
                return Response(status: .ok, headers: [.contentType: "text/css; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
            }
        }
    }

    /// The routes and the methods each answers: any other method is 405 with an Allow
    /// header, not a 404 that reads as "no such VM".
    static let routes: [(path: String, methods: [HTTPRequest.Method])] = [
        ("/v1/host", [.get]), ("/v1/host/install-log", [.get]), ("/v1/vms", [.get, .post]), ("/v1/vms/:name", [.get, .put, .patch, .delete]),
        ("/v1/vms/:name/start", [.post]), ("/v1/vms/:name/stop", [.post]),
        ("/v1/vms/:name/restart", [.post]), ("/v1/vms/:name/console", [.get]),
        ("/v1/vms/:name/console/ws", [.get]),
        ("/v1/pools", [.get]), ("/v1/pools/:pool", [.get]), ("/v1/pools/:pool/volumes", [.get, .post]),
        ("/v1/pools/:pool/volumes/:volume", [.get, .put, .delete]),
        ("/v1/pools/:pool/volumes/:volume/content", [.put]),
    ]

    static func refuseOtherMethods(_ router: Router<BasicRequestContext>) {
        let all: [HTTPRequest.Method] = [.get, .head, .post, .put, .delete, .patch, .options]
        for (path, methods) in routes {
            let allowed = methods.map(\.rawValue).joined(separator: ", ")
            for method in all where !methods.contains(method) {
                router.on(RouterPath(path), method: method) { _, _ in
                    var response = errorResponse(
                        MartletError(.invalidInput, "\(method) is not allowed on \(path)", hint: "use \(allowed)"))
                    response.status = .methodNotAllowed
                    response.headers[.allow] = allowed
                    return response
                }
            }
        }
    }

    /// The path parameter `key` (a VM, pool or volume name), refused with 400 before any
    /// work when it is not a valid name: no '/', '..' or anything else a path could use.
    static func name<Context: RequestContext>(_ context: Context, _ key: String) throws -> String {
        let value = try context.parameters.require(key)
        guard Name.isValid(value) else {
            throw HTTPError(.badRequest, message: "\(key): \(quoted(value)) is not a valid name; \(Name.rule())")
        }
        return value
    }

    static func decode<T: Decodable>(
        _ type: T.Type, _ request: Request, _ context: BasicRequestContext
    ) async throws -> T {
        var request = request
        let buffer = try await request.collectBody(upTo: APIBody.maxBytes)
        do {
            return try APIBody.decode(T.self, from: Data(buffer.readableBytesView))
        } catch let error as MartletError {
            throw HTTPError(.badRequest, message: error.message)
        }
    }

    /// The most of the install log `GET /v1/host/install-log` sends: its end, as the end is
    /// where an install that went wrong says why.
    static let installLogLimit = 4 << 20

    /// The installer's log as text (its last `installLogLimit` bytes, after a line saying so);
    /// a host without one gets a 404 that says why there may be none.
    static func installLog(_ path: String) throws -> Response {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw MartletError(
                .notFound, "this host has no install log at \(path)",
                hint: access(path, F_OK) == 0
                    ? "it cannot be read: \(SystemError.text(errno))"
                    : "martlet-installer leaves it there at the end of an install; a host set up another way, or one whose log was removed, has none")
        }
        defer { try? handle.close() }
        let size = try handle.seekToEnd()
        let skipped = size > UInt64(installLogLimit) ? size - UInt64(installLogLimit) : 0
        try handle.seek(toOffset: skipped)
        var text = ByteBuffer()
        if skipped > 0 { text.writeString("[the first \(skipped) bytes of \(path) are left out]\n") }
        text.writeBytes(try handle.readToEnd() ?? Data())
        return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: text))
    }

    /// `PUT /v1/pools/{pool}/volumes/{volume}/content`: a new volume from the request body
    /// (an image, raw or qcow2), streamed into `ImageUpload` a MiB at a time, never held
    /// whole in memory. `format` and `sha256` come as query parameters, as the body is the
    /// image itself.
    static func upload(_ request: Request, host: VMHost, pool: String, volume: String) async throws -> Response {
        guard let text = request.headers[.contentLength], let length = UInt64(text) else {
            var response = errorResponse(
                MartletError(.invalidInput, "an upload needs a Content-Length header", hint: "send the image as the body of a plain PUT (e.g. curl -T FILE)"))
            response.status = .lengthRequired
            return response
        }
        let query = request.uri.queryParameters
        let formatName = query.get("format")
        let format = formatName.flatMap(ImageFormat.init(rawValue:))
        if let name = formatName, format == nil {
            return errorResponse(MartletError(.invalidInput, "format: '\(name)' is not raw or qcow2", hint: "leave it out to detect the format"))
        }
        do {
            // Checked before the body is taken, not after it.
            let sha256 = try query.get("sha256").map(VolumeImport.checkedDigest)
            let upload = try await workers.runIfActive {
                try ImageUpload(into: host.pool(pool), volume: volume, length: length)
            }
            // Writes of at least a MiB each, on the blocking pool, as the body arrives.
            var batch = ByteBuffer()
            for try await chunk in request.body {
                batch.writeImmutableBuffer(chunk)
                if batch.readableBytes >= VolumeImport.chunkSize {
                    let full = batch
                    try await workers.runIfActive { try full.withUnsafeReadableBytes { try upload.append($0) } }
                    batch.clear()
                }
            }
            let rest = batch
            return try await respond(status: .created) {
                try rest.withUnsafeReadableBytes { try upload.append($0) }
                return try upload.finish(format: format, sha256: sha256)
            }
        } catch let error as MartletError {
            return errorResponse(error)
        }
    }

    /// The threads blocking host work runs on (subprocesses, waiting for a VM to come up):
    /// a fixed pool off the concurrency pool, so a burst of requests queues instead of
    /// starting a thread each.
    static let workers: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 8)
        pool.start()
        return pool
    }()

    /// Runs blocking host work on `workers` and turns a `MartletError` into a JSON error
    /// response.
    static func offload(_ work: @escaping @Sendable () throws -> Response) async throws -> Response
    {
        try await workers.runIfActive {
            do {
                return try work()
            } catch let error as MartletError {
                return errorResponse(error)
            }
        }
    }

    static func respond<T: Encodable>(
        status: HTTPResponse.Status = .ok, _ work: @escaping @Sendable () throws -> T
    ) async throws -> Response {
        try await offload {
            let value = try work()
            if let optional = value as? OptionalMarker, optional.isNone {
                return Response(status: .noContent)
            }
            return json(value, status: status)
        }
    }

    /// `GET /v1/vms` with `Accept: text/event-stream`: the VM list as server-sent events, one
    /// `data:` line of the same JSON as a plain GET now and whenever it changes (looked at
    /// every second), a comment line every 15 s while nothing changes. Ends when the client
    /// goes away (its write fails) or the list cannot be read (an `error` event).
    static func statusEvents(host: VMHost) -> Response {
        Response(
            status: .ok, headers: [.contentType: "text/event-stream"],
            body: ResponseBody { writer in
                var last = Data()
                var quiet = 0
                while !Task.isCancelled {
                    let data: Data
                    do {
                        data = jsonData(try await workers.runIfActive { try host.statuses() })
                    } catch let error as MartletError {
                        let body = ErrorBody(error: .init(code: error.code.rawValue, message: error.message, hint: error.hint))
                        try await writer.write(ByteBuffer(string: "event: error\ndata: \(String(decoding: jsonData(body), as: UTF8.self))\n\n"))
                        break
                    }
                    if data != last {
                        try await writer.write(ByteBuffer(string: "data: \(String(decoding: data, as: UTF8.self))\n\n"))
                        last = data
                        quiet = 0
                    } else if quiet >= 15 {
                        // Keeps proxies and the browser from taking a quiet list for a dead one.
                        try await writer.write(ByteBuffer(string: ": still here\n\n"))
                        quiet = 0
                    }
                    quiet += 1
                    try await Task.sleep(for: .seconds(1))
                }
                try await writer.finish(nil)
            })
    }

    /// The API's JSON for `value`: sorted keys, slashes as they are.
    static func jsonData<T: Encodable>(_ value: T) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)) ?? Data("{}".utf8)
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status) -> Response {
        let data = jsonData(value)
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func errorResponse(_ error: MartletError) -> Response {
        let status: HTTPResponse.Status =
            switch error.code {
            case .invalidInput: .badRequest
            case .notFound: .notFound
            case .refused: .conflict
            case .permissionDenied: .forbidden
            case .verificationFailed: .unprocessableContent
            case .missingDependency, .unavailable: .notImplemented
            default: .internalServerError
            }
        return json(
            ErrorBody(
                error: .init(code: error.code.rawValue, message: error.message, hint: error.hint)),
            status: status)
    }
}

/// Lets `respond` answer 204 No Content for operations that return nothing.
protocol OptionalMarker { var isNone: Bool { get } }
extension Optional: OptionalMarker { var isNone: Bool { self == nil } }
