import Foundation
import MartletCore

/// `martlet.answer=dhcp`: the answer URL comes from the DHCP server, as site-specific option
/// 250, and optionally the SHA-256 fingerprint of its certificate as option 251 (the options
/// Proxmox's automated installer reads, so one DHCP setup can serve both). The live system's
/// systemd-networkd asks for both (`RequestOptions=250 251`) and keeps what the server sends
/// in its lease files as `OPTION_250=<hex>`.
///
/// DHCP is not authenticated: anyone on the segment can answer first. A fingerprint on the
/// kernel command line therefore wins over option 251.
public struct AnswerLease: Equatable, Sendable {
    public static let commandLineValue = "dhcp"
    public static let urlOption = 250
    public static let fingerprintOption = 251
    public static let defaultLeases = "/run/systemd/netif/leases"

    /// The answer server's URL (http or https).
    public var url: String
    /// The fingerprint option as sent (normalized by `AnswerFetch` when used), or nil.
    public var fingerprint: String?
    /// The lease file it came from, for messages.
    public var source: String

    /// The options in one networkd lease file, or nil when it carries no answer URL.
    /// A URL that is not http(s) is refused: the DHCP server is misconfigured.
    public static func parse(_ text: String, source: String) throws -> AnswerLease? {
        var options: [Int: String] = [:]
        for line in text.split(separator: "\n") {
            guard line.hasPrefix("OPTION_"), let equals = line.firstIndex(of: "=") else { continue }
            guard let tag = Int(line[line.index(line.startIndex, offsetBy: 7)..<equals]),
                tag == urlOption || tag == fingerprintOption
            else { continue }
            guard let bytes = hexBytes(line[line.index(after: equals)...]) else {
                throw MartletError(
                    .invalidInput, "\(source): DHCP option \(tag) is not hex: \(line)",
                    hint: "this file is written by systemd-networkd; report it")
            }
            // Servers often send a C string: a trailing NUL is not part of the value.
            let value = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            options[tag] = value.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let url = options[urlOption], !url.isEmpty else { return nil }
        guard url.hasPrefix("https://") || url.hasPrefix("http://") else {
            throw MartletError(
                .invalidInput, "DHCP option \(urlOption) from \(source) is not an http(s) URL: '\(url)'",
                hint: "set option \(urlOption) on the DHCP server to the answer server's URL, "
                    + "e.g. https://answers.example.org/answer")
        }
        return AnswerLease(url: url, fingerprint: options[fingerprintOption], source: source)
    }

    /// Waits up to `timeout` seconds for a lease with an answer URL in `directory`, reporting
    /// every `every` seconds what it waits for.
    public static func wait(
        directory: String = defaultLeases, timeout: Double = 180, every: Double = 10,
        progress: (String) -> Void
    ) throws -> AnswerLease {
        let deadline = Date().addingTimeInterval(timeout)
        var nextReport = Date()
        var leases: [String] = []
        while true {
            leases = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
            for name in leases {
                let path = "\(directory)/\(name)"
                guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { continue }
                if let lease = try parse(text, source: path) { return lease }
            }
            if Date() >= deadline { break }
            if Date() >= nextReport {
                progress(
                    "waiting for a DHCP lease with option \(urlOption) (the answer URL): "
                        + (leases.isEmpty ? "no lease yet" : "\(leases.count) lease(s) without it"))
                nextReport = Date().addingTimeInterval(every)
            }
            usleep(250_000)
        }
        throw MartletError(
            .notFound,
            "martlet.answer=dhcp: no DHCP lease in \(directory) carried option \(urlOption) "
                + "within \(Int(timeout)) s (\(leases.count) lease(s) seen)",
            hint: "check the cable and the DHCP server: it must send option \(urlOption) with the answer URL "
                + "(and may send \(fingerprintOption) with the certificate's SHA-256 fingerprint)")
    }

    private static func hexBytes(_ text: Substring) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = nibble(digits[index]), let low = nibble(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
