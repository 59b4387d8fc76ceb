import Glibc
import Testing

@testable import MartletValidation

/// Paths against real files, a FIFO, a directory and character devices: refused by kind
/// without blocking, and config reads bounded.
struct FilePathTests {
    let directory: String

    init() throws {
        var template = Array("/tmp/martlet-validation-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw InvalidInput("mkdtemp", "failed") }
        directory = String(cString: template)
        mkfifo(directory + "/fifo", 0o600)
        let fd = creat(directory + "/file", 0o600)
        _ = write(fd, "{}", 2)
        close(fd)
    }

    func remove() {
        for name in ["fifo", "file", "big"] { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    @Test func kindsAreChecked() throws {
        defer { remove() }
        try FilePath.check(directory + "/file", field: "kernel", kind: .regularFile)
        try FilePath.check(directory + "/file", field: "disk", kind: .disk)
        try FilePath.check(directory, field: "dir", kind: .directory)
        let refused: [(String, FileKind)] = [
            (directory + "/fifo", .regularFile), (directory + "/fifo", .disk), (directory, .disk),
            ("/dev/null", .disk), ("/dev/zero", .regularFile), (directory + "/missing", .regularFile),
            ("", .regularFile), (directory + "/file\0x", .regularFile), (directory + "/file", .directory),
        ]
        for (path, kind) in refused {
            #expect(throws: InvalidInput.self, "\(path)") { try FilePath.check(path, field: "disks[0].path", kind: kind) }
            #expect(throws: InvalidInput.self, "\(path)") { _ = try FilePath.open(path, O_RDONLY, field: "disks[0].path", kind: kind) }
        }
    }

    @Test(.timeLimit(.minutes(30))) func configReadsAreBoundedAndNeverBlock() throws {
        defer { remove() }
        #expect(try FilePath.readConfig(directory + "/file", field: "--config") == Array("{}".utf8))
        #expect(throws: InvalidInput.self) { try FilePath.readConfig(directory + "/fifo", field: "--config") }
        #expect(throws: InvalidInput.self) { try FilePath.readConfig("/dev/zero", field: "--config") }
        let fd = creat(directory + "/big", 0o600)
        _ = ftruncate(fd, 100)
        close(fd)
        #expect(throws: InvalidInput.self) { try FilePath.readConfig(directory + "/big", field: "--config", limit: 99) }
        #expect(try FilePath.readConfig(directory + "/big", field: "--config", limit: 100).count == 100)
    }
}
