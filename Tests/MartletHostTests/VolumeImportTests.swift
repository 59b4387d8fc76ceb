import Foundation
import MartletCore
import MartletSystem
import Testing

@testable import MartletHost

/// A real HTTP server (`python3 -m http.server`) on 127.0.0.1 serving `directory`, on a
/// port the kernel picks; it is up when it has said which port. Stopped in `deinit`.
final class LocalHTTPServer {
    let pid: pid_t
    let port: Int
    /// Open while the server runs: a write to a closed stdout would end it.
    let output: FileDescriptor

    init(directory: String, deadline seconds: Double = 20) throws {
        let pipe = try FileDescriptor.pipe()
        output = pipe.read
        // Writable: the server logs every request to stderr and drops the reply when it cannot.
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        defer { null.close() }
        pid = try ChildProcess.spawn(
            ["python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", directory],
            stdin: null.raw, stdout: pipe.write.raw, stderr: null.raw)
        pipe.write.close()
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let (found, text) = ChildProcess.announcedPort(on: output, within: seconds)
        guard let found else {
            output.close()
            kill(pid, SIGTERM)
            _ = ChildProcess.wait(pid)
            throw MartletError(
                .failed, "python3 -m http.server did not say its port within \(Int(seconds)) s",
                cause: text)
        }
        port = found
    }

    func url(_ name: String) -> String { "http://127.0.0.1:\(port)/\(name)" }

    deinit {
        kill(pid, SIGTERM)
        _ = ChildProcess.wait(pid)
        output.close()
    }
}

/// `volume import` from files and URLs into a directory pool: bytes arrive, SHA-256 is
/// checked (a mismatch leaves no volume and no download), inputs that are not images are
/// refused with the reason, HTTP errors name their status.
@Suite struct VolumeImportTests {
    let root: String
    let pool: DirectoryPool
    let image: String
    let marker = Array("martlet import marker".utf8)

    init() throws {
        root = try TestSupport.temporaryDirectory("import")
        try FileManager.default.createDirectory(
            atPath: root + "/pool", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(
            atPath: root + "/served", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(
            atPath: root + "/staging", withIntermediateDirectories: true)
        pool = DirectoryPool(name: "local", path: root + "/pool")
        // 3 MiB and a bit: more than one copy chunk, a marker in the middle, zeros around it.
        var bytes = [UInt8](repeating: 0, count: (3 << 20) + 4096)
        bytes.replaceSubrange((2 << 20)..<((2 << 20) + marker.count), with: marker)
        image = root + "/served/image.raw"
        try Data(bytes).write(to: URL(fileURLWithPath: image))
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: root) }

    func readMarker(_ volume: VolumeInfo) throws -> Data? {
        let handle = try #require(FileHandle(forReadingAtPath: volume.path))
        defer { try? handle.close() }
        try handle.seek(toOffset: 2 << 20)
        return try handle.read(upToCount: marker.count)
    }

    func run(_ source: String, sha256: String? = nil, format: ImageFormat? = nil,
             progress: any ProgressSink = SilentProgress(), as name: String) throws -> VolumeInfo {
        try VolumeImport(
            source: try ImageSource(parsing: source), format: format, sha256: sha256,
            progress: progress, stagingDirectory: root + "/staging"
        ).run(into: pool, volume: name)
    }

    func expectError(
        _ code: MartletError.Code, containing text: String, _ body: () throws -> Void,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        do {
            try body()
            Issue.record("no error; expected \(code) with '\(text)'", sourceLocation: sourceLocation)
        } catch let error as MartletError {
            #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
            #expect(
                error.description.contains(text), "\(error.description)",
                sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func localRawWithDigest() throws {
        defer { cleanUp() }
        let digest = try Digest.sha256(file: image)
        let progress = RecordingProgress()
        let volume = try run(image, sha256: digest.uppercased(), progress: progress, as: "raw")
        #expect(volume.size == 4 << 20)  // rounded up to whole MiB
        #expect(try readMarker(volume) == Data(marker))
        // Zeros were skipped: only the chunk with the marker was written.
        #expect((volume.allocated ?? .max) <= 1 << 20)
        let last = progress.events.last { $0.kind == .update && $0.stage == "copy" }
        #expect(last?.completed == UInt64((3 << 20) + 4096))
        #expect(last?.total == UInt64((3 << 20) + 4096))

        expectError(.verificationFailed, containing: "nothing was imported") {
            _ = try run(image, sha256: String(repeating: "0", count: 64), as: "bad")
        }
        #expect(try pool.volumes().map(\.name) == ["raw"])
    }

    @Test func localQcow2WithDigest() throws {
        defer { cleanUp() }
        guard Tool.find("qemu-img") != nil else {
            Issue.record("qemu-img is missing: apt-get install qemu-utils (scripts/setup)")
            return
        }
        let qcow2 = root + "/served/image.qcow2"
        try Command("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", image, qcow2]).run()
        expectError(.verificationFailed, containing: "qcow2") {
            _ = try run(qcow2, sha256: String(repeating: "a", count: 64), as: "bad")
        }
        #expect(try pool.volumes().isEmpty)
        let volume = try run(qcow2, sha256: try Digest.sha256(file: qcow2), as: "converted")
        #expect(try readMarker(volume) == Data(marker))
    }

    @Test func refusedInputs() throws {
        defer { cleanUp() }
        let fifo = root + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        expectError(.invalidInput, containing: "is a FIFO") { _ = try run(fifo, as: "a") }
        expectError(.invalidInput, containing: "is a directory") { _ = try run(root, as: "a") }
        expectError(.notFound, containing: "does not exist") { _ = try run(root + "/nope", as: "a") }
        expectError(.invalidInput, containing: "only http:// and https://") {
            _ = try run("ftp://127.0.0.1/image.raw", as: "a")
        }
        expectError(.invalidInput, containing: "not a SHA-256") {
            _ = try run(image, sha256: "abc", as: "a")
        }
        _ = try run(image, as: "taken")
        expectError(.refused, containing: "already exists") { _ = try run(image, as: "taken") }
        #expect(try pool.volumes().map(\.name) == ["taken"])
    }

    @Test(.timeLimit(.minutes(30))) func fromHTTP() throws {
        defer { cleanUp() }
        let server = try LocalHTTPServer(directory: root + "/served")
        let digest = try Digest.sha256(file: image)
        let progress = RecordingProgress()
        let volume = try run(server.url("image.raw"), sha256: digest, progress: progress, as: "web")
        #expect(try readMarker(volume) == Data(marker))
        let download = progress.events.last { $0.kind == .update && $0.stage == "download" }
        #expect(download?.completed == UInt64((3 << 20) + 4096))
        #expect(download?.total == UInt64((3 << 20) + 4096), "Content-Length read from the headers")
        #expect(download?.message?.hasSuffix("/s") == true)

        if Tool.find("qemu-img") != nil {
            try Command(
                "qemu-img",
                ["convert", "-f", "raw", "-O", "qcow2", image, root + "/served/image.qcow2"]
            ).run()
            let converted = try run(server.url("image.qcow2"), as: "web-qcow2")
            #expect(try readMarker(converted) == Data(marker))
        }

        expectError(.failed, containing: "failed: HTTP 404 File not found\n") {
            _ = try run(server.url("missing.raw"), as: "missing")
        }
        expectError(.verificationFailed, containing: "nothing was imported") {
            _ = try run(server.url("image.raw"), sha256: String(repeating: "1", count: 64), as: "bad")
        }
        #expect(try pool.volumes().map(\.name).sorted().filter { !$0.hasPrefix("web") }.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/staging").isEmpty)
    }
}
