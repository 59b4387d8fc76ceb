import Foundation
import MartletCore
import MartletSystem

/// A real answer server on 127.0.0.1 (python3's http.server, wrapped in TLS with
/// `certificate` when given), for the installer's network answers, first-boot scripts and
/// webhooks, and for disk images. A request for a path in `files` gets that text, one in
/// `images` that file of the test host (streamed), any other request gets
/// `answer`; a POST's body is saved to `received` (the last one) and to `received(path)`.
/// It is up when it has said its port; stopped in `deinit`. QEMU's user network reaches it
/// from a guest as 10.0.2.2.
public final class AnswerServer {
    public let pid: pid_t
    public let port: Int
    /// The body of the last POST.
    public let received: String
    private let directory: String
    private let output: FileDescriptor

    static let script = """
        import http.server, os, shutil, ssl, sys
        cert, key, answer, received, served = sys.argv[1:6]
        def name(path):
            return path.split("?")[0].strip("/").replace("/", "_")
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.send_response(405)
                self.end_headers()
            def do_GET(self):
                self.reply()
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                for path in (received, received + "." + name(self.path)):
                    with open(path + ".partial", "wb") as f:
                        f.write(body)
                    os.rename(path + ".partial", path)
                self.reply()
            def reply(self):
                path = os.path.join(served, name(self.path))
                path = path if name(self.path) and os.path.isfile(path) else answer
                self.send_response(200)
                self.send_header("Content-Length", str(os.path.getsize(path)))
                self.end_headers()
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)
            def log_message(self, *args):
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        print("port", server.server_address[1], flush=True)
        server.serve_forever()

        """

    /// `certificate` is (cert.pem, key.pem) for https, nil for http. `files` maps request
    /// paths ("/first-boot.sh") to what they answer; `images` maps request paths to files of
    /// the test host, served as they are (linked, not copied).
    public init(
        directory: String, answer: String, certificate: (String, String)?, files: [String: String] = [:],
        images: [String: String] = [:]
    ) throws {
        self.directory = directory
        let script = "\(directory)/answer-server.py"
        try Self.script.write(toFile: script, atomically: true, encoding: .utf8)
        let answerFile = "\(directory)/served-answer.toml"
        try answer.write(toFile: answerFile, atomically: true, encoding: .utf8)
        let served = "\(directory)/served"
        try FileManager.default.createDirectory(atPath: served, withIntermediateDirectories: true)
        for (path, text) in files {
            try text.write(toFile: "\(served)/\(Self.name(path))", atomically: true, encoding: .utf8)
        }
        for (path, file) in images {
            try FileManager.default.createSymbolicLink(atPath: "\(served)/\(Self.name(path))", withDestinationPath: file)
        }
        received = "\(directory)/received.json"
        let pipe = try FileDescriptor.pipe()
        output = pipe.read
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        pid = try ChildProcess.spawn(
            [
                "python3", "-u", script, certificate?.0 ?? "", certificate?.1 ?? "", answerFile,
                received, served,
            ],
            stdin: null.raw, stdout: pipe.write.raw, stderr: null.raw)
        pipe.write.close()
        let (found, text) = ChildProcess.announcedPort(on: output, within: 20)
        guard let found else {
            kill(pid, SIGKILL)
            _ = ChildProcess.wait(pid)
            output.close()
            throw MartletError(.failed, "the answer server did not say its port within 20 s", cause: text)
        }
        port = found
    }

    /// Where the body of the last POST to `path` is saved.
    public func received(_ path: String) -> String { "\(received).\(Self.name(path))" }

    static func name(_ path: String) -> String {
        String(path.split(separator: "?").first ?? "").trimmingCharacters(in: CharacterSet(charactersIn: "/"))
            .replacingOccurrences(of: "/", with: "_")
    }

    deinit {
        // SIGKILL: children of the test runner inherit a signal mask that blocks SIGTERM.
        kill(pid, SIGKILL)
        _ = ChildProcess.wait(pid)
        output.close()
    }
}

/// A self-signed certificate for `host` made by `openssl req` in `directory`; returns the
/// paths and the fingerprint as openssl prints it (upper case with colons).
public func selfSignedCertificate(
    _ directory: String, _ name: String, host: String = "localhost"
) throws -> (cert: String, key: String, fingerprint: String) {
    let cert = "\(directory)/\(name).pem"
    let key = "\(directory)/\(name)-key.pem"
    try Command(
        "openssl",
        [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=\(host)",
        ]
    ).run()
    let text = try Command("openssl", ["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"]).run()
        .stdoutText
    let fingerprint = text.split(separator: "=").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
    return (cert, key, fingerprint)
}
