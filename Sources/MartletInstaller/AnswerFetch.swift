import Foundation
import MartletCore
import MartletValidation

/// What an answer server is told about the machine, so one server can answer many machines:
/// its disks, its NICs with their MACs, and its DMI identity (/sys/class/dmi/id).
public struct MachineInventory: Codable, Sendable, Equatable {
    public struct DiskFact: Codable, Sendable, Equatable {
        public var path: String
        public var size: UInt64
        public var model, serial, wwn: String?
        public var transport: String
    }

    public struct NICFact: Codable, Sendable, Equatable {
        public var name, mac: String
    }

    public var disks: [DiskFact]
    public var nics: [NICFact]
    /// `serial` (product_serial), `uuid`, `vendor`, `product`, `board-serial`, as far as readable.
    public var dmi: [String: String]

    public init(disks: [Disk], nics: [NIC], dmi: [String: String]) {
        self.disks = disks.filter { !$0.isBootMedium }.map {
            DiskFact(
                path: $0.path, size: $0.size.bytes, model: $0.model, serial: $0.serial, wwn: $0.wwn,
                transport: $0.transport)
        }
        self.nics = nics.map { NICFact(name: $0.name, mac: $0.mac) }
        self.dmi = dmi
    }

    /// The DMI identity under `directory` (root-only files such as product_serial are left
    /// out when unreadable).
    public static func dmi(directory: String = "/sys/class/dmi/id") -> [String: String] {
        let files = [
            ("serial", "product_serial"), ("uuid", "product_uuid"), ("vendor", "sys_vendor"),
            ("product", "product_name"), ("board-serial", "board_serial"),
        ]
        var dmi: [String: String] = [:]
        for (key, file) in files {
            if let value = SysfsAttribute.read("\(directory)/\(file)") { dmi[key] = value }
        }
        return dmi
    }

    public var json: Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Strings, integers and dictionaries of strings always encode.
        return (try? encoder.encode(self)) ?? Data("{}".utf8)
    }
}

/// Fetches the answer file from `martlet.answer=https://…`: a POST of the machine's facts as
/// JSON, answered with the TOML answer. With `martlet.answer-fingerprint=` the server's
/// certificate must have that SHA-256 fingerprint: curl first reads the certificate (sending
/// nothing), the installer compares its fingerprint, and the POST then pins that
/// certificate's public key (curl --pinnedpubkey), so a server with any other key is refused
/// before the facts leave the machine.
public struct AnswerFetch: Sendable {
    public var url: String
    /// 64 lower-case hex digits, or nil to trust the CA bundle (https) or nothing (http).
    public var fingerprint: String?
    public var attempts: Int
    public var retryDelay: Double

    public static let fingerprintParameter = "martlet.answer-fingerprint="

    public init(url: String, fingerprint: String?, attempts: Int = 6, retryDelay: Double = 5) {
        self.url = url
        self.fingerprint = fingerprint
        self.attempts = attempts
        self.retryDelay = retryDelay
    }

    /// `text` as 64 lower-case hex digits: `openssl x509 -fingerprint -sha256` output with
    /// colons, or plain hex; nil when it is not a SHA-256 fingerprint.
    public static func normalizedFingerprint(_ text: String) -> String? {
        CertificateFingerprint.sha256(text)
    }

    /// POSTs `facts` and writes the answer to `path` (mode 0600: it may hold a password
    /// or its hash). Transient failures are retried with a line per attempt on `log`; a wrong
    /// certificate is not.
    public func fetch(facts: MachineInventory, to path: String, log: (String) -> Void) throws {
        if fingerprint != nil && !url.hasPrefix("https://") {
            throw MartletError(
                .invalidInput,
                "martlet.answer=\(url): a certificate fingerprint needs an https:// URL")
        }
        var lastError: MartletError?
        for attempt in 1...max(attempts, 1) {
            log("fetching the answer from \(url) (attempt \(attempt) of \(attempts))")
            do {
                let pin = try fingerprint.map(pinnedKey)
                try post(facts: facts, to: path, pinnedKey: pin)
                return
            } catch let error as MartletError where error.code == .refused {
                throw error
            } catch let error as MartletError {
                lastError = error
                log("  failed: \(error.message)")
                if attempt < attempts { Thread.sleep(forTimeInterval: retryDelay) }
            }
        }
        throw MartletError(
            .failed,
            "martlet.answer=\(url): no answer after \(attempts) attempt(s): \(lastError?.message ?? "")",
            hint: "check the URL, the answer server and the network of the live system")
    }

    /// The leaf certificate's public key as curl's `sha256//BASE64`, after checking that the
    /// certificate's fingerprint is the pinned one.
    private func pinnedKey(_ expected: String) throws -> String {
        let probe = try Command(
            "curl",
            [
                "--insecure", "--silent", "--show-error", "--max-time", "20", "--head",
                "--output", "/dev/null", "--write-out", "%{certs}", url,
            ]
        ).runAllowingFailure()
        let text = probe.stdoutText
        guard let begin = text.range(of: "-----BEGIN CERTIFICATE-----"),
            let end = text.range(of: "-----END CERTIFICATE-----", range: begin.upperBound..<text.endIndex),
            let der = Data(
                base64Encoded: String(text[begin.upperBound..<end.lowerBound]),
                options: .ignoreUnknownCharacters)
        else {
            throw MartletError(
                .failed, "no TLS certificate from \(url): \(probe.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        let pem = String(text[begin.lowerBound..<end.upperBound]) + "\n"
        let actual = Digest.hex(Self.sha256(der))
        guard actual == expected else {
            throw MartletError(
                .refused,
                "martlet.answer=\(url): the server's certificate has SHA-256 fingerprint \(actual), "
                    + "not the pinned \(expected)",
                hint: "the answer server is not the one martlet.answer-fingerprint= names; "
                    + "check it with `openssl x509 -in CERT -noout -fingerprint -sha256`")
        }
        let publicKey = try Command("openssl", ["x509", "-pubkey", "-noout"]).run(input: Data(pem.utf8))
            .stdoutText
        let body = publicKey.components(separatedBy: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard let spki = Data(base64Encoded: body) else {
            throw MartletError(.failed, "cannot read the public key of \(url)'s certificate")
        }
        return "sha256//" + Data(Self.sha256(spki)).base64EncodedString()
    }

    private static func sha256(_ data: Data) -> [UInt8] {
        let hasher = SHA256()
        data.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        return hasher.finalize()
    }

    private func post(facts: MachineInventory, to path: String, pinnedKey: String?) throws {
        var arguments = [
            "--fail", "--silent", "--show-error", "--location", "--max-time", "60",
            "--header", "Content-Type: application/json", "--data-binary", "@-",
            url,
        ]
        if let pinnedKey { arguments = ["--insecure", "--pinnedpubkey", pinnedKey] + arguments }
        let result = try Command("curl", arguments).runAllowingFailure(input: facts.json)
        guard result.status == 0 else {
            throw MartletError(
                .failed,
                "curl exited with \(result.status): \(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        guard
            FileManager.default.createFile(
                atPath: path, contents: result.stdout, attributes: [.posixPermissions: 0o600])
        else {
            throw MartletError(.failed, "cannot write the fetched answer to \(path)")
        }
    }
}
