import Foundation
import MartletAnswer
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletInstaller

/// A host root with a small tz database (TZif files, a region, a table) and an XKB rules
/// list, so the names an answer may use are known exactly.
final class CatalogRoot {
    let directory: TemporaryDirectory
    var catalog: HostCatalog { HostCatalog(root: directory.path) }

    init(timezones: Bool = true, keyboards: Bool = true) throws {
        directory = try TemporaryDirectory("martlet-catalog-test")
        let root = directory.path
        if timezones {
            try FileManager.default.createDirectory(
                atPath: root + "/usr/share/zoneinfo/Europe", withIntermediateDirectories: true)
            for zone in ["UTC", "Europe/Paris", "Europe/Berlin"] {
                directory.write("usr/share/zoneinfo/\(zone)", "TZif2\0\0\0")
            }
            directory.write("usr/share/zoneinfo/leapseconds", "Leap\t2016\tDec\t31\t23:59:60\t+\tS\n")
        }
        if keyboards {
            try FileManager.default.createDirectory(
                atPath: root + "/usr/share/X11/xkb/rules", withIntermediateDirectories: true)
            directory.write(
                "usr/share/X11/xkb/rules/base.lst",
                """
                ! model
                  pc105           Generic 105-key PC

                ! layout
                  us              English (US)
                  de              German
                  fr              French

                ! variant
                  dvorak          us: English (Dvorak)
                  bepo            fr: French (BEPO)
                  nodeadkeys      de: German (no dead keys)

                ! option
                  grp             Switching to another layout

                """)
        }
    }
}

/// An answer the parser accepts but the host image (`CatalogRoot`) does not carry.
struct UnknownName: CustomTestStringConvertible, Sendable {
    var name: String
    var line: String
    var key: String
    /// Words the refusal must contain besides the key and the file.
    var says: String
    var testDescription: String { name }
}

let unknownNames: [UnknownName] = [
    .init(
        name: "zone not in the database", line: "timezone = \"Mars/Olympus_Mons\"",
        key: "global.timezone", says: "not in the host image's time zone database"),
    .init(
        name: "zone is a region", line: "timezone = \"Europe\"", key: "global.timezone",
        says: "is a region"),
    .init(
        name: "zone is a table, not a zone", line: "timezone = \"leapseconds\"",
        key: "global.timezone", says: "no TZif data"),
    .init(
        name: "zone spelled in the wrong case", line: "timezone = \"europe/paris\"",
        key: "global.timezone", says: "did you mean 'Europe/Paris'?"),
    .init(
        name: "zone the image does not carry", line: "timezone = \"America/New_York\"",
        key: "global.timezone", says: "not in the host image's time zone database"),
    .init(
        name: "layout not in the image", line: "keyboard = \"xx\"", key: "global.keyboard",
        says: "'xx' is not a keyboard layout of the host image"),
    .init(
        name: "variant of another layout", line: "keyboard = \"de:bepo\"", key: "global.keyboard",
        says: "has no variant 'bepo'"),
    .init(
        name: "variant that does not exist", line: "keyboard = \"fr:azerty-ultra\"",
        key: "global.keyboard", says: "(it has: bepo)"),
    .init(
        name: "variant of a layout without variants", line: "keyboard = \"us:colemak\"",
        key: "global.keyboard", says: "has no variant 'colemak'"),
]

@Suite struct HostCatalogTests {
    @Test("names the image carries are accepted")
    func known() throws {
        let root = try CatalogRoot()
        let catalog = root.catalog
        for zone in ["UTC", "Europe/Paris", "Europe/Berlin"] {
            #expect(catalog.timezoneProblem(zone) == nil, "\(zone)")
        }
        for keyboard in ["us", "de", "fr", "fr:bepo", "us:dvorak", "de:nodeadkeys"] {
            #expect(catalog.keyboardProblem(keyboard) == nil, "\(keyboard)")
        }
        #expect(catalog.keyboardLayouts.map(\.code) == ["us", "de", "fr"])
        #expect(catalog.keyboardLayouts.first?.name == "English (US)")
    }

    @Test(
        "an answer naming a zone or layout the image lacks is refused with file, line and key",
        arguments: unknownNames)
    func unknown(_ case_: UnknownName) throws {
        let root = try CatalogRoot()
        let text = validAnswer()
        let replaced =
            case_.key == "global.timezone"
            ? text.replacingOccurrences(of: "timezone = \"Europe/Paris\"", with: case_.line)
            : text.replacingOccurrences(of: "keyboard = \"de\"", with: case_.line)
        #expect(replaced != text)
        let file = root.directory.write("answer.toml", replaced)
        let answer = try AnswerFile.load(path: file)
        let error = #expect(throws: MartletError.self) {
            try root.catalog.check(answer, answerFile: file, required: true)
        }
        let message = error?.message ?? "no error"
        let line = case_.key == "global.timezone" ? 3 : 4
        #expect(message.hasPrefix("\(file):\(line):1: key '\(case_.key)': "), "\(message)")
        #expect(message.contains(case_.says), "\(message)")
        #expect(error?.hint?.contains(root.directory.path) == true, "\(error?.hint ?? "no hint")")
    }

    @Test("an image without the databases: a refusal when required, a note otherwise")
    func missingDatabases() throws {
        let root = try CatalogRoot(timezones: false, keyboards: false)
        let file = root.directory.write("answer.toml", validAnswer())
        let answer = try AnswerFile.load(path: file)
        let error = #expect(throws: MartletError.self) {
            try root.catalog.check(answer, answerFile: file, required: true)
        }
        #expect(error?.message.contains("key 'global.timezone'") == true)
        #expect(error?.message.contains("has no time zone database") == true)
        let notes = try root.catalog.check(answer, answerFile: file, required: false)
        #expect(notes.count == 2)
        #expect(notes.allSatisfy { $0.contains("not checked") })
    }

    @Test("names that would leave the database are refused")
    func escapingNames() throws {
        let root = try CatalogRoot()
        let catalog = root.catalog
        #expect(catalog.timezoneProblem("../../etc/passwd")?.contains("not a time zone name") == true)
        #expect(catalog.timezoneProblem("Europe/")?.contains("not a time zone name") == true)
    }

    @Test("martlet-installer validate --root checks the names against that root")
    func validateCommand() throws {
        let root = try CatalogRoot()
        let good = root.directory.write("good.toml", validAnswer())
        let bad = root.directory.write(
            "bad.toml",
            validAnswer().replacingOccurrences(
                of: "timezone = \"Europe/Paris\"", with: "timezone = \"Mars/Olympus_Mons\""))
        let executable = TestPaths.executable("martlet-installer")
        let accepted = try Command(executable, ["validate", "--root", root.directory.path, good])
            .runAllowingFailure()
        #expect(accepted.status == 0, "\(accepted.stderr)")
        let refused = try Command(executable, ["validate", "--root", root.directory.path, bad])
            .runAllowingFailure()
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("\(bad):3:1: key 'global.timezone'"), "\(refused.stderr)")
        #expect(refused.stderr.contains("Mars/Olympus_Mons"))
    }
}
