import ArgumentParser
import Foundation
import MartletCore
import MartletInstaller

/// The installer's command line: `martlet-installer` (the thin executable) and the host
/// image's `martlet` binary when it is called by that name.
public struct MartletInstallerCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "martlet-installer",
        abstract: "Install the Martlet hypervisor host onto a disk.",
        discussion: """
            Without a subcommand the interactive text UI starts (newt; 80x24, no colour needed). It collects the same answers as an answer file, shows the engine's plan, asks before erasing anything, installs with a progress screen, and offers to save the choices as /root/martlet-answer.toml on the installed host. Esc asks before quitting. `martlet-installer --dry-run` runs every screen and prints the plan instead of installing; `martlet-installer tui --help` lists the text UI's options.

            Unattended installs read a TOML answer file; see `install --help` and the answer file reference.

            Exit status: 0 ok (or cancelled in the text UI), 1 a step failed, 2 invalid input, 3 not found, 4 missing tool or kernel feature, 5 needs root, 6 refused by a safety check, 69 unavailable.
            """,
        subcommands: [TextUICommand.self, DisksCommand.self, ValidateCommand.self, InstallCommand.self],
        defaultSubcommand: TextUICommand.self)

    public init() {}
}

/// The text UI, the default subcommand: `martlet-installer` and `martlet-installer --dry-run`.
/// A subcommand rather than options of the root, so `install --dry-run` stays install's flag.
struct TextUICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tui",
        abstract: "The interactive text UI (the default when no subcommand is given).")

    @Flag(name: .long, help: "Text UI: run every screen, then print the plan instead of installing; writes nothing.")
    var dryRun = false

    @Option(name: .long, help: "Text UI: the root filesystem to copy.")
    var source: String = InstallPlan.defaultSource

    @Option(
        name: .long,
        help: "Text UI: save the answer file here instead of /root/martlet-answer.toml on the installed host (with --dry-run: offer to save it here).")
    var answerOut: String?

    @Option(name: .long, help: "Text UI: install log on the live system.")
    var log: String = "/var/log/martlet/install.log"

    @Option(
        name: .long, parsing: .upToNextOption,
        help: "Text UI: consider only these disks (device paths), e.g. to keep other disks out of reach.")
    var disks: [String] = []

    func run() throws {
        try runReporting {
            let options = TextInstaller.Options(
                source: source, dryRun: dryRun, answerOut: answerOut, log: log,
                onlyDisks: disks.isEmpty ? nil : disks)
            switch try TextInstaller(options: options).run() {
            case .cancelled:
                FileHandle.standardError.write(Data("martlet-installer: cancelled; no disk was changed\n".utf8))
            case .planned, .installed, .shell:
                // The live system starts the installer from root's login shell on tty1 and
                // ttyS0: leaving it gives that shell.
                break
            case .failed:
                throw ExitCode(1)
            }
        }
    }
}

/// The installer drives system tools (mount, wipefs, mkfs, chroot...): make sure their
/// directories are on PATH even when started from a minimal environment.
func ensureSystemPath() {
    let current = ProcessInfo.processInfo.environment["PATH"] ?? ""
    let missing = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .filter { !current.split(separator: ":").contains(Substring($0)) }
    if !missing.isEmpty {
        setenv("PATH", ((current.isEmpty ? [] : [current]) + missing).joined(separator: ":"), 1)
    }
}

/// Reports a `MartletError` on stderr with its exit status; other errors go to ArgumentParser.
func runReporting(_ body: () throws -> Void) throws {
    ensureSystemPath()
    do {
        try body()
    } catch let error as MartletError {
        FileHandle.standardError.write(Data("martlet-installer: \(error.description)\n".utf8))
        throw ExitCode(error.code.exitStatus)
    }
}
