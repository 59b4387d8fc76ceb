import Foundation
import MartletCore
import MartletSystem
import MartletValidation
import Synchronization

/// What `volume import` reads: an image file on this host, or an http(s) URL.
public enum ImageSource: Equatable, Sendable, CustomStringConvertible {
    case file(String)
    case url(String)

    /// Reads a path, or a URL when `text` has a scheme; schemes other than http and https
    /// are refused.
    public init(parsing text: String) throws {
        guard let separator = text.range(of: "://") else {
            self = .file(text)
            return
        }
        let scheme = text[..<separator.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else {
            throw MartletError(
                .invalidInput, "'\(text)': only http:// and https:// URLs can be imported",
                hint: "fetch it with another tool and import the file")
        }
        guard let first = text[separator.upperBound...].first, first != "/" else {
            throw MartletError(.invalidInput, "'\(text)' names no host", hint: "write http://HOST/PATH")
        }
        self = .url(text)
    }

    public var description: String {
        switch self {
        case .file(let path): path
        case .url(let url): url
        }
    }
}

/// One `volume import`: a local file or a download, checked against an expected SHA-256,
/// its format detected from its first bytes (qcow2 header "QFI\xfb", else raw), and written
/// into a new volume — raw images copied sparse, qcow2 converted with qemu-img. When any
/// step fails, the new volume and every downloaded byte are removed again.
public struct VolumeImport: Sendable {
    public var source: ImageSource
    /// Raw or qcow2; detected from the image when nil.
    public var format: ImageFormat?
    /// The expected SHA-256 of the image as given (the qcow2 file, not the converted volume).
    public var sha256: String?
    public var progress: any ProgressSink
    /// Where a download is kept until it is in the volume: not /tmp, which is often RAM.
    public var stagingDirectory: String

    /// Bytes read and written per step of a raw copy.
    static let chunkSize = 1 << 20

    /// Where downloads and uploads wait until they are in a volume: `$TMPDIR`, else /var/tmp
    /// (not /tmp, which is often RAM).
    public static var defaultStagingDirectory: String {
        ProcessInfo.processInfo.environment["TMPDIR"] ?? "/var/tmp"
    }

    /// A new staging directory of its own (mode 0700) under `directory`.
    static func makeStaging(in directory: String) throws -> String {
        var template = Array("\(directory)/martlet-import-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else {
            throw MartletError.system(
                "mkdtemp", path: directory,
                hint: "an image is kept there until it is imported; set TMPDIR to a directory with room")
        }
        return String(cString: template)
    }

    public init(
        source: ImageSource, format: ImageFormat? = nil, sha256: String? = nil,
        progress: any ProgressSink = SilentProgress(),
        stagingDirectory: String = VolumeImport.defaultStagingDirectory
    ) throws {
        self.source = source
        self.format = format
        self.sha256 = try sha256.map(Self.checkedDigest)
        self.progress = progress
        self.stagingDirectory = stagingDirectory
    }

    /// `text` as 64 lower-case hex digits, or an error naming the value.
    static func checkedDigest(_ text: String) throws -> String {
        guard text.count == 64, text.allSatisfy(\.isHexDigit) else {
            throw MartletError(
                .invalidInput, "sha256: '\(text)' is not a SHA-256 (64 hex digits)",
                hint: "copy it from the image's SHA256SUMS, or run sha256sum on the image")
        }
        return text.lowercased()
    }

    /// Creates volume `name` in `pool` from the source.
    public func run(into pool: any StoragePool, volume name: String) throws -> VolumeInfo {
        try pool.refuseInvalidName(name)
        // Before a download that may take long, not after it.
        if try pool.volumes().contains(where: { $0.name == name }) {
            throw MartletError(
                .refused, "volume '\(pool.name)/\(name)' already exists", hint: "choose another name")
        }
        switch source {
        case .file(let path):
            try Self.refuseUnlessRegularFile(path)
            return try importFile(path, expected: sha256, into: pool, volume: name)
        case .url(let url):
            let staging = try Self.makeStaging(in: stagingDirectory)
            defer { try? FileManager.default.removeItem(atPath: staging) }
            let file = staging + "/image"
            let digest = try HTTPDownload(url: url, progress: progress).run(to: file)
            if let sha256, digest != sha256 {
                throw Self.mismatch(url, found: digest, expected: sha256)
            }
            return try importFile(file, expected: nil, into: pool, volume: name, label: url)
        }
    }

