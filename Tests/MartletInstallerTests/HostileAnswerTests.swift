import Foundation
import MartletAnswer
import MartletCore
import MartletSystem
import MartletTestSupport
import Testing

/// `martlet-installer validate` against hostile answer files (issue 12): each is refused
/// with exit status 2 and a message naming the key (or the line), within a second, and the
/// folder it lies in is left as it was. Sizes near 2^64, fake hashes and keys, control
/// characters, non-UTF-8 bytes, addresses no host can have, and files that are no files.
@Suite(.serialized) struct HostileAnswerTests {
    static let realKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy"
    static let keyLine = "root-ssh-keys = [\"\(realKey) admin@example.org\"]"
    static let password = "root-password = \"s3cret pass\""

    static let cases: [MalformedAnswer] = [
        .init(name: "hostname with a trailing newline", old: "hostname = \"hv1.example.org\"", new: "hostname = \"hv1\\n\"", key: "global.hostname"),
        .init(name: "hostname with NUL", old: "hostname = \"hv1.example.org\"", new: "hostname = \"hv1\\u0000x\"", key: ":2: a NUL"),
        .init(name: "hostname with escape", old: "hostname = \"hv1.example.org\"", new: "hostname = \"hv1\\u001b[2J\"", key: "global.hostname"),
        .init(name: "timezone with a trailing newline", old: "timezone = \"Europe/Paris\"", new: "timezone = \"UTC\\n\"", key: "global.timezone"),
        .init(name: "keyboard with a trailing newline", old: "keyboard = \"de\"", new: "keyboard = \"de\\n\"", key: "global.keyboard"),
        .init(name: "password with NUL", old: password, new: "root-password = \"abc\\u0000def\"", key: ":5: a NUL"),
        .init(name: "password with a line break", old: password, new: "root-password = \"abc\\ndef\"", key: "global.root-password"),
        .init(name: "password with DEL", old: password, new: "root-password = \"abc\\u007fdef\"", key: "global.root-password"),
        .init(name: "hash $6$x", old: password, new: "root-password-hash = \"$6$x\"", key: "global.root-password-hash"),
        .init(name: "hash too short", old: password, new: "root-password-hash = \"$6$salt$short\"", key: "global.root-password-hash"),
        .init(name: "yescrypt without hash", old: password, new: "root-password-hash = \"$y$j9T$salt$\"", key: "global.root-password-hash"),
        .init(name: "bcrypt cost 99", old: password, new: "root-password-hash = \"$2b$99$ZdN/.D/AKypV121.AqbQbeDErCSP1/DdisxFJ0v3SoTZzjXblXwpG\"", key: "global.root-password-hash"),
        .init(name: "ssh-foo bar", old: keyLine, new: "root-ssh-keys = [\"ssh-foo bar\"]", key: "global.root-ssh-keys"),
        .init(name: "ssh key that is not base64", old: keyLine, new: "root-ssh-keys = [\"ssh-ed25519 bar!\"]", key: "global.root-ssh-keys"),
        .init(name: "ssh key of the wrong type", old: keyLine, new: keyLine.replacingOccurrences(of: "ssh-ed25519", with: "ssh-rsa"), key: "global.root-ssh-keys"),
        .init(name: "ssh key with a newline", old: keyLine, new: "root-ssh-keys = [\"\(realKey)\\nssh-rsa AAAA\"]", key: "global.root-ssh-keys"),
        .init(name: "swap near 2^64", old: "swap-size = \"1GiB\"", new: "swap-size = \"18446744073709551615\"", key: "disk.swap-size"),
        .init(name: "swap of 2^64 in GiB", old: "swap-size = \"1GiB\"", new: "swap-size = \"17179869184GiB\"", key: "disk.swap-size"),
        .init(name: "root size near 2^64", old: "swap-size = \"1GiB\"", new: "swap-size = \"1GiB\"\nroot-size = \"16777215TiB\"", key: "disk.root-size"),
        .init(name: "swap of fractional bytes", old: "swap-size = \"1GiB\"", new: "swap-size = \"1.1\"", key: "disk.swap-size"),
        .init(name: "disk target with NUL", old: "target = \"/dev/sdz\"", new: "target = \"/dev/sdz\\U00000000\"", key: ":10: a NUL"),
        .init(name: "volume group with a newline", old: "volume-group = \"martlet\"", new: "volume-group = \"martlet\\n\"", key: "storage.volume-group"),
        .init(name: "address /0", old: "address = \"192.0.2.10/24\"", new: "address = \"192.0.2.10/0\"", key: "network.address"),
        .init(name: "network address", old: "address = \"192.0.2.10/24\"", new: "address = \"192.0.2.0/24\"", key: "network.address"),
        .init(name: "broadcast address", old: "address = \"192.0.2.10/24\"", new: "address = \"192.0.2.255/24\"", key: "network.address"),
        .init(name: "loopback address", old: "address = \"192.0.2.10/24\"", new: "address = \"127.0.0.2/8\"", key: "network.address"),
        .init(name: "prefix with a sign", old: "address = \"192.0.2.10/24\"", new: "address = \"192.0.2.10/+24\"", key: "network.address"),
        .init(name: "gateway outside the subnet", old: "gateway = \"192.0.2.1\"", new: "gateway = \"198.51.100.1\"", key: "network.gateway"),
        .init(name: "gateway is the host", old: "gateway = \"192.0.2.1\"", new: "gateway = \"192.0.2.10\"", key: "network.gateway"),
        .init(name: "ipv6 loopback", old: "ipv6 = \"2001:db8::10/64\"", new: "ipv6 = \"::1/128\"", key: "network.ipv6"),
        .init(name: "ipv6 /0", old: "ipv6 = \"2001:db8::10/64\"", new: "ipv6 = \"2001:db8::10/0\"", key: "network.ipv6"),
        .init(name: "ipv6 gateway outside the subnet", old: "ipv6-gateway = \"2001:db8::1\"", new: "ipv6-gateway = \"2001:db9::1\"", key: "network.ipv6-gateway"),
        .init(name: "dns with a newline", old: "dns = [\"192.0.2.53\", \"2001:db8::53\"]", new: "dns = [\"192.0.2.53\\n\"]", key: "network.dns"),
        .init(name: "interface MAC too short", old: "interface = \"52:54:00:12:34:56\"", new: "interface = \"52:54:00:12:34:5\"", key: "network.interface"),
        .init(name: "header without a key (toml++ asserts)", old: "[storage]", new: "[ \n[storage]", key: "a table header must start with a key"),
        .init(name: "combining mark after '[' (toml++ asserts; found by scripts/fuzz)", old: "[storage]", new: "[\u{0362}]\n[storage]", key: "a table header must start with a key"),
        .init(name: "brace after '[' (toml++ asserts)", old: "dns = [\"192.0.2.53\", \"2001:db8::53\"]", new: "dns = [}\"192.0.2.53\"]", key: "'}' where an array element"),
        .init(name: "form feed in a header (toml++ asserts)", old: "[storage]", new: "[\u{0C}storage]", key: "control character (U+C)"),
        .init(name: "interface with a newline", old: "interface = \"52:54:00:12:34:56\"", new: "interface = \"eno1\\n\"", key: "network.interface"),
    ]

