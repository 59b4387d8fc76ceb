import Testing

@testable import MartletCore

@Suite struct TOMLDocumentTests {
    let text = """
        name = "x"

        [iso]
        label = 12
        lable = "typo"
        """

    /// toml++ asserts (an abort) on a `}` after `[`, also with a comment between them on
    /// the line before (found by scripts/fuzz profile): refused first, naming the line.
    @Test func braceAfterBracketAndCommentIsRefusedBeforeTheParser() {
        let error = #expect(throws: MartletError.self) { try TOMLDocument(path: "p.toml", contents: "s = [ # note\n}\n") }
        #expect(error?.message == "p.toml:2: '}' where an array element or key should be", "\(String(describing: error))")
    }

    @Test func typeErrorNamesFileKeyAndLine() throws {
        let document = try TOMLDocument(path: "p.toml", contents: text)
        let iso = try #require(try document.rootSection.section("iso"))
        let error = #expect(throws: MartletError.self) { try iso.string("label") }
        #expect(error?.message == "p.toml:4:1: key 'iso.label': expected a string, found an integer")
    }

    @Test func unknownKeySuggestsTheClosestKnownOne() throws {
        let document = try TOMLDocument(path: "p.toml", contents: text)
        let iso = try #require(try document.rootSection.section("iso"))
        _ = try? iso.string("label")
        let error = #expect(throws: MartletError.self) { try iso.finish() }
        #expect(error?.message == "p.toml:5:1: key 'iso.lable': unknown key")
        #expect(error?.hint?.contains("did you mean 'iso.label'") == true)
    }

    @Test func syntaxErrorHasLineAndColumn() {
        let error = #expect(throws: MartletError.self) {
            try TOMLDocument(path: "bad.toml", contents: "a = 1\nb = = 2\n")
        }
        #expect(error?.message.hasPrefix("bad.toml:2:") == true)
    }

    @Test func missingRequiredKey() throws {
        let document = try TOMLDocument(path: "p.toml", contents: "[disk]\n")
        let disk = try #require(try document.rootSection.section("disk"))
        let error = #expect(throws: MartletError.self) {
            try disk.required(try disk.string("target"), "target")
        }
        #expect(error?.message == "p.toml: missing required key 'disk.target' in [disk]")
    }

    @Test func sizesAcceptUnitsOrBytes() throws {
        let document = try TOMLDocument(
            path: "p.toml", contents: "a = \"12GiB\"\nb = 4096\nc = \"lots\"\n")
        let root = document.rootSection
        #expect(try root.size("a") == .gib(12))
        #expect(try root.size("b") == ByteSize(4096))
        #expect(throws: MartletError.self) { try root.size("c") }
    }
}
