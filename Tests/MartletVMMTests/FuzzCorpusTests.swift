import Foundation
import Testing

/// Every input in Tests/FuzzCorpus (seeds, and each crash the fuzzers ever found) goes through
/// its target again in every `make test`: a fixed parser stays fixed. The fuzzing itself is
/// `scripts/fuzz` (`make fuzz`).
@Suite(.serialized, .timeLimit(.minutes(30)))
struct FuzzCorpusTests {
    static let corpus = TestSupport.repository.appendingPathComponent("Tests/FuzzCorpus")

    /// martlet-fuzz (the host's parsers) or martlet-fuzz-vmm (what a guest reaches), next to
    /// the release binaries when the Makefile says where they are, else the debug build's.
    static func fuzzBinary(_ program: String) -> String {
        if let bin = ProcessInfo.processInfo.environment["MARTLET_RELEASE_BIN"],
            FileManager.default.isExecutableFile(atPath: "\(bin)/\(program)")
        {
            return "\(bin)/\(program)"
        }
        return TestSupport.vmmBinary.replacingOccurrences(of: "/martlet-vmm", with: "/\(program)")
    }

    static let programs = ["martlet-fuzz", "martlet-fuzz-vmm"]

    /// The program whose `--list` names `target`.
    static func program(for target: String) throws -> String? {
        try programs.first { program in
            let listed = try TestSupport.run(fuzzBinary(program), ["--list"])
            return listed.status == 0 && listed.output.split(separator: "\n").contains(Substring(target))
        }
    }

    @Test(arguments: ["vmm-config", "control", "answer", "profile", "vm-definition", "api-body", "virtqueue", "virtio-blk", "virtio-net", "fw-cfg"])
    func corpusReplaysWithoutACrash(_ target: String) throws {
        let directory = Self.corpus.appendingPathComponent(target).path
        let inputs = try FileManager.default.contentsOfDirectory(atPath: directory)
        try #require(!inputs.isEmpty, "no corpus for \(target) in \(directory)")
        let program = try #require(try Self.program(for: target), "no fuzz program lists \(target)")
        let result = try TestSupport.run(Self.fuzzBinary(program), [target, directory], timeout: 120)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("\(target): \(inputs.count) inputs replayed"), "\(result.output)")
    }

    /// Every corpus folder is one program's target, and every target has a corpus: a target
    /// added without seeds, or seeds nobody replays, fail here.
    @Test func eachCorpusBelongsToExactlyOneProgram() throws {
        var listed: [String] = []
        for program in Self.programs {
            let result = try TestSupport.run(Self.fuzzBinary(program), ["--list"])
            #expect(result.status == 0, "\(program) --list: \(result.output)")
            listed += result.output.split(separator: "\n").map(String.init)
        }
        let folders = try FileManager.default.contentsOfDirectory(atPath: Self.corpus.path)
        #expect(listed.sorted() == folders.sorted(), "targets \(listed.sorted()), corpus folders \(folders.sorted())")
    }

    @Test(arguments: programs)
    func anUnknownTargetIsAUsageError(_ program: String) throws {
        let result = try TestSupport.run(Self.fuzzBinary(program), ["no-such-target", "/dev/null"])
        #expect(result.status == 2)
        #expect(result.output.contains("targets:") && result.output.contains("--list"), "\(result.output)")
    }
}
