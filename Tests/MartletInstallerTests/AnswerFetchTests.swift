import Foundation
import MartletAnswer
import MartletCore
import MartletSystem
import MartletTestSupport
import Testing

@testable import MartletInstaller

/// A self-signed certificate for localhost (`selfSignedCertificate`).
private func certificate(_ directory: String, _ name: String) throws -> (cert: String, key: String, fingerprint: String) {
    try selfSignedCertificate(directory, name)
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

/// A lease file as systemd-networkd writes it: KEY=VALUE lines, private options in hex.
private func lease(url: String?, fingerprint: String? = nil, nul: Bool = false) -> String {
    func hex(_ text: String) -> String {
        (Array(text.utf8) + (nul ? [0] : [])).map { String(format: "%02x", $0) }.joined()
    }
    var text = "# This is private data. Do not parse.\nADDRESS=192.0.2.50\nNETMASK=255.255.255.0\nROUTER=192.0.2.1\n"
    if let url { text += "OPTION_250=\(hex(url))\n" }
    if let fingerprint { text += "OPTION_251=\(hex(fingerprint))\n" }
    return text + "OPTION_224=00ff\n"
}

@Suite("Answer URL from DHCP (martlet.answer=dhcp)", .serialized)
struct AnswerLeaseTests {
    @Test("options 250 and 251 in a networkd lease: hex in either case, a trailing NUL dropped; a lease without 250 is none")
    func parse() throws {
        let fingerprint = String(repeating: "AB:", count: 31) + "AB"
        let parsed = try AnswerLease.parse(
            lease(url: "https://answers.example.org/answer", fingerprint: fingerprint, nul: true), source: "/leases/2")
        #expect(parsed == AnswerLease(url: "https://answers.example.org/answer", fingerprint: fingerprint, source: "/leases/2"))
        let upper = lease(url: "http://192.0.2.1/a").replacingOccurrences(of: "OPTION_250=687474", with: "OPTION_250=687474".uppercased())
        #expect(try AnswerLease.parse(upper, source: "x")?.url == "http://192.0.2.1/a")
        #expect(try AnswerLease.parse(lease(url: nil), source: "x") == nil)
    }

    @Test("a DHCP server sending something else than an http(s) URL, or a lease with bad hex, is refused by name")
    func refusals() {
        let notURL = #expect(throws: MartletError.self) {
            try AnswerLease.parse(lease(url: "tftp://192.0.2.1/answer.toml"), source: "/leases/3")
        }
        #expect(notURL?.message.contains("DHCP option 250 from /leases/3 is not an http(s) URL: 'tftp://") == true)
        let badHex = #expect(throws: MartletError.self) {
            try AnswerLease.parse("OPTION_250=6874zz\n", source: "/leases/4")
        }
        #expect(badHex?.message.contains("/leases/4: DHCP option 250 is not hex") == true)
    }

    @Test("no lease with option 250 in time: progress was shown, then an error naming the option and the wait")
    func timeout() throws {
        let dir = try TemporaryDirectory()
        try lease(url: nil).write(toFile: "\(dir.path)/2", atomically: true, encoding: .utf8)
        var lines: [String] = []
        let error = #expect(throws: MartletError.self) {
            try AnswerLease.wait(directory: dir.path, timeout: 1.0, every: 0.3) { lines.append($0) }
        }
        #expect(error?.code == .notFound)
        #expect(error?.message.contains("no DHCP lease in \(dir.path) carried option 250 within 1 s (1 lease(s) seen)") == true)
        #expect(lines.first == "waiting for a DHCP lease with option 250 (the answer URL): 1 lease(s) without it")
    }

    @Test("martlet.answer=dhcp: the lease's URL is fetched, pinned to its option 251; a kernel-command-line fingerprint wins over it")
    func fromCommandLine() throws {
        let dir = try TemporaryDirectory()
        let good = try certificate(dir.path, "good")
        let other = try certificate(dir.path, "other")
        let server = try AnswerServer(
            directory: dir.path, answer: validAnswer(target: "/dev/sdr"), certificate: (good.cert, good.key))
        let leases = "\(dir.path)/leases"
        try FileManager.default.createDirectory(atPath: leases, withIntermediateDirectories: true)
        let cmdline = "\(dir.path)/cmdline"
        let url = "https://localhost:\(server.port)/answer"

        try lease(url: url, fingerprint: good.fingerprint, nul: true).write(toFile: "\(leases)/2", atomically: true, encoding: .utf8)
        try "BOOT_IMAGE=/live/vmlinuz quiet martlet.answer=dhcp\n".write(toFile: cmdline, atomically: true, encoding: .utf8)
        let local = try AnswerLocator.fromKernelCommandLine(
            cmdline: cmdline, workDirectory: "\(dir.path)/work", leases: leases)
        #expect(try AnswerFile.load(path: local).disk.target == .path("/dev/sdr"))

        // The lease names another certificate; the command line's pin is the one used.
        try lease(url: url, fingerprint: other.fingerprint).write(toFile: "\(leases)/2", atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: local)
        try "martlet.answer=dhcp martlet.answer-fingerprint=\(good.fingerprint)\n"
            .write(toFile: cmdline, atomically: true, encoding: .utf8)
        #expect(try AnswerLocator.fromKernelCommandLine(cmdline: cmdline, workDirectory: "\(dir.path)/work", leases: leases) == local)

        // Only the lease's pin, and it is not the server's: refused before anything is sent.
        try FileManager.default.removeItem(atPath: local)
        try FileManager.default.removeItem(atPath: server.received)
        try "martlet.answer=dhcp\n".write(toFile: cmdline, atomically: true, encoding: .utf8)
        let error = #expect(throws: MartletError.self) {
            try AnswerLocator.fromKernelCommandLine(cmdline: cmdline, workDirectory: "\(dir.path)/work", leases: leases)
        }
        #expect(error?.code == .refused)
        #expect(!FileManager.default.fileExists(atPath: server.received))
    }
}
