import Foundation
import Logging
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// Shared pieces of the end-to-end run: the ISO of profiles/default (built once), the SSH key
/// pair, scratch and artifact folders. Needs root, QEMU, OVMF, the release binaries
/// (`MARTLET_RELEASE_BIN`, set by `make e2e`) and the tools of `scripts/setup`.
enum E2E {
    static let packageRoot = TestPaths.packageRoot
    static let epoch = 1_767_225_600
    /// Builds, disk images and answer disks; outside the repository, reused between runs.
    static let workRoot = "/var/cache/martlet/e2e"
    /// Serial logs of failed scenarios are kept here (ignored by git).
    static let artifacts = packageRoot + "/artifacts/e2e"
    /// QEMU's default MAC for the first NIC: the answer files name the NIC by it.
    static let nicMAC = QEMUConfiguration.nicMACs(count: 1)[0]
    static let version = "0.1.0"

    static var binaries: String { TestPaths.releaseBinaries }

    /// The e2e folders belong to one run at a time (each run rewrites the SSH key, the disks
    /// and the ISO under `workRoot`): an exclusive lock on `/var/cache/martlet/e2e.lock`, held
    /// until the test process ends. A second run's scenarios fail at once, naming the lock,
    /// instead of installing onto the first run's disks.
    static let exclusiveUse: Result<Int32, any Error> = Result {
        let path = "/var/cache/martlet/e2e.lock"
        try FileManager.default.createDirectory(atPath: "/var/cache/martlet", withIntermediateDirectories: true)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw MartletError(.failed, "cannot open the e2e lock '\(path)': \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw MartletError(.refused, "another end-to-end run holds '\(path)'; wait for it to end (its disks and key are under \(workRoot))")
        }
        return fd
    }

    /// The ISO of profiles/default and how long its build took, made once per run.
    /// `MARTLET_E2E_ISO=FILE` boots an ISO built before instead (to iterate on the harness).
    static let iso: Result<(path: String, seconds: Int), any Error> = Result {
        if let prebuilt = ProcessInfo.processInfo.environment["MARTLET_E2E_ISO"] {
            E2E.say("TIME iso-build skipped: MARTLET_E2E_ISO=\(prebuilt)")
            return (prebuilt, 0)
        }
        let start = ContinuousClock.now
        let output = workRoot + "/iso"
        try? FileManager.default.removeItem(atPath: output)
        let profile = try Profile.load(packageRoot + "/profiles/default")
        let options = BuildOptions(
            profile: profile, outputDirectory: output, binariesDirectory: binaries,
            assetsDirectory: packageRoot + "/iso", sourceDateEpoch: epoch)
        let result = try BuildPipeline(options).run(logger: Logger(label: "e2e.build"))
        let seconds = Int(start.duration(to: .now).components.seconds)
        E2E.say("TIME iso-build \(seconds)s (\(result.isoSize / 1_048_576) MiB)")
        return (result.iso, seconds)
    }

    /// A Debian cloud image (qcow2) made with real tools by scripts/make-cloud-image (cached
    /// by the script under /var/cache/martlet-test) and its SHA-256, made once per run. The BIOS
    /// lane starts it next to the ISO build, and its installed host imports it over HTTP.
    static let cloudImage: Result<(path: String, sha256: String), any Error> = Result {
        _ = try exclusiveUse.get()
        let start = ContinuousClock.now
        let path = workRoot + "/cloud.qcow2"
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.createDirectory(atPath: workRoot, withIntermediateDirectories: true)
        try Command("/bin/sh", [packageRoot + "/scripts/make-cloud-image", path]).run()
        let digest = try Command("sha256sum", [path]).run().stdoutText
        let seconds = Int(start.duration(to: .now).components.seconds)
        E2E.say("TIME cloud-image \(seconds)s")
        return (path, String(digest.prefix(64)))
    }

