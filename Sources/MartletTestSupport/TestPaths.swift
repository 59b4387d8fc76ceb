import Foundation

/// Where tests find the repository and Martlet's executables.
public enum TestPaths {
    /// The repository's top folder (this file is `Sources/MartletTestSupport/TestPaths.swift`).
    public static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    /// The release binaries: `MARTLET_RELEASE_BIN` (set by `make unit` and `make e2e`), else
    /// `.build/release` of this checkout.
    public static var releaseBinaries: String {
        ProcessInfo.processInfo.environment["MARTLET_RELEASE_BIN"] ?? packageRoot + "/.build/release"
    }

    /// The executable `name` from `MARTLET_RELEASE_BIN` when it holds one, else from the build
    /// folder the running tests came from (a debug `swift test` builds the executables too).
    public static func executable(_ name: String) -> String {
        if let bin = ProcessInfo.processInfo.environment["MARTLET_RELEASE_BIN"],
            FileManager.default.isExecutableFile(atPath: "\(bin)/\(name)")
        {
            return "\(bin)/\(name)"
        }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var directory = (exe as NSString).deletingLastPathComponent
        while !directory.isEmpty && directory != "/" {
            if FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
                return "\(directory)/\(name)"
            }
            directory = (directory as NSString).deletingLastPathComponent
        }
        return name
    }
}
