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
        // The volume descriptor's magic where it belongs, and nothing else of an ISO.
        var header = Data(count: 64 << 10)
        header.replaceSubrange(32769..<32774, with: Array("CD001".utf8))
        try header.write(to: URL(fileURLWithPath: folder.path + "/header-only.iso"))
        let inputs: [(String, String)] = [
            ("text.iso", "no ISO 9660"), ("empty.iso", "no ISO 9660"), ("zeros.iso", "no ISO 9660"),
            ("fifo.iso", "a FIFO"), ("folder.iso", "a directory"), ("plain.iso", "no /boot/grub/grub.cfg"),
            ("answer.toml", "no ISO 9660"), ("header-only.iso", "no /boot/grub/grub.cfg"),
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
        let devNull = try runMartlet(["answer", "embed", "/dev/null", answer, "-o", folder.path + "/out.iso"])
        #expect(devNull.status == 2 && devNull.stderr.contains("character device"), "\(devNull.stderr)")
        // An ISO 9660 image written over itself would be lost: refused before xorriso runs.
        let overItself = try runMartlet(["answer", "embed", folder.path + "/plain.iso", answer, "-o", folder.path + "/plain.iso"])
        #expect(overItself.status == 2 && overItself.stderr.contains("is the input ISO"), "\(overItself.stderr)")
    }

    /// Answer files an embed must refuse before it reads the ISO: the same checks as the
    /// installer's, so a copy never carries an answer that would stop the install.
    static let badAnswers: [(name: String, text: String, mentions: String)] = [
            ("hostname starting with a dash", "[global]\nhostname = \"-bad\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "global.hostname"),
            ("hostname with a line break", "[global]\nhostname = \"hv1\\n\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "global.hostname"),
            ("a hash that is no crypt(5) hash", "[global]\nhostname = \"hv1\"\nroot-password-hash = \"$6$x\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "global.root-password-hash"),
            ("no way to log in", "[global]\nhostname = \"hv1\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "global.root-password"),
            ("an unknown key", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\nssh-keys = [\"ssh-foo bar\"]\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "global.ssh-keys"),
            ("a misspelt key", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\nhostname2 = \"x\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "global.hostname2"),
            ("a key given twice", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\nhostname = \"again\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "hostname"),
            ("a root size near 2^64", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\nroot-size = \"99999999999999999999GiB\"\n[network]\ninterface = \"eno1\"\n", "disk.root-size"),
            ("a swap size that is no size", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\nswap-size = \"1.5x\"\n[network]\ninterface = \"eno1\"\n", "disk.swap-size"),
            ("a target that names no disk", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"sda\"\n[network]\ninterface = \"eno1\"\n", "disk.target"),
            ("an unknown filesystem", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\nfilesystem = \"fat32\"\n[network]\ninterface = \"eno1\"\n", "disk.filesystem"),
            ("an unknown storage type", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n[storage]\ntype = \"zfs\"\n", "storage.type"),
            ("an empty interface", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"\"\n", "network.interface"),
            ("a VLAN id out of range", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\nvlan = 5000\n", "network.vlan"),
            ("a /0 prefix", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\nmode = \"static\"\naddress = \"10.0.0.5/0\"\ngateway = \"10.0.0.1\"\n", "network.address"),
            ("the network address", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\nmode = \"static\"\naddress = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\n", "network.address"),
            ("a loopback address", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\nmode = \"static\"\naddress = \"127.0.0.5/8\"\ngateway = \"127.0.0.1\"\n", "network.address"),
            ("a gateway outside the subnet", "[global]\nhostname = \"hv1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\nmode = \"static\"\naddress = \"10.0.0.5/24\"\ngateway = \"10.9.0.1\"\n", "network.gateway"),
            ("a broken table header", "[global\nhostname = 1\n", "not valid TOML"),
            ("a header toml++ asserts on", "[../global]\nhostname = \"hv1\"\n", "table header"),
            ("no [global] table", "hostname = \"hv1\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "global"),
            ("an empty file", "", "global"),
            ("a NUL byte", "[global]\nhostname = \"hv\u{0}1\"\nroot-password = \"s3cret pass\"\n[disk]\ntarget = \"/dev/vda\"\n[network]\ninterface = \"eno1\"\n", "NUL")
    ]

    @Test func badAnswersAndAnswerPathsAreRefusedBeforeTheISOIsRead() throws {
        let folder = try TemporaryFolder()
        try "not an ISO".write(toFile: folder.path + "/text.iso", atomically: false, encoding: .utf8)
        var inputs: [(name: String, answer: String, mentions: String)] = []
        for (index, bad) in Self.badAnswers.enumerated() {
            let path = folder.path + "/answer-\(index).toml"
            try bad.text.write(toFile: path, atomically: false, encoding: .utf8)
            inputs.append((bad.name, path, bad.mentions))
        }
        try Data(validEmbedAnswer.replacingOccurrences(of: "hv1", with: "hv\u{E9}").utf8.map { $0 == 0xC3 ? 0xE9 : $0 }.filter { $0 != 0xA9 })
            .write(to: URL(fileURLWithPath: folder.path + "/latin1.toml"))
        inputs.append(("a Latin-1 byte", folder.path + "/latin1.toml", "not valid UTF-8"))
        try FileManager.default.createDirectory(atPath: folder.path + "/folder.toml", withIntermediateDirectories: false)
        inputs.append(("a directory as the answer", folder.path + "/folder.toml", "a directory"))
        #expect(mkfifo(folder.path + "/fifo.toml", 0o600) == 0)
        inputs.append(("a FIFO as the answer", folder.path + "/fifo.toml", "a FIFO"))
        inputs.append(("/dev/zero as the answer", "/dev/zero", "character device"))
        #expect(inputs.count + 10 >= 30, "with the ISO and output cases, at least 30 hostile inputs")
        for input in inputs {
            let started = Date()
            let result = try runMartlet(["answer", "embed", folder.path + "/text.iso", input.answer, "-o", folder.path + "/out.iso"])
            #expect(result.status == 2, "\(input.name): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains(input.mentions), "\(input.name): should name \(input.mentions): \(result.stderr)")
            #expect(!result.stderr.contains("not a Martlet ISO"), "\(input.name): the answer is checked first: \(result.stderr)")
            #expect(Date().timeIntervalSince(started) < 1, "\(input.name) took too long")
            #expect(!FileManager.default.fileExists(atPath: folder.path + "/out.iso"))
            #expect(!FileManager.default.fileExists(atPath: folder.path + "/out.iso.partial"))
        }
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
