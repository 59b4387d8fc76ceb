import Foundation
import Testing

@testable import MartletCore

/// TOML written by TOMLKit's encoder reads back the same, whatever the strings hold, and
/// errors point at the right line, also inside arrays of tables.
@Suite struct TOMLWritingTests {
    @Test("storage.toml round-trips, strings with quotes, backslashes, tabs and UTF-8")
    func storageRoundTrip() throws {
        let configuration = StorageConfiguration(pools: [
            .init(
                name: "local", type: .lvmThin, device: "/dev/sda5", volumeGroup: "martlet",
                thinPool: "data"),
            .init(
                name: "extra", type: .directory, device: "/dev/sdb1", filesystem: "ext4",
                path: #"/srv/"quoted" \back\slash é"# + "\ttab"),
        ])
        let text = configuration.toml
        #expect(text.hasPrefix("# VM storage pools, written by martlet-installer.\n\n"))
        let directory = NSTemporaryDirectory() + "martlet-storage-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/storage.toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try StorageConfiguration.load(path: path) == configuration)
        #expect(try StorageConfiguration.load(path: directory + "/missing.toml").pools.isEmpty)
    }

    @Test("storage.toml: missing keys, unknown keys and the caller's name rule are errors")
    func storageErrors() throws {
        let directory = NSTemporaryDirectory() + "martlet-storage-errors-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/storage.toml"
        func error(
            _ text: String,
            nameProblem: (String) -> (problem: String, hint: String)? = { _ in nil }
        ) throws -> String
        {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            do {
                _ = try StorageConfiguration.load(path: path, nameProblem: nameProblem)
                return "no error"
            } catch let error as MartletError {
                return error.message
            }
        }
        let pool = "[[pool]]\nname = \"a\"\ntype = \"directory\"\npath = \"/a\"\n"
        #expect(try error(pool + "\n[[pool]]\nname = \"b\"\ntype = \"lvm-thin\"\n").contains(
            "\(path): missing required key 'pool[1].volume-group'"))
        #expect(try error(pool + "colour = \"red\"\n").contains("\(path):5:1: key 'pool[0].colour'"))
        #expect(
            try error(pool) { $0 == "a" ? ("'a' is taken", "pick another") : nil }.contains(
                "\(path):2:1: key 'pool[0].name': 'a' is taken"))
    }

    @Test("the line locator finds keys, tables and the N-th [[table]]")
    func lineLocator() throws {
        let document = try TOMLDocument(
            path: "f.toml",
            contents: """
                top = 1
                # a = comment
                [iso]
                  label = "x"

                [[file]]
                mode = "0644"
                [[file]]
                "mode" = "0755"
                [boot.grub]
                timeout = 3
                """)
        func at(_ key: String) -> [Int]? { document.line(of: key).map { [$0.line, $0.column] } }
        #expect(at("top") == [1, 1])
        #expect(at("iso") == [3, 1])
        #expect(at("iso.label") == [4, 3])
        #expect(at("file[0].mode") == [7, 1])
        #expect(at("file[1]") == [8, 1])
        #expect(at("file[1].mode") == [9, 1])
        #expect(at("boot.grub.timeout") == [11, 1])
        #expect(at("a") == nil)
        #expect(document.location(of: ["file[1]", "mode"]) == "f.toml:9:1")
        #expect(document.location(of: ["nowhere"]) == "f.toml")
    }
}
