import Foundation
import MartletCore
import MartletSystem
import MartletValidation

/// `/etc/martlet/api.toml`: where the API listens besides its unix socket.
///
///     [https]
///     enabled = true          # false: the unix socket only
///     address = "::"          # every address, IPv4 and IPv6
///     port = 8443
public struct APIConfiguration: Sendable, Equatable {
    public var httpsEnabled = true
    public var httpsAddress = "::"
    public var httpsPort = 8443
    /// The host accounts that may log in to the web UI (their password through PAM).
    public var loginUsers = ["root"]

    public init() {}

    /// The file at `path`; the defaults when there is none.
    public init(path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        let document = try TOMLDocument(path: path)
        let root = document.rootSection
        if let https = try root.section("https") {
            httpsEnabled = try https.bool("enabled") ?? httpsEnabled
            if let address = try https.string("address") {
                guard IPAddress(address, family: AF_INET) != nil || IPAddress(address, family: AF_INET6) != nil else {
                    throw https.error("address", "\(quoted(address)) is not an IP address", hint: "write \"::\" for every address, or one of this host's")
                }
                httpsAddress = address
            }
            if let port = try https.int("port") {
                guard (1...65535).contains(port) else {
                    throw https.error("port", "\(port) is not a TCP port", hint: "use 1 to 65535; the default is 8443")
                }
                httpsPort = port
            }
            if let users = try https.strings("login-users") {
                for user in users where !Self.isAccountName(user) {
                    throw https.error("login-users", "\(quoted(user)) is not an account name", hint: "list host accounts, e.g. [\"root\"]")
                }
                loginUsers = users
            }
            try https.finish()
        }
        try root.finish()
    }
}

extension APIConfiguration {
    /// A POSIX account name: what useradd accepts by default.
    static func isAccountName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.unicodeScalars.count <= 32 else { return false }
        return (first == "_" || ("a"..."z").contains(first))
            && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }
}

/// The HTTPS API's certificate and key, `cert.pem` (0644) and `key.pem` (0600) in one folder.
/// A self-signed ECDSA P-256 certificate is made with openssl the first time the API starts
/// without one; a person checks it by its SHA-256 fingerprint, which the console shows
/// (`/etc/issue`) and `martlet api fingerprint` prints.
public struct APICertificate: Sendable {
    public let certificatePath: String
    public let keyPath: String

    public init(directory: String) {
        certificatePath = "\(directory)/cert.pem"
        keyPath = "\(directory)/key.pem"
    }

