import Foundation
import Logging

/// Logging setup for Martlet's executables. Libraries take a `Logger` and never bootstrap.
public enum MartletLogging {
    /// Bootstraps swift-log once: messages at `level` and above go to stderr and, when
    /// `file` is given, every message at debug and above is appended there too.
    public static func bootstrap(level: Logger.Level = .info, file: String? = nil) {
        let fileHandle = file.flatMap { path -> FileHandle? in
            let directory = (path as NSString).deletingLastPathComponent
            try? FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true)
            if !FileManager.default.fileExists(atPath: path) {
                FileManager.default.createFile(atPath: path, contents: nil)
            }
            let handle = FileHandle(forWritingAtPath: path)
            _ = try? handle?.seekToEnd()
            return handle
        }
        LoggingSystem.bootstrap { label in
            var stderrHandler = StreamLogHandler.standardError(label: label)
            stderrHandler.logLevel = level
            guard let fileHandle else { return stderrHandler }
            var fileHandler = FileLogHandler(label: label, handle: fileHandle)
            fileHandler.logLevel = .debug
            return MultiplexLogHandler([stderrHandler, fileHandler])
        }
    }
}

/// Appends timestamped lines to an open file (the install log, the build log).
public struct FileLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .debug
    let label: String
    let handle: FileHandle

    public init(label: String, handle: FileHandle) {
        self.label = label
        self.handle = handle
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let stamp = ISO8601DateFormatter().string(from: Date())
        handle.write(Data("\(stamp) \(event.level) \(label): \(event.message)\n".utf8))
    }
}