    /// An image must be a regular file: its size and format are read before it is copied,
    /// which a FIFO or a device cannot give, and a directory is a mistake.
    static func refuseUnlessRegularFile(_ path: String) throws {
        guard access(path, F_OK) == 0 || errno != ENOENT else {
            throw MartletError(.notFound, "image '\(path)' does not exist")
        }
        do {
            try FilePath.check(path, field: "image", kind: .regularFile)
        } catch {
            throw MartletError(
                .invalidInput, error.description,
                hint: "give a raw or qcow2 image file (copy a stream into a file first)")
        }
    }

    static func mismatch(_ image: String, found: String, expected: String) -> MartletError {
        MartletError(
            .verificationFailed,
            "the SHA-256 of '\(image)' is \(found), not \(expected); nothing was imported",
            hint: "check --sha256 against the image's SHA256SUMS, then import it again")
    }

    func importFile(
        _ image: String, expected: String?, into pool: any StoragePool, volume name: String,
        label: String? = nil
    ) throws -> VolumeInfo {
        let label = label ?? image
        let detected = try format ?? Self.detectFormat(image)
        let fileSize = try Self.fileSize(image)
        let virtualSize: UInt64
        switch detected {
        case .raw:
            virtualSize = fileSize
        case .qcow2:
            virtualSize = try Self.qcow2VirtualSize(image)
            // qemu-img reads the file itself: check it before anything is written.
            if let expected {
                let stage = StageReporter(sink: progress, stage: "verify")
                stage.begin("SHA-256 of \(label)")
                let digest = try Digest.sha256(file: image) { done in
                    stage.update(
                        completed: done, total: fileSize, unit: "bytes",
                        message: Self.rate(done, stage.elapsed))
                }
                guard digest == expected else {
                    throw Self.mismatch(label, found: digest, expected: expected)
                }
                stage.end("matches")
            }
        }
        let mib: UInt64 = 1 << 20
        let rounded = ByteSize(max(mib, (virtualSize + mib - 1) / mib * mib))
        let volume = try pool.createVolume(name, size: rounded)
        do {
            switch detected {
            case .raw:
                let stage = StageReporter(sink: progress, stage: "copy")
                stage.begin("\(label) → \(pool.name)/\(name)")
                let digest = try Self.copySparse(
                    image, to: volume.path, hashing: expected != nil
                ) { done in
                    stage.update(
                        completed: done, total: fileSize, unit: "bytes",
                        message: Self.rate(done, stage.elapsed))
                }
                if let expected, let digest, digest != expected {
                    throw Self.mismatch(label, found: digest, expected: expected)
                }
                stage.end()
            case .qcow2:
                let stage = StageReporter(sink: progress, stage: "convert")
                stage.begin("qcow2 \(label) → raw \(pool.name)/\(name) (qemu-img)")
                try Command(
                    "qemu-img", ["convert", "-n", "-f", "qcow2", "-O", "raw", image, volume.path]
                ).run()
                stage.end()
            }
        } catch {
            try? pool.deleteVolume(name)
            throw error
        }
        return try pool.volume(name)
    }

    /// "12.3 MiB/s" for `bytes` in `seconds`.
    static func rate(_ bytes: UInt64, _ seconds: Double) -> String {
        guard seconds > 0 else { return "" }
        return "\(ByteSize(UInt64(Double(bytes) / seconds)))/s"
    }

    static func detectFormat(_ image: String) throws -> ImageFormat {
        guard let handle = FileHandle(forReadingAtPath: image) else {
            throw MartletError(.failed, "cannot read image '\(image)'")
        }
        defer { try? handle.close() }
        let magic = (try? handle.read(upToCount: 4)) ?? Data()
        return magic == Data([0x51, 0x46, 0x49, 0xFB]) ? .qcow2 : .raw
    }