    /// Runs `martlet-installer validate` on `path` with a one-second deadline.
    static func validate(_ path: String) throws -> (termination: ChildProcess.Termination, stderr: String, seconds: Double) {
        let started = Date()
        let result = try ChildProcess.run([TestPaths.executable("martlet-installer"), "validate", path], timeout: 1)
        return (result.termination, result.stderr, Date().timeIntervalSince(started))
    }

    static func listing(_ folder: String) throws -> [String: Data] {
        var result: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: folder) {
            let path = folder + "/" + name
            var info = stat()
            lstat(path, &info)
            result[name] = info.st_mode & S_IFMT == S_IFREG ? try Data(contentsOf: URL(fileURLWithPath: path)) : Data("\(info.st_mode)".utf8)
        }
        return result
    }

    @Test(.timeLimit(.minutes(30))) func malformedAnswersAreRefusedByTheBinary() throws {
        #expect(Self.cases.count >= 30)
        let folder = try TemporaryDirectory()
        let valid = validAnswer()
        #expect(valid.contains(Self.keyLine))
        var files: [(MalformedAnswer, String)] = []
        for (index, testCase) in Self.cases.enumerated() {
            let path = "\(folder.path)/answer\(index).toml"
            try testCase.apply(to: valid).write(toFile: path, atomically: false, encoding: .utf8)
            files.append((testCase, path))
        }
        let latin1 = "\(folder.path)/latin1.toml"
        try Data(valid.replacingOccurrences(of: "s3cret pass", with: "s3cret p\u{E4}ss").utf8)
            .replacingFirst(Data([0xC3, 0xA4]), with: Data([0xE4])).write(to: URL(fileURLWithPath: latin1))
        #expect(mkfifo("\(folder.path)/fifo.toml", 0o600) == 0)
        try FileManager.default.createDirectory(atPath: "\(folder.path)/folder.toml", withIntermediateDirectories: false)
        let before = try Self.listing(folder.path)
        var all = files.map { ($0.0.name, $0.1, $0.0.key) }
        all += [
            ("Latin-1 byte", latin1, "latin1.toml:5"), ("FIFO", "\(folder.path)/fifo.toml", "fifo.toml"),
            ("directory", "\(folder.path)/folder.toml", "folder.toml"), ("/dev/zero", "/dev/zero", "/dev/zero"),
        ]
        for (name, path, key) in all {
            let result = try Self.validate(path)
            #expect(result.termination == .exited(2), "\(name): \(result.termination): \(result.stderr)")
            #expect(result.stderr.contains(key), "\(name): the message names \(key): \(result.stderr)")
            #expect(result.seconds < 1, "\(name): took \(result.seconds) s")
        }
        #expect(try Self.listing(folder.path) == before, "validate changed the folder")
    }

    @Test func crlfAndByteOrderMarkKeepLineNumbers() throws {
        let broken = validAnswer().replacingOccurrences(of: "vlan = 42", with: "vlan = 42\nvlna = 1")
        let line = broken.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.hasPrefix("vlna") }! + 1
        for (name, text) in [("LF", broken), ("CRLF", broken.replacingOccurrences(of: "\n", with: "\r\n")),
            ("BOM", "\u{FEFF}" + broken), ("BOM+CRLF", "\u{FEFF}" + broken.replacingOccurrences(of: "\n", with: "\r\n"))]
        {
            let error = #expect(throws: MartletError.self, "\(name)") { try AnswerFile.parse(path: "a.toml", contents: text) }
            #expect(error?.message.contains("a.toml:\(line):") == true, "\(name): \(error?.message ?? "")")
        }
        _ = try AnswerFile.parse(path: "a.toml", contents: "\u{FEFF}" + validAnswer().replacingOccurrences(of: "\n", with: "\r\n"))
    }
}

extension Data {
    /// This data with the first occurrence of `old` replaced (test fixtures with raw bytes).
    fileprivate func replacingFirst(_ old: Data, with new: Data) -> Data {
        guard let range = range(of: old) else { return self }
        var copy = self
        copy.replaceSubrange(range, with: new)
        return copy
    }
}
