import Foundation
import Testing

/// Every input in Tests/FuzzCorpus (seeds, and each crash the fuzzers ever found) goes through
/// its target again in every `make test`: a fixed parser stays fixed. The fuzzing itself is
/// `scripts/fuzz` (`make fuzz`).
@Suite(.serialized, .timeLimit(.minutes(30)))
struct FuzzCorpusTests {
    static let corpus = TestSupport.repository.appendingPathComponent("Tests/FuzzCorpus")

    static var fuzzBinary: String {
        if let bin = ProcessInfo.processInfo.environment["MARTLET_RELEASE_BIN"],
            FileManager.default.isExecutableFile(atPath: "\(bin)/martlet-fuzz")
        {
            return "\(bin)/martlet-fuzz"
        }
        return TestSupport.vmmBinary.replacingOccurrences(of: "/martlet-vmm", with: "/martlet-fuzz")
    }

    @Test(arguments: ["vmm-config", "control", "answer", "profile", "vm-definition", "api-body", "virtqueue", "virtio-blk", "virtio-net", "fw-cfg"])
    func corpusReplaysWithoutACrash(_ target: String) throws {
        let directory = Self.corpus.appendingPathComponent(target).path
        let inputs = try FileManager.default.contentsOfDirectory(atPath: directory)
        try #require(!inputs.isEmpty, "no corpus for \(target) in \(directory)")
        let result = try TestSupport.run(Self.fuzzBinary, [target, directory], timeout: 120)
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("\(target): \(inputs.count) inputs replayed"), "\(result.output)")
    }

    @Test func anUnknownTargetIsAUsageError() throws {
        let result = try TestSupport.run(Self.fuzzBinary, ["no-such-target", "/dev/null"])
        #expect(result.status == 2)
        #expect(result.output.contains("targets:") && result.output.contains("vmm-config"), "\(result.output)")
    }
}
