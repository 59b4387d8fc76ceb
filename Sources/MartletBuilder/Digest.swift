import Foundation
import MartletCore

/// SHA-256 through coreutils' `sha256sum`: the builder hashes large files, and the C
/// implementation is both fast and already on every build machine.
enum Digest {
    static func sha256(file path: String) throws -> String {
        try sha256(files: [path])[path]!
    }

    /// Hashes of many files in one process.
    static func sha256(files paths: [String], relativeTo directory: String? = nil) throws
        -> [String: String]
    {
        guard !paths.isEmpty else { return [:] }
        var result: [String: String] = [:]
        // Batches keep the argument list well under the kernel's limit.
        for start in stride(from: 0, to: paths.count, by: 500) {
            let batch = Array(paths[start..<min(start + 500, paths.count)])
            let output = try Command(
                "sha256sum", ["--"] + batch, workingDirectory: directory
            ).run().stdoutText
            for line in output.split(separator: "\n") {
                let parts = line.split(separator: " ", maxSplits: 1)
                guard parts.count == 2 else { continue }
                result[String(parts[1].drop(while: { $0 == " " || $0 == "*" }))] = String(parts[0])
            }
        }
        return result
    }

    static func sha256(text: String) throws -> String {
        let output = try Command("sha256sum", ["-"]).run(input: Data(text.utf8)).stdoutText
        return String(output.prefix(64))
    }
}
