import Foundation
import MartletAnswer
import MartletCore
import MartletSystem
import Testing

@testable import MartletInstaller

/// A real answer server on 127.0.0.1 (python3's http.server, wrapped in TLS with `certificate`
/// when given): a POST's body is saved to `received` and answered with `answer`; a GET is
/// answered with `answer` too (a first-boot script). It is up when it has said its port.
/// Stopped in `deinit`.
final class AnswerServer {
    let pid: pid_t
    let port: Int
    let received: String
    private let output: FileDescriptor

    static let script = """
        import http.server, ssl, sys
        cert, key, answer, received = sys.argv[1:5]
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.send_response(405)
                self.end_headers()
            def do_GET(self):
                self.reply()
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with open(received, "wb") as f:
                    f.write(body)
                self.reply()
            def reply(self):
                reply = open(answer, "rb").read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            def log_message(self, *args):
                pass
        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        if cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        print("port", server.server_address[1], flush=True)
        server.serve_forever()

        """

    /// `certificate` is (cert.pem, key.pem) for https, nil for http.
    init(directory: String, answer: String, certificate: (String, String)?) throws {
        let script = "\(directory)/answer-server.py"
        try Self.script.write(toFile: script, atomically: true, encoding: .utf8)
        let answerFile = "\(directory)/served-answer.toml"
        try answer.write(toFile: answerFile, atomically: true, encoding: .utf8)
        received = "\(directory)/received.json"
        let pipe = try FileDescriptor.pipe()
        output = pipe.read
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        pid = try ChildProcess.spawn(
            [
                "python3", "-u", script, certificate?.0 ?? "", certificate?.1 ?? "", answerFile,
                received,
            ],
            stdin: null.raw, stdout: pipe.write.raw, stderr: null.raw)
        pipe.write.close()
        let deadline = ChildProcess.monotonicSeconds() + 20
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 256)
        var found: Int?
        while found == nil, ChildProcess.monotonicSeconds() < deadline {
            var descriptor = pollfd(fd: output.raw, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 200) > 0 else { continue }
            let count = output.read(into: &buffer)
            if count <= 0 { break }
            text += String(decoding: buffer[0..<count], as: UTF8.self)
            if text.hasSuffix("\n") { found = Int(text.dropFirst("port ".count).prefix { $0.isNumber }) }
        }
        guard let found else {
            kill(pid, SIGKILL)
            _ = ChildProcess.wait(pid)
            output.close()
            throw MartletError(.failed, "the answer server did not say its port within 20 s", cause: text)
        }
        port = found
    }

    deinit {
        // SIGKILL: children of the test runner inherit a signal mask that blocks SIGTERM.
        kill(pid, SIGKILL)
        _ = ChildProcess.wait(pid)
        output.close()
    }
}

/// A self-signed certificate for localhost made by `openssl req`; returns the paths and the
/// fingerprint as openssl prints it (upper case with colons).
private func certificate(_ directory: String, _ name: String) throws -> (cert: String, key: String, fingerprint: String) {
    let cert = "\(directory)/\(name).pem"
    let key = "\(directory)/\(name)-key.pem"
    try Command(
        "openssl",
        [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
        ]
    ).run()
    let text = try Command("openssl", ["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"]).run()
        .stdoutText
    let fingerprint = text.split(separator: "=").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
    return (cert, key, fingerprint)
}

private let facts = MachineInventory(
    disks: [
        Disk(path: "/dev/sda", name: "sda", size: .gib(240), model: "SSD", serial: "S1"),
        Disk(path: "/dev/sdb", name: "sdb", size: .gib(16), isBootMedium: true),
    ],
    nics: [NIC(name: "eno1", mac: "52:54:00:aa:00:01"), NIC(name: "eno2", mac: "52:54:00:aa:00:02")],
    dmi: ["serial": "CZ1234", "vendor": "ACME"])

