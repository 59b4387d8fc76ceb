import Foundation
import MartletCore

/// Absolute paths of the external tools the image commands run.
enum ToolPath {
    /// `Tool.find`, falling back to a PATH scan of our own: MartletCore's `Tool.find` at this
    /// commit builds its candidates from `[[Character]]` (a type-inference slip in
    /// `split(separator:) + [...]`) and finds nothing. Errors still come from `Tool.resolve`,
    /// so they name the apt package.
    static func resolve(_ name: String) throws -> String {
        if name.contains("/") { return name }
        if let found = Tool.find(name) { return found }
        let path =
            ProcessInfo.processInfo.environment["PATH"]
            ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        let directories: [String] =
            path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"]
        for directory in directories {
            let candidate = directory + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return try Tool.resolve(name)
    }

    static func find(_ name: String) -> String? { try? resolve(name) }

    /// A `Command` for `name` resolved to its absolute path.
    static func command(_ name: String, _ arguments: [String]) throws -> Command {
        Command(try resolve(name), arguments)
    }
}