    static func fileSize(_ path: String) throws -> UInt64 {
        var info = stat()
        guard stat(path, &info) == 0 else { throw MartletError.system("stat", path: path) }
        return UInt64(info.st_size)
    }

    static func qcow2VirtualSize(_ image: String) throws -> UInt64 {
        guard Tool.find("qemu-img") != nil else {
            throw MartletError(
                .missingDependency, "importing the qcow2 image '\(image)' needs qemu-img",
                hint: "apt-get install qemu-utils, or convert it to raw elsewhere")
        }
        let info = try Command("qemu-img", ["info", "--output=json", "-f", "qcow2", image]).run()
        guard
            let object = try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any],
            let size = (object["virtual-size"] as? NSNumber)?.uint64Value
        else {
            throw MartletError(
                .failed, "qemu-img info did not report the virtual size of '\(image)'")
        }
        return size
    }

    /// Copies `source` into the (zero-filled) volume at `target`, leaving runs of zeros
    /// unwritten so thin and sparse volumes stay thin; returns the SHA-256 of what was read
    /// when `hashing`. `progress` gets the bytes copied after every chunk.
    static func copySparse(
        _ source: String, to target: String, hashing: Bool, progress: (UInt64) -> Void
    ) throws -> String? {
        let input = try FileDescriptor.open(source, O_RDONLY | O_CLOEXEC)
        defer { input.close() }
        let output = try FileDescriptor.open(target, O_WRONLY | O_CLOEXEC)
        defer { output.close() }
        let hash = hashing ? SHA256() : nil
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        // memcmp against zeros: a byte loop is far slower in debug builds and no faster in
        // release ones.
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var offset: UInt64 = 0
        while true {
            let count = read(input.raw, buffer.baseAddress, chunkSize)
            if count < 0 {
                if errno == EINTR { continue }
                throw MartletError.system("read", path: source)
            }
            if count == 0 { break }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
            hash?.update(bufferPointer: chunk)
            if memcmp(chunk.baseAddress!, zeros.baseAddress!, count) != 0 {
                var written = 0
                while written < count {
                    let result = pwrite(
                        output.raw, chunk.baseAddress! + written, count - written,
                        off_t(offset) + off_t(written))
                    if result < 0 {
                        if errno == EINTR { continue }
                        throw MartletError.system("write", path: target)
                    }
                    written += result
                }
            }
            offset += UInt64(count)
            progress(offset)
        }
        guard fsync(output.raw) == 0 else { throw MartletError.system("fsync", path: target) }
        return hash.map { Digest.hex($0.finalize()) }
    }
}

/// An http(s) download through `curl`: it is in every host's package list already, and it
/// brings redirects, TLS with the system's CA store, proxies and stall timeouts that a
/// hand-written client would not; FoundationNetworking would need libcurl linked into the
/// static binary, and no HTTP client package is needed for one GET. The body comes through
/// a pipe, so it is hashed and counted as it arrives.
struct HTTPDownload {
    var url: String
    var progress: any ProgressSink

    /// Writes the body to `path` (created, mode 0600, refused when it exists) and returns
    /// its SHA-256.
    func run(to path: String) throws -> String {
        guard let curl = Tool.find("curl") else {
            throw MartletError(
                .missingDependency, "downloading '\(url)' needs curl", hint: "apt-get install curl")
        }
        let headers = path + ".headers"
        let errors = path + ".curl-errors"
        let output = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC)
        defer { output.close() }
        let errorFile = try FileDescriptor.open(
            errors, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC)
        let body = try FileDescriptor.pipe()
        let null = try FileDescriptor.open("/dev/null", O_RDONLY)
        let pid = try ChildProcess.spawn(
            [
                curl, "--fail", "--silent", "--show-error", "--location", "--max-redirs", "10",
                "--proto", "=http,https", "--proto-redir", "=http,https",
                "--connect-timeout", "30", "--speed-limit", "1", "--speed-time", "120",
                "--dump-header", headers, "--output", "-", url,
            ], stdin: null.raw, stdout: body.write.raw, stderr: errorFile.raw)
        body.write.close()
        errorFile.close()
        null.close()

