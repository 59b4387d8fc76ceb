import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import MartletCore
import MartletSystem
import NIOSSL
import Synchronization
import Testing

@testable import MartletHost

/// The VM console over a WebSocket on the HTTPS listener (`/v1/vms/{name}/console/ws`),
/// against `martlet api serve` on a loopback port and the tiny test guest with `test=echo`
/// (it prints its banner, reads one line from its UART, prints "echo: LINE" and powers off).
@Suite(.serialized, .timeLimit(.minutes(30))) struct ConsoleWebSocketTests {
    /// What one viewer received, as its socket delivered it.
    final class Screen: Sendable {
        let bytes = Mutex<[UInt8]>([])
        var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
    }

    /// A running API with HTTPS on a free loopback port, a full and a read-only token, and
    /// VM `name` (the test guest, `test=echo`) started.
    struct Setup {
        let fixture: HostFixture
        let api: APIProcess
        let port: Int
        let adminToken: String
        let readerToken: String
        let tls: TLSConfiguration

        init(label: String, vm name: String) throws {
            let guest = try TestSupport.guest.get()
            fixture = try HostFixture(label: label)
            port = try HTTPSAPITests.freePort()
            try "[https]\naddress = \"127.0.0.1\"\nport = \(port)\nlogin-users = [\"webadmin\"]\n".write(
                toFile: fixture.paths.apiConfiguration, atomically: true, encoding: .utf8)
            let pam = try HTTPSAPITests.pamStack(in: fixture.root, user: "webadmin", password: "correct horse")
            let admin = try HTTPSAPITests.martlet(fixture, ["api", "token", "create", "admin"])
            let reader = try HTTPSAPITests.martlet(fixture, ["api", "token", "create", "reader", "--read-only"])
            try #require(admin.status == 0 && reader.status == 0, "\(admin.stderr)\(reader.stderr)")
            adminToken = admin.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            readerToken = reader.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            api = try APIProcess(fixture: fixture, extraEnvironment: ["MARTLET_PAM_DIR": pam])
            let created = try HTTPSAPITests.martlet(
                fixture, ["vm", "create", name, "--kernel", guest, "--cmdline", "test=echo", "--memory", "16MiB"])
            try #require(created.status == 0, "\(created.stderr)")
            let started = try HTTPSAPITests.martlet(fixture, ["vm", "start", name])
            try #require(started.status == 0, "\(started.stderr)")
            // curl checks the server against the certificate the server made itself (here and
            // in HTTPSAPITests); swift-nio-ssl's BoringSSL does not take that self-signed leaf
            // (no CA key usage) as a trust root, so the WebSocket client skips the check.
            let certificate = fixture.paths.tlsDirectory + "/cert.pem"
            let port = self.port
            try #require(
                Poll.until(timeout: 30) {
                    (try? ChildProcess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", certificate, "https://127.0.0.1:\(port)/v1/vms"]).stdout) == "401"
                }, "the HTTPS listener did not answer on port \(port); see \(fixture.root)/api.log")
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.certificateVerification = .none
            self.tls = tls
        }

        var base: String { "127.0.0.1:\(port)" }

        /// A person's session: the `Cookie` header of a login through PAM.
        func sessionCookie() throws -> String {
            try login(#"{"user": "webadmin", "password": "correct horse"}"#).cookie
        }

        /// A login (`body` for POST /v1/login): the session's `Cookie` header and the reply.
        func login(_ body: String) throws -> (cookie: String, csrf: String, readOnly: Bool) {
            let output = try call("POST", "/v1/login", body: body, dumpHeaders: true)
            let line = try #require(output.headers.split(separator: "\r\n").first { $0.lowercased().hasPrefix("set-cookie: ") }, "no session: \(output)")
            let reply = try JSONSerialization.jsonObject(with: Data(output.body.utf8)) as? [String: Any]
            return (
                "Cookie: " + String(line.dropFirst("set-cookie: ".count).prefix { $0 != ";" }),
                try #require(reply?["csrfToken"] as? String), try #require(reply?["readOnly"] as? Bool)
            )
        }

        /// One HTTPS request with curl (checking the server's own certificate).
        func call(
            _ method: String, _ path: String, headers: [String] = [], body: String? = nil, dumpHeaders: Bool = false,
            maxTime: Int = 30
        ) throws -> (status: Int, headers: String, body: String) {
            var arguments = ["curl", "-sS", "-N", "--max-time", "\(maxTime)", "--cacert", fixture.paths.tlsDirectory + "/cert.pem", "-X", method, "-w", "\n%{http_code}"]
            if dumpHeaders { arguments += ["-D", "-"] }
            for header in headers { arguments += ["-H", header] }
            if let body { arguments += ["-H", "Content-Type: application/json", "--data", body] }
            let output = try ChildProcess.run(arguments + ["https://\(base)\(path)"]).stdout
            let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
            var text = lines.dropLast().joined(separator: "\n")
            var head = ""
            if dumpHeaders, let end = text.range(of: "\r\n\r\n") {
                head = String(text[..<end.lowerBound])
                text = String(text[end.upperBound...])
            }
            return (Int(lines.last ?? "") ?? 0, head, text)
        }
        /// What a WebSocket client needs.
        var server: (base: String, tls: TLSConfiguration) { (base, tls) }

        /// The HTTP status of a WebSocket upgrade request (curl: it speaks the handshake but
        /// not the protocol, so only refusals are asked this way).
        func upgradeStatus(_ path: String, headers: [String]) throws -> Int {
            // A 101 leaves curl waiting for the end of a body that never comes: 3 s.
            var arguments = [
                "curl", "-s", "--max-time", "3", "--http1.1", "--cacert", fixture.paths.tlsDirectory + "/cert.pem",
                "-o", "/dev/null", "-w", "%{http_code}", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
                "-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ]
            for header in headers { arguments += ["-H", header] }
            return Int(try ChildProcess.run(arguments + ["https://\(base)\(path)"]).stdout) ?? 0
        }
    }

    /// Watches a console until `until` shows (then closes) or the server closes; types
    /// `keys` once `typeAfter` shows and `ready()` holds. Returns the server's close frame.
    static func watch(
        _ server: (base: String, tls: TLSConfiguration), vm: String, headers: HTTPFields, screen: Screen, until: String,
        typeAfter: String? = nil, keys: String = "", ready: @escaping @Sendable () -> Bool = { true }
    ) async throws -> WebSocketCloseFrame? {
        var configuration = WebSocketClientConfiguration()
        configuration.additionalHeaders = headers
        // An IP address cannot be a TLS server name.
        configuration.sniHostname = "localhost"
        // On a thread of its own: it must answer the server's pings whatever else the test
        // process is doing (DedicatedThreadExecutor says why).
        return try await withTaskExecutorPreference(clientExecutor) {
            try await WebSocketClient.connect(
                url: "wss://\(server.base)/v1/vms/\(vm)/console/ws", configuration: configuration, tlsConfiguration: server.tls,
                logger: Logger(label: "test")
            ) { inbound, outbound, _ in
                var typed = typeAfter == nil
                for try await message in inbound.messages(maxSize: 1 << 20) {
                    if case .binary(let bytes) = message { screen.bytes.withLock { $0 += bytes.readableBytesView } }
                    let text = screen.text
                    if text.contains(until) { return }
                    if !typed, let typeAfter, text.contains(typeAfter) {
                        // Bounded by the caller's deadline.
                        while !ready() { try await Task.sleep(for: .milliseconds(20)) }
                        try await outbound.write(.text(keys))
                        typed = true
                    }
                }
            }
        }
    }

    /// Where the WebSocket clients of these tests run.
    static let clientExecutor = DedicatedThreadExecutor(name: "websocket-clients")

    /// Runs `body`, failing the test after `seconds`. The bounds are generous: under the whole
    /// `make test` (nested QEMU and every suite at once on two cores) a start and a banner
    /// once took more than 30 s; the wait ends as soon as the text arrives.
    static func within<T: Sendable>(_ seconds: Int, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: .seconds(seconds))
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            return try #require(first, "waited \(seconds) s for \(what)")
        }
    }

    @Test func twoViewersSeeTheGuestAndTypedKeysReachIt() async throws {
        let setup = try Setup(label: "ws-console", vm: "ws")
        defer { _ = try? setup.fixture.host.stop("ws") }
        let banner = "martlet test guest: test=echo"
        let server = setup.server, readerToken = setup.readerToken
        let token: HTTPFields = [.authorization: "Bearer \(setup.adminToken)"]

        // A read-only token watches (it gets the replay) but its first key closes its socket:
        // the key never reaches the guest (the echo below has only the typist's line).
        let watcher = Screen()
        let readOnlyClose = try await Self.within(300, "the read-only viewer") {
            try await Self.watch(
                server, vm: "ws", headers: [.authorization: "Bearer \(readerToken)"], screen: watcher,
                until: "never printed", typeAfter: banner, keys: "read-only\n")
        }
        #expect(watcher.text.contains(banner), "the read-only viewer got the replay: \(watcher.text)")
        // The server closes with 1008 (policy violation); under the whole make test on two cores
        // the client once saw 1001 (going away) instead, the server's end of the same close.
        // Either way the socket closed on the key, and the console log below proves the key
        // never reached the guest.
        #expect(
            readOnlyClose?.closeCode == .policyViolation || readOnlyClose?.closeCode == .goingAway,
            "\(String(describing: readOnlyClose))")

        // Two viewers at once: both get the replay, one types a line (once the other has the
        // replay too, which `viewerAttached` marks), both see the answer.
        let typist = Screen(), viewer = Screen()
        let viewerAttached = Screen()
        async let typing = Self.within(300, "the typist's echo") {
            try await Self.watch(
                server, vm: "ws", headers: token, screen: typist, until: "guest done",
                typeAfter: banner, keys: "hello over a websocket\n", ready: { !viewerAttached.bytes.withLock { $0.isEmpty } })
        }
        async let viewing = Self.within(300, "the second viewer's echo") {
            try await Self.watch(server, vm: "ws", headers: token, screen: viewer, until: "guest done", typeAfter: banner, ready: {
                viewerAttached.bytes.withLock { $0 = [1] }
                return true
            })
        }
        let closes = try await (typing, viewing)
        // The close frames, the runner's log and the console log go with a failure. (Both
        // viewers' sockets once closed after the banner without the echo under the whole
        // `make test`: the API's ping timeout, while the clients' tasks were starved; they run
        // on their own thread since.)
        let logs = {
            let paths = setup.fixture.paths
            let runner = (try? String(contentsOfFile: paths.runnerLog("ws"), encoding: .utf8)) ?? "(no runner.log)"
            let console = (try? String(contentsOfFile: paths.consoleLog("ws"), encoding: .utf8)) ?? "(no console.log)"
            return "runner.log:\n\(runner.suffix(4000))\nconsole.log:\n\(console.suffix(2000))"
        }
        for screen in [typist, viewer] {
            #expect(screen.text.contains(banner), "the replay: \(screen.text)")
            #expect(
                screen.text.contains("echo: hello over a websocket\n"),
                "typed keys reached the guest: \(screen.text)\nthe server's close frames: \(String(describing: closes))\n\(logs())")
        }
        let log = try String(contentsOfFile: setup.fixture.paths.consoleLog("ws"), encoding: .utf8)
        #expect(!log.contains("read-only"), "a read-only token's keys reached the guest: \(log)")
    }

    /// The web UI's token login (a page cannot put a token on an EventSource or a
    /// WebSocket): POST /v1/login with a token is a session cookie with that token's rights.
    /// The full token's session changes things (with the CSRF token), follows the live list
    /// and opens the console; the read-only one reads and opens it too, and is refused every
    /// change; a made-up token gets no session; a revoke ends the session at once.
    @Test func aTokenLoginIsASessionWithTheTokensRights() async throws {
        let setup = try Setup(label: "ws-token-login", vm: "ws")
        defer { _ = try? setup.fixture.host.stop("ws") }
        let origin = "Origin: https://\(setup.base)"
        let admin = try setup.login(#"{"token": "\#(setup.adminToken)"}"#)
        let reader = try setup.login(#"{"token": "\#(setup.readerToken)"}"#)
        #expect(!admin.readOnly && reader.readOnly)
        let forged = try setup.call("POST", "/v1/login", body: #"{"token": "martlet_\#(String(repeating: "0", count: 64))"}"#)
        #expect(forged.status == 401 && forged.body.contains("not valid"), "\(forged)")

        let volume = #"{"name": "by-token-login", "size": "1MiB"}"#
        #expect(try setup.call("GET", "/v1/vms", headers: [reader.cookie]).status == 200, "the read-only login reads")
        let refused = try setup.call("POST", "/v1/pools/local/volumes", headers: [reader.cookie, "X-CSRF-Token: \(reader.csrf)"], body: volume)
        #expect(refused.status == 403 && refused.body.contains("read-only"), "\(refused)")
        #expect(try setup.call("POST", "/v1/pools/local/volumes", headers: [admin.cookie], body: volume).status == 403, "no CSRF token")
        #expect(try setup.call("POST", "/v1/pools/local/volumes", headers: [admin.cookie, "X-CSRF-Token: \(admin.csrf)"], body: volume).status == 201)
        // The live list with nothing but the cookie, as an EventSource sends it.
        let events = try setup.call("GET", "/v1/vms", headers: [reader.cookie, "Accept: text/event-stream"], maxTime: 5)
        #expect(events.body.contains(#"data: [{"definition""#) && events.body.contains(#""name":"ws""#), "\(events.body)")

        // The console with the cookie and the page's Origin opens for both (WebSocket clients
        // here send an Origin of their own, so curl asks; that the read-only login's key
        // closes its socket without reaching the guest is WebUITests', in a real browser).
        #expect(try setup.upgradeStatus("/v1/vms/ws/console/ws", headers: [reader.cookie, origin]) == 101)
        #expect(try setup.upgradeStatus("/v1/vms/ws/console/ws", headers: [admin.cookie, origin]) == 101)
        #expect(try setup.upgradeStatus("/v1/vms/ws/console/ws", headers: [admin.cookie, "Origin: https://evil.example"]) == 400)

        // Revoked: the session ends with its token, for the API and the console alike.
        #expect(try HTTPSAPITests.martlet(setup.fixture, ["api", "token", "revoke", "admin"]).status == 0)
        #expect(try setup.call("GET", "/v1/vms", headers: [admin.cookie]).status == 401, "a revoked token's session")
        #expect(try setup.upgradeStatus("/v1/vms/ws/console/ws", headers: [admin.cookie, origin]) == 400)
        #expect(try setup.call("GET", "/v1/vms/ws/console/ws", headers: [admin.cookie, origin]).status == 401)
        let apiLog = try String(contentsOfFile: setup.fixture.root + "/api.log", encoding: .utf8)
        #expect(apiLog.contains("POST /v1/pools/local/volumes by token 'admin' (web login): 201"), "\(apiLog.suffix(3000))")
        #expect(apiLog.contains("failed login with an unknown or revoked token"), "\(apiLog.suffix(3000))")
    }

    @Test func refusedWithoutCredentialsFromAnotherSiteOrForAStoppedVM() async throws {
        let setup = try Setup(label: "ws-refused", vm: "ws")
        defer { _ = try? setup.fixture.host.stop("ws") }
        let path = "/v1/vms/ws/console/ws"
        let token = "Authorization: Bearer \(setup.adminToken)"
        // A refused handshake gets no 101 (the WebSocket layer answers 400 whatever the
        // reason); the reason is in the log. The same credentials and Origin get their 101.
        // A browser sends the session cookie by itself, so with it the Origin must be the page's.
        let cookie = try setup.sessionCookie()
        let refusals: [(path: String, headers: [String], reason: String)] = [
            (path, [], "no valid API token or session cookie"),
            (path, ["Authorization: Bearer martlet_" + String(repeating: "0", count: 64)], "no valid API token or session cookie"),
            (path, [cookie, "Origin: https://evil.example"], "from 'https://evil.example' is refused"),
            (path, [cookie, "Origin: http://\(setup.base)"], "from 'http://\(setup.base)' is refused"),
            (path, [cookie, "Origin: https://\(setup.base)", "Origin: https://evil.example"], "is refused"),
            (path, [cookie], "from no Origin is refused"),
            ("/v1/vms/nothing/console/ws", [token], "no VM 'nothing'"),
        ]
        for refusal in refusals {
            #expect(try setup.upgradeStatus(refusal.path, headers: refusal.headers) == 400, "\(refusal.headers)")
        }
        #expect(try setup.upgradeStatus(path, headers: [cookie, "Origin: https://\(setup.base)"]) == 101, "the page's own Origin")
        #expect(try setup.upgradeStatus(path, headers: [token]) == 101, "a token")
        let log = try String(contentsOfFile: setup.fixture.root + "/api.log", encoding: .utf8)
        for refusal in refusals {
            #expect(log.contains(refusal.reason), "the log says why: \(refusal.reason)\n\(log.suffix(3000))")
        }
        // Without the upgrade headers the route answers with the reason's status.
        func plain(_ path: String, _ headers: [String]) throws -> (status: Int, body: String) {
            var arguments = ["curl", "-s", "--cacert", setup.fixture.paths.tlsDirectory + "/cert.pem", "-w", "\n%{http_code}"]
            for header in headers { arguments += ["-H", header] }
            let lines = try ChildProcess.run(arguments + ["https://\(setup.base)\(path)"]).stdout.split(separator: "\n")
            return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
        }
        #expect(try plain(path, []).status == 401)
        #expect(try plain(path, [cookie, "Origin: https://evil.example"]).status == 403)
        #expect(try plain("/v1/vms/nothing/console/ws", [token]).status == 404)
        let notUpgraded = try plain(path, [token])
        #expect(notUpgraded.status == 400 && notUpgraded.body.contains("is a WebSocket"), "\(notUpgraded)")

        // A token is let in whatever Origin its client sends.
        let screen = Screen()
        let headers: HTTPFields = [.authorization: "Bearer \(setup.adminToken)", .origin: "https://elsewhere.example"]
        let server = setup.server
        _ = try await Self.within(300, "the guest's banner") {
            try await Self.watch(server, vm: "ws", headers: headers, screen: screen, until: "martlet test guest")
        }
        _ = try setup.fixture.host.stop("ws")
        #expect(try plain(path, [token]).status == 409, "a stopped VM has no console")
    }
}
