import ArgumentParser
import Foundation
import MartletBuilder
import MartletCore

struct FlashCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flash",
        abstract: "Write an ISO to a USB stick like dd, safely, and verify it.",
        discussion: """
            Refuses, before writing anything: a disk that is not removable (unless --force), a \
            partition instead of a whole disk, a disk smaller than the ISO, and — always, \
            even with --force — a disk that is mounted (or one of its partitions), used as \
            swap, or held by LVM, RAID or dm-crypt. Asks for confirmation unless --yes.

            Then writes the ISO from the first byte (as dd does), shows progress (bytes, \
            percent, MB/s), fsyncs, drops the cached pages and reads everything back, \
            comparing sha256 with what was written. DEVICE may also be a regular file.

            Exit status: 0 written and verified; 6 refused; 7 read-back differs; 3 ISO or \
            device not found; 5 not root; 1 I/O error.
            """)

    @Argument(help: "The ISO to write.")
    var iso: String

    @Argument(help: "The whole disk to overwrite (e.g. /dev/sdb), or an image file.")
    var device: String

    @Flag(help: "Also write to a disk that is not removable (never to a mounted or busy one).")
    var force = false

    @Flag(name: .shortAndLong, help: "Do not ask for confirmation.")
    var yes = false

    @Flag(help: "Progress and the result as JSON lines on stdout.")
    var json = false

    func run() throws {
        do {
            let flasher = Flasher(iso: iso, device: device, force: force)
            let target = try flasher.inspect()
            if target.kind == .blockDevice {
                try Privilege.requireRoot(for: "writing to \(device)")
                if !yes { try confirm(target) }
            }
            let result = try flasher.flash(progress: json ? JSONLinesProgress() : TextProgress())
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                print(String(decoding: try encoder.encode(result), as: UTF8.self))
            } else {
                print(
                    "\(device): \(ByteSize(result.bytes)) written and verified, sha256 \(result.sha256)"
                )
            }
        } catch let error as MartletError {
            FileHandle.standardError.write(Data("martlet flash: \(error.description)\n".utf8))
            throw ExitCode(error.code.exitStatus)
        }
    }

    private func confirm(_ target: FlashTarget) throws {
        guard isatty(STDIN_FILENO) == 1 else {
            throw MartletError(
                .refused, "not confirmed: stdin is not a terminal",
                hint: "add --yes to write \(device) without asking")
        }
        FileHandle.standardError.write(
            Data(
                "Write \(iso) to \(target.summary)?\nEverything on it will be lost. Type 'yes' to go on: "
                    .utf8))
        guard readLine()?.trimmingCharacters(in: .whitespaces).lowercased() == "yes" else {
            throw MartletError(.refused, "not confirmed; \(device) was not touched")
        }
    }
}