        let stage = StageReporter(sink: progress, stage: "download")
        stage.begin(url)
        let hash = SHA256()
        var buffer = [UInt8](repeating: 0, count: VolumeImport.chunkSize)
        var received: UInt64 = 0
        var total: UInt64?
        var failure: MartletError?
        while failure == nil {
            let count = body.read.read(into: &buffer)
            if count < 0 {
                failure = MartletError.system("read", path: "the pipe from curl")
                break
            }
            if count == 0 { break }
            // The headers are complete once the body flows.
            if received == 0 { total = Self.contentLength(headersAt: headers) }
            buffer[0..<count].withUnsafeBytes { hash.update(bufferPointer: $0) }
            if !output.writeAll(buffer[0..<count]) {
                failure = MartletError.system("write", path: path)
            }
            received += UInt64(count)
            stage.update(
                completed: received, total: total, unit: "bytes",
                message: VolumeImport.rate(received, stage.elapsed))
        }
        body.read.close()
        if failure != nil { kill(pid, SIGTERM) }
        let termination = ChildProcess.wait(pid)
        if let failure { throw failure }
        guard termination == .exited(0) else {
            let said = (try? String(contentsOfFile: errors, encoding: .utf8)) ?? ""
            if let status = Self.lastStatus(headersAt: headers), status.code >= 400 {
                throw MartletError(
                    .failed, "downloading '\(url)' failed: HTTP \(status.line)",
                    hint: "check the URL, or fetch the image another way and import the file")
            }
            throw MartletError(
                .failed, "downloading '\(url)' failed (curl \(termination))",
                hint: "check the URL and the host's network",
                cause: said.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        if let total, received != total {
            throw MartletError(
                .failed, "downloading '\(url)' ended after \(received) of \(total) bytes")
        }
        stage.end("\(ByteSize(received))")
        return Digest.hex(hash.finalize())
    }

    /// The responses in a `--dump-header` file, one header block a response (redirects first).
    static func responses(headersAt path: String) -> [[String]] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        var blocks: [[String]] = []
        // "\r\n" is one Character in Swift: split on newlines, not on "\n".
        for line in text.split(whereSeparator: \.isNewline).map({
            $0.trimmingCharacters(in: .whitespacesAndNewlines)
        }) where !line.isEmpty {
            if line.hasPrefix("HTTP/") { blocks.append([]) }
            if !blocks.isEmpty { blocks[blocks.count - 1].append(line) }
        }
        return blocks
    }

    /// The last response's status: its code and the text after "HTTP/x", e.g. "404 Not Found".
    static func lastStatus(headersAt path: String) -> (code: Int, line: String)? {
        guard let line = responses(headersAt: path).last?.first else { return nil }
        let text = line.split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
        guard let code = Int(text.prefix(3)) else { return nil }
        return (code, text)
    }

    /// The last response's Content-Length, when it sent one.
    static func contentLength(headersAt path: String) -> UInt64? {
        responses(headersAt: path).last?.lazy.compactMap { line -> UInt64? in
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
            return UInt64(parts[1].trimmingCharacters(in: .whitespaces))
        }.first
    }
}

/// An image that arrives as a request body (`PUT /v1/pools/{pool}/volumes/{volume}/content`,
/// the web UI's upload): its bytes are appended to a staging file (mode 0600, in a directory
/// of its own) as they arrive, hashed on the way, and once all `length` bytes are in, imported
/// like a local file (`VolumeImport`: qcow2 detected and converted, raw copied sparse). Refused
/// before a byte is stored: a bad name, a volume that exists, or more bytes than the staging
/// directory has room for. The staging directory goes when the upload does, whatever happened.
public final class ImageUpload: Sendable {
    public let pool: any StoragePool
    public let volume: String
    /// The body's length (Content-Length): no more is taken, and no less is imported.
    public let length: UInt64
    let staging: String
    private let state: Mutex<State>

