import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// The `martlet` executable built next to this test bundle (swift test builds it too).
let martletExecutable: String? = {
    let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let candidates = [directory, directory.deletingLastPathComponent()].map {
        $0.appendingPathComponent("martlet").path
    }
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
}()

/// Runs `martlet ARGS` and returns its exit status, stdout and stderr.
func runMartlet(_ arguments: [String]) throws -> CommandResult {
    try Command(try #require(martletExecutable), arguments).runAllowingFailure()
}

@Suite("martlet verify, flash and qemu commands", .enabled(if: martletExecutable != nil))
struct MartletCommandTests {
    @Test("verify: exit 7 and a JSON report naming the failed checks")
    func verifyFails() throws {
        let scratch = try ScratchDirectory()
        let iso = try makeSmallISO(in: scratch, kib: 4)
        let result = try runMartlet(["verify", iso, "--json"])
        #expect(result.status == 7)
        let report = try JSONDecoder().decode(ISOVerificationReport.self, from: result.stdout)
        #expect(!report.passed)
        #expect(report.check("el-torito")?.passed == false)
        #expect(result.stderr.contains("failed"))
        #expect(try runMartlet(["verify", scratch.file("none.iso")]).status == 3)
    }

    @Test("flash: a refused target exits 6 with the reason on stderr; a file is written")
    func flash() throws {
        let scratch = try ScratchDirectory()
        let iso = try makeSmallISO(in: scratch, kib: 4)
        let notISO = try scratch.write("notes.txt", "hello\n")
        let refused = try runMartlet(["flash", notISO, scratch.file("out.img"), "--yes"])
        #expect(refused.status == 6)
        #expect(refused.stderr.contains("martlet flash: '\(notISO)' is not an ISO 9660 image"))
        #expect(!FileManager.default.fileExists(atPath: scratch.file("out.img")))
        let written = try runMartlet(["flash", iso, scratch.file("out.img"), "--json"])
        #expect(written.status == 0, "\(written.stderr)")
        let last = try #require(written.stdoutText.split(separator: "\n").last)
        let result = try JSONDecoder().decode(FlashResult.self, from: Data(last.utf8))
        #expect(result.verified)
        #expect(result.target.kind == .file)
    }

    @Test("qemu: bad arguments are usage errors; a missing ISO is not found")
    func qemuArguments() throws {
        #expect(try runMartlet(["qemu"]).status == 64)
        #expect(try runMartlet(["qemu", "x.iso", "--disk", "d.img,if=scsi"]).status == 2)
        let missing = try runMartlet(["qemu", "/nonexistent.iso", "--expect", "x"])
        #expect(missing.status == 3)
        #expect(missing.stderr.contains("/nonexistent.iso"))
    }
}
