import Foundation
import MartletCore

/// Absolute paths of the system tools the installer drives. `Tool.find` in MartletCore
/// only finds tools in /usr/sbin and /sbin (its PATH split turns directories into character
/// arrays), so the installer resolves names itself and hands `Command` absolute paths.
enum SystemTool {
    static let directories = [
        "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
    ]

    /// `name` resolved on PATH and the system directories; `name` itself when not found, so
    /// `Command` reports it missing with the apt package to install.
    static func path(_ name: String) -> String {
        if name.contains("/") { return name }
        let fromEnvironment = (ProcessInfo.processInfo.environment["PATH"] ?? "")
            .split(separator: ":").map(String.init)
        for directory in fromEnvironment + directories {
            let candidate = directory + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return name
    }

    /// A `Command` for `name` with its resolved path.
    static func command(_ name: String, _ arguments: [String]) -> Command {
        // LVM warns about every inherited descriptor (Foundation's pipes) on stderr.
        Command(path(name), arguments, environment: ["LVM_SUPPRESS_FD_WARNINGS": "1"])
    }

    /// Throws naming the apt package of the first tool that is not installed.
    static func require(_ names: [String]) throws {
        for name in names where path(name) == name {
            try Tool.require([name])
        }
    }
}