    struct State {
        var file: FileDescriptor?
        let hash = SHA256()
        var received: UInt64 = 0
    }

    public init(
        into pool: any StoragePool, volume: String, length: UInt64,
        stagingDirectory: String = VolumeImport.defaultStagingDirectory
    ) throws {
        try pool.refuseInvalidName(volume)
        if try pool.volumes().contains(where: { $0.name == volume }) {
            throw MartletError(
                .refused, "volume '\(pool.name)/\(volume)' already exists", hint: "choose another name, or delete it first")
        }
        guard length > 0 else {
            throw MartletError(.invalidInput, "the upload for '\(pool.name)/\(volume)' is empty", hint: "send a raw or qcow2 image")
        }
        var stats = statvfs()
        guard statvfs(stagingDirectory, &stats) == 0 else { throw MartletError.system("statvfs", path: stagingDirectory) }
        let free = UInt64(stats.f_bavail) * UInt64(stats.f_frsize)
        guard length <= free else {
            throw MartletError(
                .refused,
                "an upload of \(ByteSize(length)) does not fit: the staging directory \(stagingDirectory) has \(ByteSize(free)) free",
                hint: "free space there, or import the image from a URL or a file on the host (martlet volume import)")
        }
        self.pool = pool
        self.volume = volume
        self.length = length
        staging = try VolumeImport.makeStaging(in: stagingDirectory)
        do {
            state = Mutex(State(file: try FileDescriptor.open(staging + "/image", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode: 0o600)))
        } catch {
            try? FileManager.default.removeItem(atPath: staging)
            throw error
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: staging) }

    /// Appends the next bytes of the body; refused beyond `length`.
    public func append(_ buffer: UnsafeRawBufferPointer) throws {
        // An array of its own: what goes into the lock must not be the caller's memory.
        let bytes = [UInt8](buffer)
        try state.withLock { state in
            guard let file = state.file else { throw MartletError(.failed, "the upload of '\(pool.name)/\(volume)' is closed") }
            let count = UInt64(bytes.count)
            guard state.received + count <= length else {
                throw MartletError(.invalidInput, "the upload of '\(pool.name)/\(volume)' is longer than its Content-Length \(length)")
            }
            bytes.withUnsafeBytes { state.hash.update(bufferPointer: $0) }
            guard file.writeAll(bytes) else {
                throw MartletError.system("write", path: staging + "/image", hint: "the staging directory may be full")
            }
            state.received += count
        }
    }

    /// Imports the complete upload into the new volume; `sha256` (if given) must match the
    /// bytes received, or nothing is imported.
    public func finish(format: ImageFormat?, sha256: String?) throws -> VolumeInfo {
        let expected = try sha256.map(VolumeImport.checkedDigest)
        let (received, digest) = try state.withLock { state -> (UInt64, String) in
            guard let file = state.file else { throw MartletError(.failed, "the upload of '\(pool.name)/\(volume)' is closed") }
            file.close()
            state.file = nil
            return (state.received, Digest.hex(state.hash.finalize()))
        }
        guard received == length else {
            throw MartletError(
                .invalidInput, "the upload of '\(pool.name)/\(volume)' ended after \(received) of \(length) bytes; nothing was imported",
                hint: "send it again")
        }
        let label = "the upload"
        if let expected, digest != expected { throw VolumeImport.mismatch(label, found: digest, expected: expected) }
        return try VolumeImport(source: .file(staging + "/image"), format: format)
            .importFile(staging + "/image", expected: nil, into: pool, volume: volume, label: label)
    }
}

extension StoragePool {
    /// Creates volume `name` from an image file or an http(s) URL (see `VolumeImport`).
    public func importVolume(
        _ name: String, from source: String, format: ImageFormat?, sha256: String? = nil,
        progress: any ProgressSink = SilentProgress()
    ) throws -> VolumeInfo {
        try VolumeImport(
            source: try ImageSource(parsing: source), format: format, sha256: sha256,
            progress: progress
        ).run(into: self, volume: name)
    }
}
