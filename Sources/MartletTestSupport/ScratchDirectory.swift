import Foundation
import MartletBuilder
import MartletCore

/// A temporary folder removed when the fixture goes away.
public final class ScratchDirectory {
    public let path: String

    public init(_ prefix: String = "martlet-test") throws {
        var template = Array((QEMUMachine.temporaryDirectory + "/\(prefix).XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw MartletError.system("mkdtemp", path: NSTemporaryDirectory())
        }
        path = String(cString: made)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// The path of `relative` inside the folder.
    public func file(_ relative: String) -> String { path + "/" + relative }

    /// Writes `contents` at `relative`, creating folders on the way.
    @discardableResult
    public func write(_ relative: String, _ contents: String) throws -> String {
        try write(relative, Data(contents.utf8))
    }

    /// Writes `contents` at `relative`, creating folders on the way.
    @discardableResult
    public func write(_ relative: String, _ contents: Data) throws -> String {
        let target = file(relative)
        try FileManager.default.createDirectory(
            atPath: (target as NSString).deletingLastPathComponent,
            withIntermediateDirectories: true)
        try contents.write(to: URL(fileURLWithPath: target))
        return target
    }
}