    /// An ed25519 key pair made for this run: (private key file, public key line).
    static let sshKey: Result<(privateKey: String, publicKey: String), any Error> = Result {
        let directory = workRoot + "/ssh"
        let existing = directory + "/id_ed25519"
        // A recheck logs in to hosts an earlier run installed, with that run's key.
        if ProcessInfo.processInfo.environment["MARTLET_E2E_RECHECK"] != nil,
            let publicKey = try? String(contentsOfFile: existing + ".pub", encoding: .utf8)
        {
            return (existing, publicKey.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700])
        let key = directory + "/id_ed25519"
        try Command("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "martlet-e2e", "-f", key])
            .run()
        let publicKey = try String(contentsOfFile: key + ".pub", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return (key, publicKey)
    }

    /// A sparse raw disk of `bytes`, replacing any earlier one.
    static func sparseDisk(_ path: String, bytes: Int64) throws {
        try? FileManager.default.removeItem(atPath: path)
        guard FileManager.default.createFile(atPath: path, contents: nil),
            truncate(path, off_t(bytes)) == 0
        else { throw MartletError.system("truncate", path: path) }
    }

    /// A 16 MiB ext4 image labelled MARTLET-ANSWER holding `answer.toml`.
    static func answerDisk(_ path: String, answer: String) throws {
        let directory = path + ".d"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try answer.write(toFile: directory + "/answer.toml", atomically: false, encoding: .utf8)
        try? FileManager.default.removeItem(atPath: path)
        try Command("mkfs.ext4", ["-q", "-F", "-L", "MARTLET-ANSWER", "-d", directory, path, "16M"])
            .run()
    }

    /// The ISO with `answer` embedded (`martlet answer embed`): unattended entry as default.
    static func embeddedISO(_ name: String, answer: String) throws -> String {
        let directory = workRoot + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let answerPath = directory + "/answer.toml"
        try answer.write(toFile: answerPath, atomically: false, encoding: .utf8)
        return try embeddedISO(name, source: .file(answerPath))
    }

    /// The ISO whose unattended entry (the default) takes its answer from `source`.
    static func embeddedISO(_ name: String, source: AnswerEmbedding.Source) throws -> String {
        let iso = try E2E.iso.get().path
        let directory = workRoot + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let output = directory + "/embedded.iso"
        try? FileManager.default.removeItem(atPath: output)
        try AnswerEmbedding(iso: iso, source: source, output: output, sourceDateEpoch: epoch).run()
        return output
    }

    /// Summary and timing lines of the run as they happen: `swift test` holds the tests'
    /// stdout back, so `tail -f artifacts/e2e/summary.txt` follows a run live.
    static let summaryPath = artifacts + "/summary.txt"

    /// Writes a line to stdout (unbuffered) and appends it to `summaryPath`.
    static func say(_ line: String) {
        let data = Data((line + "\n").utf8)
        FileHandle.standardOutput.write(data)
        try? FileManager.default.createDirectory(
            atPath: artifacts, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: summaryPath) {
            FileManager.default.createFile(atPath: summaryPath, contents: nil)
        }
        if let handle = FileHandle(forWritingAtPath: summaryPath) {
            _ = try? handle.seekToEnd()
            try? handle.write(contentsOf: data)
            try? handle.close()
        }
    }

    /// Serial console text without terminal escapes (GRUB's menu drawing), carriage returns
    /// and blank lines, so an error's serial tail reads like the console did.
    static func readable(_ text: String) -> String {
        let noEscapes = text.replacingOccurrences(
            of: "\u{1B}(\\[[0-9;?=]*[A-Za-z]|[()][0-9A-Za-z]|[=>78])", with: "",
            options: .regularExpression)
        let printable = String(
            String.UnicodeScalarView(
                noEscapes.unicodeScalars.filter {
                    $0 == "\n" || ($0.value >= 0x20 && $0.value != 0x7F && $0.value != 0xFFFD)
                }))
        return printable.split(separator: "\n").map {
            $0.trimmingCharacters(in: .whitespaces)
        }.filter { !$0.isEmpty }.joined(separator: "\n")
    }

    /// A free TCP port on 127.0.0.1 for QEMU's SSH forwarding.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw MartletError.system("socket") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw MartletError.system("bind", path: "127.0.0.1:0") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// One scenario's bookkeeping: phase timings, its folder of logs, the summary line.
final class Scenario {
    let name: String
    let directory: String
    private let start = ContinuousClock.now
    private var phaseStart = ContinuousClock.now
    private(set) var phases: [(String, Int)] = []
    /// Notes for the summary (e.g. failed units of a degraded system).
    var notes: [String] = []

    init(_ name: String) throws {
        self.name = name
        directory = E2E.workRoot + "/" + name
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    func log(_ file: String) -> String { directory + "/" + file }

    /// Ends the current phase under `phase` and starts the next.
    func mark(_ phase: String) {
        let now = ContinuousClock.now
        let seconds = Int(phaseStart.duration(to: now).components.seconds)
        phases.append((phase, seconds))
        phaseStart = now
        E2E.say("TIME \(name) \(phase) \(seconds)s")
    }

    var elapsed: Int { Int(start.duration(to: .now).components.seconds) }

    /// Runs the scenario, prints `PASS name 412s` or `FAIL name 412s: reason`, and keeps the
    /// scenario's logs under artifacts/ when it failed.
    static func run(_ name: String, _ body: (Scenario) throws -> Void) {
        var scenario: Scenario?
        do {
            _ = try E2E.exclusiveUse.get()
            let made = try Scenario(name)
            scenario = made
            try body(made)
            let times = made.phases.map { "\($0.0)=\($0.1)s" }.joined(separator: " ")
            let notes = made.notes.isEmpty ? "" : " [" + made.notes.joined(separator: "; ") + "]"
            E2E.say("PASS \(name) \(made.elapsed)s (\(times))\(notes)")
        } catch {
            let elapsed = scenario?.elapsed ?? 0
            let text = E2E.readable("\(error)")
            let firstLine = text.split(separator: "\n").first.map(String.init) ?? text
            E2E.say("FAIL \(name) \(elapsed)s: \(firstLine)")
            if let scenario { scenario.keepArtifacts() }
            Issue.record("scenario \(name) failed after \(elapsed)s: \(text)")
        }
    }

    /// Copies the scenario's logs (not its disk images) to artifacts/e2e/NAME.
    func keepArtifacts() {
        let target = E2E.artifacts + "/" + name
        let fm = FileManager.default
        try? fm.removeItem(atPath: target)
        try? fm.createDirectory(atPath: target, withIntermediateDirectories: true)
        for file in (try? fm.contentsOfDirectory(atPath: directory)) ?? []
        where file.hasSuffix(".log") || file.hasSuffix(".toml") || file.hasSuffix(".txt") {
            try? fm.copyItem(atPath: directory + "/" + file, toPath: target + "/" + file)
        }
        E2E.say("      logs of \(name) kept in \(target)")
    }
}

/// The first and last MiB and the size of a disk image, to prove nothing wrote to it.
struct DiskFingerprint: Equatable, CustomStringConvertible {
    var size: Int64
    var head: Data
    var tail: Data

    init(_ path: String) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw MartletError(.notFound, "disk image '\(path)' cannot be opened")
        }
        defer { try? handle.close() }
        let end = try handle.seekToEnd()
        size = Int64(end)
        try handle.seek(toOffset: 0)
        head = try handle.read(upToCount: 1 << 20) ?? Data()
        try handle.seek(toOffset: end - (1 << 20))
        tail = try handle.read(upToCount: 1 << 20) ?? Data()
    }

    /// Fills the first and last MiB of a fresh sparse disk with random bytes, so a wipe, a
    /// partition table or a backup GPT written by mistake shows up.
    static func scribble(_ path: String) throws {
        guard let handle = FileHandle(forUpdatingAtPath: path) else {
            throw MartletError(.notFound, "disk image '\(path)' cannot be opened")
        }
        defer { try? handle.close() }
        let end = try handle.seekToEnd()
        for offset in [UInt64(0), end - (1 << 20)] {
            var bytes = [UInt8](repeating: 0, count: 1 << 20)
            for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
            try handle.seek(toOffset: offset)
            try handle.write(contentsOf: bytes)
        }
        try handle.synchronize()
    }

    var description: String { "size \(size), head/tail \(head.count)/\(tail.count) bytes" }
}

/// Commands on the installed host over SSH (QEMU's forwarded port on 127.0.0.1).
struct SSHSession {
    let port: Int
    let key: String

    /// Runs `command` as root; every call is bounded by `timeout` seconds (coreutils timeout).
    func run(_ command: String, timeout: Int = 120) throws -> CommandResult {
        try Command(
            "timeout",
            [
                "--kill-after=5", String(timeout), "ssh", "-i", key, "-p", String(port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
                "root@127.0.0.1", command,
            ]
        ).runAllowingFailure()
    }

    /// Polls until a login succeeds (`true` runs), or throws after `timeout`.
    func waitUntilReachable(timeout: Duration, machine: QEMUMachine) throws {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var last = ""
        while ContinuousClock.now < deadline {
            guard machine.isRunning else {
                throw MartletError(
                    .failed, "the installed host's QEMU exited before SSH answered",
                    cause: machine.serialTail(30))
            }
            let result = try run("true", timeout: 30)
            if result.status == 0 { return }
            last = result.stderr
            Thread.sleep(forTimeInterval: 5)
        }
        throw MartletError(
            .failed, "SSH on 127.0.0.1:\(port) did not accept the test key within \(timeout)",
            cause: "ssh said: \(last)\nserial console:\n" + machine.serialTail(30))
    }
}
