import ArgumentParser
import Foundation
import MartletCore
import MartletInstaller

@main
struct MartletInstallerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "martlet-installer",
        abstract: "Install the Martlet hypervisor host onto a disk.",
        discussion: """
            Without a subcommand the interactive text UI starts (not available in this \
            build: it exits with status 69). Unattended installs read a TOML answer file: \
            see `install --help` and Sources/martlet-installer/README.md.

            Exit status: 0 ok, 1 a step failed, 2 invalid input, 3 not found, 4 missing tool \
            or kernel feature, 5 needs root, 6 refused by a safety check, 69 unavailable.
            """,
        subcommands: [DisksCommand.self, ValidateCommand.self, InstallCommand.self])

    func run() throws {
        try runReporting {
            throw MartletError(
                .unavailable, "text UI not available yet",
                hint: "use `martlet-installer install --answer FILE` for an unattended install")
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
