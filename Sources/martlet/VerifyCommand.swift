import ArgumentParser
import Foundation
import MartletBuilder
import MartletCore

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check that an ISO is a complete, bootable Martlet image.",
        discussion: """
            Checks, without root: el-torito (bootable BIOS and EFI entries in the boot \
            catalog), mbr (boot code and partition entries, for BIOS from a dd'd stick), gpt \
            (valid header and an EFI system partition holding FAT, for UEFI from a stick), \
            label (the ISO 9660 volume label, equal to --label when given), squashfs \
            (/live/{live,martlet,binaries,base}.squashfs are squashfs 4 images, not cut off), sha256sums (every file \
            listed in the ISO's /SHA256SUMS matches, and every file is listed), and \
            iso-sha256 (only when a SHA256SUMS next to the ISO lists it).

            Exit status: 0 when every check passed, 7 when one failed, 3 when the ISO does \
            not exist, 4 when xorriso is missing.
            """)

    @Argument(help: "The ISO to check.")
    var iso: String

    @Option(help: "The volume label the ISO must have (e.g. the profile's iso.label).")
    var label: String?

    @Flag(help: "Print the report as one JSON object on stdout.")
    var json = false

    func run() throws {
        do {
            let verifier = ISOVerifier(iso: iso, expectedLabel: label)
            let report = try verifier.verify(progress: json ? SilentProgress() : TextProgress())
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                for check in report.checks {
                    print("\(check.passed ? "PASS" : "FAIL")  \(check.name): \(check.detail)")
                }
            }
            if let failure = report.failure { throw failure }
        } catch let error as MartletError {
            FileHandle.standardError.write(Data("martlet verify: \(error.description)\n".utf8))
            throw ExitCode(error.code.exitStatus)
        }
    }
}
