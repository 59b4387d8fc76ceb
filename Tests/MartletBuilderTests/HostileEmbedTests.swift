import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// `martlet answer embed` against inputs that are not Martlet ISOs (issue 12): exit 2 with
/// "not a Martlet ISO" within a second instead of an xorriso dump, and an existing
/// OUT.partial refused and kept, never deleted.
@Suite("martlet answer embed refuses hostile input", .enabled(if: martletExecutable != nil))
struct HostileEmbedTests {
    @Test func inputsThatAreNoMartletISOAreRefused() throws {
        let folder = try TemporaryFolder()
        let answer = folder.path + "/answer.toml"
        try validEmbedAnswer.write(toFile: answer, atomically: false, encoding: .utf8)
        try "not an ISO".write(toFile: folder.path + "/text.iso", atomically: false, encoding: .utf8)
        FileManager.default.createFile(atPath: folder.path + "/empty.iso", contents: nil)
        try Data(count: 64 << 10).write(to: URL(fileURLWithPath: folder.path + "/zeros.iso"))
        #expect(mkfifo(folder.path + "/fifo.iso", 0o600) == 0)
        try FileManager.default.createDirectory(atPath: folder.path + "/folder.iso", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: folder.path + "/tree", withIntermediateDirectories: false)
        try "x".write(toFile: folder.path + "/tree/x", atomically: false, encoding: .utf8)
        let plain = try Command("xorriso", ["-outdev", folder.path + "/plain.iso", "-map", folder.path + "/tree", "/"])
            .runAllowingFailure()
        #expect(plain.status == 0, "xorriso made a plain ISO 9660 image: \(plain.stderr)")
        let inputs: [(String, String)] = [
            ("text.iso", "no ISO 9660"), ("empty.iso", "no ISO 9660"), ("zeros.iso", "no ISO 9660"),
            ("fifo.iso", "a FIFO"), ("folder.iso", "a directory"), ("plain.iso", "no /boot/grub/grub.cfg"),
        ]
        for (name, reason) in inputs {
            let started = Date()
            let result = try runMartlet(["answer", "embed", folder.path + "/" + name, answer, "-o", folder.path + "/out.iso"])
            #expect(result.status == 2, "\(name): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains("not a Martlet ISO") && result.stderr.contains(reason), "\(name): \(result.stderr)")
            #expect(Date().timeIntervalSince(started) < 1, "\(name) took too long")
            #expect(!FileManager.default.fileExists(atPath: folder.path + "/out.iso"))
            #expect(!FileManager.default.fileExists(atPath: folder.path + "/out.iso.partial"))
        }
        let devZero = try runMartlet(["answer", "embed", "/dev/zero", answer, "-o", folder.path + "/out.iso"])
        #expect(devZero.status == 2 && devZero.stderr.contains("character device"), "\(devZero.stderr)")
    }

    @Test func anExistingPartialOutputIsKept() throws {
        let folder = try TemporaryFolder()
        let answer = folder.path + "/answer.toml"
        try validEmbedAnswer.write(toFile: answer, atomically: false, encoding: .utf8)
        try "someone else's".write(toFile: folder.path + "/out.iso.partial", atomically: false, encoding: .utf8)
        try "not an ISO".write(toFile: folder.path + "/text.iso", atomically: false, encoding: .utf8)
        let result = try runMartlet(["answer", "embed", folder.path + "/text.iso", answer, "-o", folder.path + "/out.iso"])
        #expect(result.status == 2 && result.stderr.contains("out.iso.partial' already exists"), "\(result.stderr)")
        #expect(try String(contentsOfFile: folder.path + "/out.iso.partial", encoding: .utf8) == "someone else's")
    }
}

/// A temporary folder removed when the value goes away.
final class TemporaryFolder {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("martlet-embed-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

let validEmbedAnswer = """
    [global]
    hostname = "hv1"
    root-password = "s3cret pass"
    [disk]
    target = "/dev/vda"
    [network]
    interface = "eno1"
    """
