import Foundation
import MartletCore
import MartletTestSupport
import Testing

/// The host image carries `martlet` once and `/usr/bin/martlet-installer` as a link to it:
/// called by that name, `martlet` must be the installer, with the same help and the same exit
/// statuses as the thin `martlet-installer` executable.
@Suite struct MultiCallTests {
    /// `martlet` reached through a link named `martlet-installer`, as the image installs it.
    static func linkedInstaller(in scratch: ScratchDirectory) throws -> String {
        let link = scratch.file("martlet-installer")
        try FileManager.default.createSymbolicLink(
            atPath: link, withDestinationPath: TestPaths.executable("martlet"))
        return link
    }

    @Test(arguments: [
        ["--help"], ["install", "--help"], ["tui", "--help"], ["validate", "--help"],
        ["--no-such-option"], ["validate", "/nonexistent/answer.toml"], ["validate"],
    ])
    func linkBehavesAsTheInstaller(arguments: [String]) throws {
        let scratch = try ScratchDirectory("martlet-multicall")
        let link = try Self.linkedInstaller(in: scratch)
        let thin = try Command(TestPaths.executable("martlet-installer"), arguments).runAllowingFailure()
        let multi = try Command(link, arguments).runAllowingFailure()
        #expect(multi.status == thin.status, "\(multi.stderr)")
        #expect(multi.stdoutText == thin.stdoutText)
        #expect(multi.stderr == thin.stderr)
        #expect(!(multi.stdoutText + multi.stderr).contains("martlet build"))
    }

    @Test func martletByItsOwnNameIsStillTheBuilder() throws {
        let result = try Command(TestPaths.executable("martlet"), ["--help"]).runAllowingFailure()
        #expect(result.status == 0)
        #expect(result.stdoutText.contains("USAGE: martlet <subcommand>"), "\(result.stdoutText)")
        #expect(result.stdoutText.contains("build"))
        #expect(!result.stdoutText.contains("martlet-installer"))
    }
}