    /// Makes the certificate and key unless both exist; returns whether it made them. One of
    /// the two alone is refused: a key without its certificate (or the reverse) is someone's
    /// unfinished work, not something to overwrite.
    @discardableResult
    public func ensure(hostName: String, addresses: [String]) throws -> Bool {
        let fm = FileManager.default
        switch (fm.fileExists(atPath: certificatePath), fm.fileExists(atPath: keyPath)) {
        case (true, true): return false
        case (false, false): break
        case (true, false), (false, true):
            throw MartletError(
                .refused, "'\(certificatePath)' and '\(keyPath)' must both exist or both be absent",
                hint: "put back the missing one, or remove both to have a new self-signed certificate made")
        }
        let directory = (certificatePath as NSString).deletingLastPathComponent
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        // Made in a private folder next to the final place, then linked into it: link() does
        // not replace, so a file that appeared meanwhile is kept and the make is refused.
        let scratch = "\(directory)/.new-\(getpid())"
        guard mkdir(scratch, 0o700) == 0 else {
            throw MartletError(.failed, "cannot make '\(scratch)': \(SystemError.text(errno))")
        }
        defer { try? fm.removeItem(atPath: scratch) }
        let names = [hostName, "localhost"].filter { !$0.isEmpty }
        let alternativeNames = (names.map { "DNS:\($0)" } + (["127.0.0.1", "::1"] + addresses).map { "IP:\($0)" })
        var seen = Set<String>()
        let unique = alternativeNames.filter { seen.insert($0).inserted }
        try Command(
            "openssl",
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "\(scratch)/key.pem", "-out", "\(scratch)/cert.pem", "-days", "3650",
                "-subj", "/CN=\(hostName.isEmpty ? "martlet" : hostName)/O=Martlet host",
                "-addext", "subjectAltName=\(unique.joined(separator: ","))",
                "-addext", "keyUsage=critical,digitalSignature",
                "-addext", "extendedKeyUsage=serverAuth",
            ]
        ).run(hint: "openssl (Debian package openssl) makes the API's self-signed certificate")
        guard chmod("\(scratch)/key.pem", 0o600) == 0, chmod("\(scratch)/cert.pem", 0o644) == 0 else {
            throw MartletError(.failed, "cannot set the modes in '\(scratch)': \(SystemError.text(errno))")
        }
        for (made, path) in [("\(scratch)/key.pem", keyPath), ("\(scratch)/cert.pem", certificatePath)] {
            guard link(made, path) == 0 else {
                throw MartletError(
                    .refused, "cannot put the new certificate at '\(path)': \(SystemError.text(errno))",
                    hint: "something else wrote there meanwhile; look at it, then remove it or keep it with its pair")
            }
        }
        return true
    }

    /// The SHA-256 of the certificate (its DER bytes), as browsers show it: `AB:CD:…`.
    public func fingerprint() throws -> String {
        let pem = try readConfigText(certificatePath)
        guard let der = Self.der(pem) else {
            throw MartletError(
                .invalidInput, "'\(certificatePath)' holds no PEM certificate",
                hint: "remove it and its key.pem to have a new one made, or put a PEM certificate there")
        }
        let hash = SHA256()
        der.withUnsafeBytes { hash.update(bufferPointer: $0) }
        return hash.finalize().map { String(format: "%02X", $0) }.joined(separator: ":")
    }

    /// The first certificate's DER bytes in `pem`.
    static func der(_ pem: String) -> Data? {
        let lines = pem.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let begin = lines.firstIndex(of: "-----BEGIN CERTIFICATE-----"),
            let end = lines[begin...].firstIndex(of: "-----END CERTIFICATE-----")
        else { return nil }
        return Data(base64Encoded: lines[(begin + 1)..<end].joined())
    }

    /// This host's name and its non-loopback addresses (of `interface` only, when given):
    /// the certificate's names, and the addresses the web UI shows.
    public static func localIdentity(interface: String? = nil) -> (hostName: String, addresses: [String]) {
        var name = [CChar](repeating: 0, count: 256)
        let hostName = gethostname(&name, name.count) == 0 ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        var addresses: [String] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        if getifaddrs(&list) == 0, let first = list {
            defer { freeifaddrs(list) }
            for entry in sequence(first: first, next: { $0.pointee.ifa_next }) {
                guard let address = entry.pointee.ifa_addr else { continue }
                if let interface, String(cString: entry.pointee.ifa_name) != interface { continue }
                let family = Int32(address.pointee.sa_family)
                guard family == AF_INET || family == AF_INET6 else { continue }
                var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
                let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
                guard getnameinfo(address, length, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST) == 0 else { continue }
                let numeric = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                // Link-local IPv6 carries a zone ("%br0") a certificate cannot name.
                guard !numeric.contains("%"), numeric != "127.0.0.1", numeric != "::1" else { continue }
                addresses.append(numeric)
            }
        }
        return (hostName, addresses)
    }

    /// Writes the console banner part at `path` (mode 0644), replacing only an earlier one of
    /// ours: a file there that does not start with our first line is refused.
    public static func writeIssue(_ text: String, to path: String) throws {
        if let existing = try? String(contentsOfFile: path, encoding: .utf8),
            !existing.hasPrefix(issueHeading)
        {
            throw MartletError(
                .refused, "'\(path)' holds something else than the API's banner; it is left as it is",
                hint: "remove it or set MARTLET_API_ISSUE to another file")
        }
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        try VMHost.atomicWrite(text, to: path)
    }

    static let issueHeading = "Martlet API and web UI: "

    /// The text for the console's login banner (an agetty issue file): where the API is and
    /// the fingerprint to compare with the browser's. `\4{br0}` is agetty's escape for br0's
    /// IPv4 address.
    public static func issueText(port: Int, fingerprint: String) -> String {
        """
        \(issueHeading)https://\\4{br0}:\(port)/
        Certificate SHA-256 fingerprint:
          \(fingerprint)


        """
    }
}

/// The text of the small configuration file at `path`, read with FilePath's size cap.
func readConfigText(_ path: String) throws -> String {
    do {
        return String(decoding: try FilePath.readConfig(path, field: path), as: UTF8.self)
    } catch {
        throw MartletError(.invalidInput, error.description, hint: error.hint)
    }
}
