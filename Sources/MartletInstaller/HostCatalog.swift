import Foundation
import MartletAnswer
import MartletCore

/// The time zones and keyboard layouts a host image carries: its tz database
/// (`/usr/share/zoneinfo`) and its XKB rules list (`/usr/share/X11/xkb/rules/base.lst`), so
/// an answer is checked against what the installed host will really have rather than against
/// the shape of a name (`Mars/Olympus_Mons` looks like a zone).
public struct HostCatalog: Sendable {
    /// The host root filesystem the names come from: the live system's host root, or `/`.
    public let root: String

    public init(root: String) { self.root = root }

    public var zoneinfo: String { root + "/usr/share/zoneinfo" }
    public var keyboardRules: String { root + "/usr/share/X11/xkb/rules/base.lst" }

    /// Whether the image has a tz database at all.
    public var hasTimezones: Bool { FileManager.default.fileExists(atPath: zoneinfo + "/UTC") }
    /// Whether the image has the XKB layout list at all.
    public var hasKeyboardLayouts: Bool { FileManager.default.fileExists(atPath: keyboardRules) }

    /// Why `name` is not a time zone of the image's database (a sentence), or nil when it is.
    /// A zone is a TZif file; directories (`Europe`) and tables (`leapseconds`) are not zones.
    public func timezoneProblem(_ name: String) -> String? {
        guard hasTimezones else {
            return "the host image has no time zone database (\(zoneinfo)/UTC is missing)"
        }
        let components = name.split(separator: "/", omittingEmptySubsequences: false)
        guard !name.isEmpty, !components.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." })
        else { return "'\(name)' is not a time zone name" }
        let path = zoneinfo + "/" + name
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            if isDirectory.boolValue {
                return "'\(name)' is a region of \(zoneinfo), not a zone (e.g. '\(name)/...')"
            }
            if Self.isTZif(path) { return nil }
            return "'\(name)' is a file of \(zoneinfo) but not a zone (no TZif data)"
        }
        var problem = "'\(name)' is not in the host image's time zone database (\(zoneinfo))"
        if let spelled = spelling(of: name, under: zoneinfo), Self.isTZif(zoneinfo + "/" + spelled) {
            problem += "; did you mean '\(spelled)'?"
        }
        return problem
    }

    /// Why `keyboard` (`layout` or `layout:variant`) is not a layout the image carries, or nil.
    public func keyboardProblem(_ keyboard: String) -> String? {
        guard let list = keyboardList else {
            return "the host image has no keyboard layout list (\(keyboardRules) is missing)"
        }
        let parts = keyboard.split(separator: ":", maxSplits: 1).map(String.init)
        guard let layout = parts.first, list.layouts[layout] != nil else {
            return "'\(parts.first ?? keyboard)' is not a keyboard layout of the host image (\(keyboardRules))"
        }
        if parts.count == 2 && !(list.variants[layout] ?? []).contains(parts[1]) {
            let known = (list.variants[layout] ?? []).sorted().prefix(8).joined(separator: ", ")
            return "layout '\(layout)' has no variant '\(parts[1])' in \(keyboardRules)"
                + (known.isEmpty ? " (it has none)" : " (it has: \(known)\((list.variants[layout]?.count ?? 0) > 8 ? ", ..." : ""))")
        }
        return nil
    }

    /// Layout codes with their names, in the order of the rules list; empty without one.
    public var keyboardLayouts: [(code: String, name: String)] { keyboardList?.ordered ?? [] }

    /// Refuses an answer whose time zone or keyboard layout the image does not carry, naming
    /// the answer file, line and key. A database missing from the image is a refusal when
    /// `required`, else it is returned as a note of what went unchecked.
    @discardableResult
    public func check(_ answer: AnswerFile, answerFile path: String, required: Bool) throws -> [String] {
        let document = try? TOMLDocument(path: path)
        func refuse(_ key: String, _ problem: String, hint: String) -> MartletError {
            let location = document?.location(of: ["global", key]) ?? path
            return MartletError(.invalidInput, "\(location): key 'global.\(key)': \(problem)", hint: hint)
        }
        let checks = [
            (
                "timezone", hasTimezones, zoneinfo, timezoneProblem(answer.global.timezone),
                "use a name from \(zoneinfo), e.g. \"UTC\" or \"Europe/Paris\""
            ),
            (
                "keyboard", hasKeyboardLayouts, keyboardRules, keyboardProblem(answer.global.keyboard),
                "use a layout listed under '! layout' in \(keyboardRules) (e.g. \"us\", \"de\"), a variant as \"fr:bepo\""
            ),
        ]
        var unchecked: [String] = []
        for (key, present, source, problem, hint) in checks {
            if !present && !required {
                unchecked.append("global.\(key) not checked: \(source) is missing")
            } else if let problem {
                throw refuse(
                    key, problem,
                    hint: present
                        ? hint : "point at the host image's root filesystem (validate --root DIR, install --source DIR)")
            }
        }
        return unchecked
    }

    static func isTZif(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        return (try? handle.read(upToCount: 4)) == Data("TZif".utf8)
    }

    /// The spelling of `name` that exists under `directory` when only letter case differs.
    private func spelling(of name: String, under directory: String) -> String? {
        var path = directory
        var found: [String] = []
        for component in name.split(separator: "/") {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            guard let match = entries.first(where: { $0.lowercased() == component.lowercased() })
            else { return nil }
            found.append(match)
            path += "/" + match
        }
        return found.joined(separator: "/")
    }

    private struct KeyboardList {
        var ordered: [(code: String, name: String)] = []
        var layouts: [String: String] = [:]
        var variants: [String: Set<String>] = [:]
    }

    /// `base.lst`: sections `! layout` (`  us   English (US)`) and `! variant`
    /// (`  bepo   fr: French (BEPO)`).
    private var keyboardList: KeyboardList? {
        guard let text = try? String(contentsOfFile: keyboardRules, encoding: .utf8) else { return nil }
        var list = KeyboardList()
        var section = ""
        for line in text.split(separator: "\n") {
            if line.hasPrefix("!") {
                section = line.dropFirst().trimmingCharacters(in: .whitespaces)
                continue
            }
            let fields = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
            guard fields.count == 2 else { continue }
            let code = String(fields[0])
            let rest = fields[1].trimmingCharacters(in: .whitespaces)
            switch section {
            case "layout":
                list.ordered.append((code, rest))
                list.layouts[code] = rest
            case "variant":
                guard let colon = rest.firstIndex(of: ":") else { continue }
                list.variants[String(rest[..<colon]), default: []].insert(code)
            default:
                continue
            }
        }
        return list.layouts.isEmpty ? nil : list
    }
}