@Suite("Answers fetched over HTTPS with a pinned certificate", .serialized)
struct AnswerFetchTests {
    @Test("fingerprints: with or without colons, any case; anything else is refused")
    func fingerprints() {
        let hex = String(repeating: "ab", count: 32)
        #expect(AnswerFetch.normalizedFingerprint(hex.uppercased()) == hex)
        let colons = stride(from: 0, to: 64, by: 2).map { i in
            String(hex[hex.index(hex.startIndex, offsetBy: i)..<hex.index(hex.startIndex, offsetBy: i + 2)])
        }.joined(separator: ":")
        #expect(AnswerFetch.normalizedFingerprint(colons) == hex)
        #expect(AnswerFetch.normalizedFingerprint(String(hex.dropLast())) == nil)
        #expect(AnswerFetch.normalizedFingerprint(String(hex.dropLast()) + "g") == nil)
    }

    @Test("the right fingerprint: the facts are POSTed as JSON and the answer comes back (0600)")
    func pinned() throws {
        let dir = try TemporaryDirectory()
        let good = try certificate(dir.path, "good")
        let server = try AnswerServer(
            directory: dir.path, answer: validAnswer(target: "/dev/sdq"), certificate: (good.cert, good.key))
        let local = "\(dir.path)/answer.toml"
        var lines: [String] = []
        try AnswerFetch(
            url: "https://localhost:\(server.port)/answer",
            fingerprint: AnswerFetch.normalizedFingerprint(good.fingerprint)
        ).fetch(facts: facts, to: local) { lines.append($0) }
        #expect(try AnswerFile.load(path: local).disk.target == .path("/dev/sdq"))
        let mode = (try FileManager.default.attributesOfItem(atPath: local)[.posixPermissions] as? Int) ?? 0
        #expect(mode == 0o600)
        #expect(lines == ["fetching the answer from https://localhost:\(server.port)/answer (attempt 1 of 6)"])
        let sent = try JSONDecoder().decode(
            MachineInventory.self, from: Data(contentsOf: URL(fileURLWithPath: server.received)))
        #expect(sent == facts)
        #expect(sent.disks.map(\.path) == ["/dev/sda"])
        #expect(sent.nics.map(\.mac) == ["52:54:00:aa:00:01", "52:54:00:aa:00:02"])
        #expect(sent.dmi["serial"] == "CZ1234")
    }

    @Test("another self-signed certificate is refused at once, before the facts are sent")
    func wrongCertificate() throws {
        let dir = try TemporaryDirectory()
        let good = try certificate(dir.path, "good")
        let other = try certificate(dir.path, "other")
        #expect(good.fingerprint != other.fingerprint)
        let server = try AnswerServer(
            directory: dir.path, answer: validAnswer(), certificate: (other.cert, other.key))
        var lines: [String] = []
        let error = #expect(throws: MartletError.self) {
            try AnswerFetch(
                url: "https://localhost:\(server.port)/answer",
                fingerprint: AnswerFetch.normalizedFingerprint(good.fingerprint)
            ).fetch(facts: facts, to: "\(dir.path)/answer.toml") { lines.append($0) }
        }
        #expect(error?.code == .refused)
        #expect(error?.message.contains("https://localhost:\(server.port)/answer") == true)
        #expect(error?.message.contains("not the pinned") == true)
        #expect(lines.count == 1)
        #expect(!FileManager.default.fileExists(atPath: server.received))
        #expect(!FileManager.default.fileExists(atPath: "\(dir.path)/answer.toml"))
    }

    @Test("a server that is not there: every attempt is shown, then an error naming the URL")
    func unreachable() throws {
        let dir = try TemporaryDirectory()
        // A port nobody listens on: the server's, after it has stopped.
        let port = try AnswerServer(directory: dir.path, answer: validAnswer(), certificate: nil).port
        var lines: [String] = []
        let url = "http://127.0.0.1:\(port)/answer"
        let error = #expect(throws: MartletError.self) {
            try AnswerFetch(url: url, fingerprint: nil, attempts: 3, retryDelay: 0)
                .fetch(facts: facts, to: "\(dir.path)/answer.toml") { lines.append($0) }
        }
        #expect(error?.message.contains("martlet.answer=\(url): no answer after 3 attempt(s)") == true)
        #expect(lines.filter { $0.hasPrefix("fetching") }.count == 3)
        #expect(lines.filter { $0.hasPrefix("  failed") }.count == 3)
    }
}
