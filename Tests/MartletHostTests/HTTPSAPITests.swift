import Foundation
import MartletCore
import MartletSystem
import Synchronization
import Testing

@testable import MartletHost

/// The API over HTTPS: `martlet api serve` with HTTPS on, on a loopback port, driven by curl
/// that checks the server against the certificate the server made itself. Every path of the
/// OpenAPI document is called without a token, with a revoked one and (where it changes
/// something) with a read-only one; all are refused. Plain HTTP on the port gets no API.
@Suite(.serialized, .timeLimit(.minutes(30))) struct HTTPSAPITests {
    /// A free loopback TCP port: bound to port 0, read back, closed.
    static func freePort() throws -> Int {
        let (fd, port) = try boundLoopbackSocket(listening: false)
        close(fd)
        return port
    }

    /// A TCP socket bound to a free loopback port (and listening, when asked) and that port.
    static func boundLoopbackSocket(listening: Bool) throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && (!listening || listen(fd, 1) == 0) && getsockname(fd, $0, &length) == 0
            }
        }
        let reason = SystemError.text(errno)
        if !bound { close(fd) }
        try #require(bound, "cannot bind a loopback port: \(reason)")
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// The `martlet` CLI with the fixture's environment.
    static func martlet(_ fixture: HostFixture, _ arguments: [String]) throws -> CommandResult {
        try Command(TestSupport.product("martlet"), arguments, environment: fixture.environment).runAllowingFailure()
    }

    /// The (method, path) pairs of openapi.yaml, path parameters filled with names.
    static func documentedOperations() throws -> [(method: String, path: String)] {
        let document = try String(
            contentsOf: TestSupport.repository.appendingPathComponent("Sources/MartletHost/openapi.yaml"), encoding: .utf8)
        var operations: [(String, String)] = []
        var path: String?
        for line in document.split(separator: "\n") {
            if line.hasPrefix("  /") && line.hasSuffix(":") {
                path = String(line.dropFirst(2).dropLast())
                    .replacingOccurrences(of: "{name}", with: "some-vm")
                    .replacingOccurrences(of: "{pool}", with: "local")
                    .replacingOccurrences(of: "{volume}", with: "some-volume")
            } else if let current = path, line.hasPrefix("    "), !line.hasPrefix("     "),
                let method = ["get", "put", "post", "delete", "patch"].first(where: { line == "    \($0):" })
            {
                operations.append((method.uppercased(), current))
            } else if !line.hasPrefix(" ") {
                path = nil
            }
        }
        return operations
    }

    @Test func everyOperationNeedsAValidTokenAndReadOnlyTokensOnlyRead() throws {
        let fixture = try HostFixture(label: "https-api")
        let port = try Self.freePort()
        try "[https]\naddress = \"127.0.0.1\"\nport = \(port)\n".write(
            toFile: fixture.paths.apiConfiguration, atomically: true, encoding: .utf8)
        let admin = try Self.martlet(fixture, ["api", "token", "create", "admin"])
        let reader = try Self.martlet(fixture, ["api", "token", "create", "reader", "--read-only", "--json"])
        let revoked = try Self.martlet(fixture, ["api", "token", "create", "gone"])
        try #require(admin.status == 0 && reader.status == 0 && revoked.status == 0, "\(admin.stderr)\(reader.stderr)\(revoked.stderr)")
        #expect(try Self.martlet(fixture, ["api", "token", "revoke", "gone"]).status == 0)
        #expect(try Self.martlet(fixture, ["api", "token", "create", "admin"]).status == MartletError.Code.refused.exitStatus, "a second token of one name is refused")
        let adminToken = admin.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let readerJSON = try JSONSerialization.jsonObject(with: Data(reader.stdoutText.utf8)) as? [String: Any]
        let readerToken = try #require(readerJSON?["token"] as? String)
        #expect(readerJSON?["readOnly"] as? Bool == true)
        let revokedToken = revoked.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let list = try Self.martlet(fixture, ["api", "token", "list"]).stdoutText
        #expect(list.contains("admin") && list.contains("reader") && !list.contains("gone"), "\(list)")
        #expect(!list.contains(adminToken) && !list.contains(readerToken), "the list never shows a secret")
        let stored = try String(contentsOfFile: fixture.paths.apiTokens, encoding: .utf8)
        #expect(!stored.contains(adminToken) && !stored.contains(readerToken), "only hashes are stored")
        #expect(try FileManager.default.attributesOfItem(atPath: fixture.paths.apiTokens)[.posixPermissions] as? Int == 0o600)

        let api = try APIProcess(fixture: fixture)
        let certificate = fixture.paths.tlsDirectory + "/cert.pem"
        let base = "https://127.0.0.1:\(port)"
        // curl verifies the server against the certificate the server made (its names hold
        // 127.0.0.1), so a wrong or missing certificate fails here, not silently.
        func call(_ method: String, _ path: String, token: String?, body: String? = nil) throws -> (status: Int, body: String) {
            var arguments = ["curl", "-sS", "--max-time", "30", "--cacert", certificate, "-X", method, "-w", "\n%{http_code}"]
            if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
            if let body { arguments += ["-H", "Content-Type: application/json", "--data", body] }
            let output = try ChildProcess.run(arguments + [base + path])
            let lines = output.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
        }
        #expect(
            Poll.until(timeout: 30) { (try? call("GET", "/v1/vms", token: adminToken).status) == 200 },
            "the HTTPS listener did not answer on port \(port); see \(fixture.root)/api.log")

        // The certificate: modes, and the fingerprint three ways (openssl, the CLI, the banner).
        #expect(try FileManager.default.attributesOfItem(atPath: fixture.paths.tlsDirectory + "/key.pem")[.posixPermissions] as? Int == 0o600)
        #expect(try FileManager.default.attributesOfItem(atPath: certificate)[.posixPermissions] as? Int == 0o644)
        let openssl = try ChildProcess.run(["openssl", "x509", "-in", certificate, "-noout", "-fingerprint", "-sha256"]).stdout
        let expected = try #require(openssl.split(separator: "=").last).trimmingCharacters(in: .whitespacesAndNewlines)
        let printed = try Self.martlet(fixture, ["api", "fingerprint"]).stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(printed == expected, "martlet api fingerprint: \(printed); openssl: \(expected)")
        let banner = try String(contentsOfFile: fixture.paths.apiIssueFile, encoding: .utf8)
        #expect(banner.contains(expected) && banner.contains(":\(port)/"), "\(banner)")
        let key = try ChildProcess.run(["openssl", "x509", "-in", certificate, "-noout", "-text"]).stdout
        #expect(key.contains("prime256v1") && key.contains("IP Address:127.0.0.1"), "\(key)")

        // Every documented operation: refused without a token and with a revoked one; a
        // read-only token is refused on everything but GET.
        let operations = try Self.documentedOperations()
        try #require(operations.count >= 15, "openapi.yaml lists \(operations.count) operations")
        // The parser sees every kind of entry: a PATCH, a deeper path, a path under /v1/host.
        for (method, path) in [("PATCH", "/v1/vms/some-vm"), ("PUT", "/v1/pools/local/volumes/some-volume/content"), ("GET", "/v1/host/install-log")] {
            #expect(operations.contains { $0 == (method, path) }, "\(method) \(path) is not among the operations walked")
        }
        // /v1/login is the one operation for people without credentials yet.
        for (method, path) in operations where path != "/v1/login" {
            let body = method == "GET" || method == "DELETE" ? nil : "{}"
            #expect(try call(method, path, token: nil, body: body).status == 401, "\(method) \(path) without a token")
            #expect(try call(method, path, token: revokedToken, body: body).status == 401, "\(method) \(path) with a revoked token")
            #expect(try call(method, path, token: "martlet_" + String(repeating: "0", count: 64), body: body).status == 401, "\(method) \(path) with a made-up token")
            if method != "GET" {
                #expect(try call(method, path, token: readerToken, body: body).status == 403, "\(method) \(path) with a read-only token")
            }
        }
        #expect(try call("GET", "/v1/pools", token: readerToken).status == 200, "a read-only token reads")
        let created = try call("POST", "/v1/pools/local/volumes", token: adminToken, body: #"{"name": "over-https", "size": "1MiB"}"#)
        #expect(created.status == 201, "\(created.body)")
        // Revoking takes effect at once, without a restart.
        #expect(try Self.martlet(fixture, ["api", "token", "revoke", "reader"]).status == 0)
        #expect(try call("GET", "/v1/pools", token: readerToken).status == 401, "a token revoked while the server runs")

        // Plain HTTP on the HTTPS port is no API: no HTTP status comes back.
        let plain = try ChildProcess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/v1/vms"])
        #expect(plain.stdout == "000", "plain HTTP got status \(plain.stdout)")
        // The unix socket still serves local tools without a token.
        #expect(try api.request("GET", "/v1/pools").status == 200)

        // Who did what is in the log (the journal on a host).
        let log = try String(contentsOfFile: fixture.root + "/api.log", encoding: .utf8)
        #expect(log.contains("POST /v1/pools/local/volumes by token 'admin': 201"), "\(log.suffix(2000))")
        #expect(log.contains("refused POST /v1/vms for read-only token 'reader'"), "\(log.suffix(2000))")
    }

    /// A PAM stack of the test's own (pam_start_confdir) whose auth step is pam_exec with a
    /// script that knows one user's password: real PAM, without touching the machine's
    /// accounts. Returns the folder to pass as MARTLET_PAM_DIR.
    static func pamStack(in root: String, user: String, password: String) throws -> String {
        let directory = root + "/pam.d"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let check = root + "/check-password"
        // pam_exec hands the password on stdin, NUL-terminated.
        try """
            #!/bin/sh
            password=$(tr -d '\\000')
            [ "$PAM_USER" = "\(user)" ] && [ "$password" = "\(password)" ]

            """.write(toFile: check, atomically: true, encoding: .utf8)
        chmod(check, 0o755)
        try """
            auth required pam_exec.so expose_authtok quiet \(check)
            account required pam_permit.so

            """.write(toFile: directory + "/martlet-api", atomically: true, encoding: .utf8)
        return directory
    }

    @Test func peopleLogInThroughPAMAndNeedTheCSRFTokenToChangeThings() throws {
        let fixture = try HostFixture(label: "https-login")
        let port = try Self.freePort()
        try "[https]\naddress = \"127.0.0.1\"\nport = \(port)\nlogin-users = [\"webadmin\", \"other\"]\n".write(
            toFile: fixture.paths.apiConfiguration, atomically: true, encoding: .utf8)
        let pam = try Self.pamStack(in: fixture.root, user: "webadmin", password: "correct horse")
        let api = try APIProcess(fixture: fixture, extraEnvironment: ["MARTLET_PAM_DIR": pam])
        _ = api
        let certificate = fixture.paths.tlsDirectory + "/cert.pem"
        let base = "https://127.0.0.1:\(port)"
        func call(_ method: String, _ path: String, headers: [String] = [], body: String? = nil) throws -> (status: Int, headers: String, body: String) {
            var arguments = ["curl", "-sS", "--max-time", "30", "--cacert", certificate, "-X", method, "-D", "-", "-w", "\n%{http_code}"]
            for header in headers { arguments += ["-H", header] }
            if let body { arguments += ["-H", "Content-Type: application/json", "--data", body] }
            let output = try ChildProcess.run(arguments + [base + path]).stdout
            let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
            let text = lines.dropLast().joined(separator: "\n")
            let parts = text.components(separatedBy: "\r\n\r\n")
            return (Int(lines.last ?? "") ?? 0, parts.first ?? "", parts.dropFirst().joined(separator: "\r\n\r\n"))
        }
        #expect(
            Poll.until(timeout: 30) { (try? call("GET", "/v1/vms").status) == 401 },
            "the HTTPS listener did not answer on port \(port); see \(fixture.root)/api.log")

        // A wrong password, and an account not in login-users, are refused after a pause.
        let started = ChildProcess.monotonicSeconds()
        #expect(try call("POST", "/v1/login", body: #"{"user": "webadmin", "password": "wrong"}"#).status == 401)
        #expect(ChildProcess.monotonicSeconds() - started >= 2, "a failed login is answered at once")
        #expect(try call("POST", "/v1/login", body: #"{"user": "root", "password": "correct horse"}"#).status == 401, "root is not in login-users here")
        #expect(try call("POST", "/v1/login", body: #"{"user": "other", "password": "correct horse"}"#).status == 401, "PAM refuses another account")

        let login = try call("POST", "/v1/login", body: #"{"user": "webadmin", "password": "correct horse"}"#)
        #expect(login.status == 200, "\(login.body)")
        let cookieLine = try #require(login.headers.split(separator: "\r\n").first { $0.lowercased().hasPrefix("set-cookie:") })
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            #expect(cookieLine.contains(attribute), "\(cookieLine)")
        }
        let session = try #require(cookieLine.split(separator: ";").first?.split(separator: ":", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces))
        let reply = try JSONSerialization.jsonObject(with: Data(login.body.utf8)) as? [String: Any]
        let csrf = try #require(reply?["csrfToken"] as? String)
        let cookie = "Cookie: \(session)"

        #expect(try call("GET", "/v1/vms", headers: [cookie]).status == 200, "the session reads")
        let volume = #"{"name": "by-session", "size": "1MiB"}"#
        #expect(try call("POST", "/v1/pools/local/volumes", headers: [cookie], body: volume).status == 403, "no CSRF token")
        #expect(try call("POST", "/v1/pools/local/volumes", headers: [cookie, "X-CSRF-Token: \(String(repeating: "0", count: 64))"], body: volume).status == 403, "a wrong CSRF token")
        #expect(try call("POST", "/v1/pools/local/volumes", headers: [cookie, "X-CSRF-Token: \(csrf)"], body: volume).status == 201)
        #expect(try call("POST", "/v1/logout", headers: [cookie, "X-CSRF-Token: \(csrf)"]).status == 204)
        #expect(try call("GET", "/v1/vms", headers: [cookie]).status == 401, "the session ended with the logout")

        let log = try String(contentsOfFile: fixture.root + "/api.log", encoding: .utf8)
        #expect(log.contains("failed login for user 'webadmin'"), "\(log.suffix(2000))")
        #expect(log.contains("POST /v1/pools/local/volumes by user 'webadmin': 201"), "\(log.suffix(2000))")
        #expect(log.contains("no or a wrong CSRF token"), "\(log.suffix(2000))")
    }

    /// The HTTPS side failing (its port taken, a broken api.toml) leaves the socket serving.
    @Test func aFailingHTTPSListenerLeavesTheSocketServing() throws {
        let fixture = try HostFixture(label: "https-fails")
        let (taken, port) = try Self.boundLoopbackSocket(listening: true)
        defer { close(taken) }
        try "[https]\naddress = \"127.0.0.1\"\nport = \(port)\n".write(
            toFile: fixture.paths.apiConfiguration, atomically: true, encoding: .utf8)
        let api = try APIProcess(fixture: fixture)
        let log = fixture.root + "/api.log"
        #expect(
            Poll.until(timeout: 30) {
                ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("HTTPS listener stopped, the unix socket serves alone")
            }, "no error about the taken port in \(log)")
        #expect(try api.request("GET", "/v1/pools").status == 200, "the socket serves")
        try "[https]\nport = 0\n".write(toFile: fixture.paths.apiConfiguration, atomically: true, encoding: .utf8)
        let second = try APIProcess(fixture: fixture, socketName: "api2.sock")
        #expect(try second.request("GET", "/v1/pools").status == 200, "the socket serves with a broken api.toml")
        let text = try String(contentsOfFile: log, encoding: .utf8)
        #expect(text.contains("HTTPS listener not started") && text.contains("https.port"), "\(text.suffix(2000))")
    }

    /// A test's clock for `SessionStore`.
    final class TestClock: Sendable {
        let seconds = Mutex<Double>(1_000_000)
        func advance(_ by: Double) { seconds.withLock { $0 += by } }
    }

    /// A session unused for its lifetime is gone (a password's and a token's alike); every
    /// use starts the lifetime again; a logout ends it at once.
    @Test func sessionsExpireUnusedAndEndAtLogout() throws {
        let clock = TestClock()
        let store = SessionStore(lifetime: 60, clock: { clock.seconds.withLock { $0 } })
        let token = APIToken(name: "viewer", readOnly: true, sha256: String(repeating: "a", count: 64), created: "")
        let (person, _) = store.open(user: "webadmin")
        let (page, opened) = store.open(user: "viewer", token: token)
        #expect(opened.token == token && person != page)
        clock.advance(59)
        #expect(store.session(person) != nil && store.session(page) != nil, "used within their lifetime")
        clock.advance(59)
        #expect(store.session(person) != nil, "each use starts the lifetime again")
        clock.advance(61)
        #expect(store.session(person) == nil, "unused longer than its lifetime")
        #expect(store.session(page) == nil, "a token's session expires the same way")
        let (again, _) = store.open(user: "webadmin")
        store.close(again)
        #expect(store.session(again) == nil, "logged out")
    }

    @Test func tokenStoreKeepsHashesAndRefusesNamesAndDuplicates() throws {
        let root = try TestSupport.temporaryDirectory("tokens")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = APITokenStore(path: root + "/api/tokens.json")
        #expect(try store.list().isEmpty)
        let secret = try store.create(name: "ci", readOnly: false)
        #expect(secret.hasPrefix(APITokenStore.prefix) && secret.count == APITokenStore.prefix.count + 64)
        #expect(store.authenticate(secret)?.name == "ci")
        #expect(store.authenticate(secret + "0") == nil)
        #expect(store.authenticate(String(secret.dropLast()) + (secret.last == "0" ? "1" : "0")) == nil)
        #expect(store.authenticate("") == nil)
        #expect(throws: MartletError.self) { try store.create(name: "ci", readOnly: true) }
        #expect(throws: MartletError.self) { try store.create(name: "../x", readOnly: true) }
        #expect(throws: MartletError.self) { try store.revoke(name: "nobody") }
        // A leftover from an interrupted change is the lock: refused, never replaced.
        try "x".write(toFile: root + "/api/tokens.json.new", atomically: false, encoding: .utf8)
        #expect(throws: MartletError.self) { try store.create(name: "other", readOnly: true) }
        #expect(try String(contentsOfFile: root + "/api/tokens.json.new", encoding: .utf8) == "x")
        try FileManager.default.removeItem(atPath: root + "/api/tokens.json.new")
        try store.revoke(name: "ci")
        #expect(store.authenticate(secret) == nil)
        try "not json".write(toFile: root + "/api/tokens.json", atomically: true, encoding: .utf8)
        #expect(throws: MartletError.self) { try store.list() }
    }

    @Test func configurationErrorsNameTheKey() throws {
        let root = try TestSupport.temporaryDirectory("api-config")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let path = root + "/api.toml"
        #expect(try APIConfiguration(path: path) == APIConfiguration(), "no file: the defaults")
        for (text, key) in [
            ("[https]\nport = 0\n", "https.port"), ("[https]\nport = 70000\n", "https.port"),
            ("[https]\naddress = \"localhost\"\n", "https.address"), ("[https]\nenabled = \"yes\"\n", "https.enabled"),
            ("[https]\nprot = 8443\n", "https.prot"), ("listen = 1\n", "listen"),
            ("[https]\nlogin-users = [\"Root\"]\n", "https.login-users"), ("[https]\nlogin-users = [\"a b\"]\n", "https.login-users"),
        ] {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            do {
                _ = try APIConfiguration(path: path)
                Issue.record("accepted: \(text)")
            } catch let error as MartletError {
                #expect(error.message.contains(key) && error.message.contains(path), "\(error.message)")
            }
        }
    }

    @Test func halfACertificatePairIsRefusedNotReplaced() throws {
        let root = try TestSupport.temporaryDirectory("api-cert")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let certificate = APICertificate(directory: root)
        try "mine".write(toFile: certificate.keyPath, atomically: true, encoding: .utf8)
        #expect(throws: MartletError.self) { try certificate.ensure(hostName: "h", addresses: []) }
        #expect(try String(contentsOfFile: certificate.keyPath, encoding: .utf8) == "mine")
        #expect(!FileManager.default.fileExists(atPath: certificate.certificatePath))
        try FileManager.default.removeItem(atPath: certificate.keyPath)
        #expect(try certificate.ensure(hostName: "host.example", addresses: ["192.0.2.7"]))
        #expect(try !certificate.ensure(hostName: "host.example", addresses: []), "an existing pair is kept")
        let text = try ChildProcess.run(["openssl", "x509", "-in", certificate.certificatePath, "-noout", "-text"]).stdout
        #expect(text.contains("DNS:host.example") && text.contains("IP Address:192.0.2.7"), "\(text)")
    }
}
