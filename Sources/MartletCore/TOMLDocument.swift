import Foundation
import MartletSystem
import MartletValidation
import TOMLKit

/// A parsed TOML file that remembers where it came from, so every error can name the
/// file, the key and the line. Profiles, answer files and host configuration are all
/// read through this: unknown keys are errors, never silently ignored.
public struct TOMLDocument {
    public let path: String
    public let source: String
    let root: TOMLTable

    /// Reads and parses the regular file at `path`: read with a size cap (a FIFO or a device
    /// is refused, never read), and refused when it is not UTF-8, naming the line.
    public init(path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw MartletError(
                .notFound, "cannot read '\(path)': \(SystemError.text(errno))", hint: "check the path")
        }
        let bytes: [UInt8]
        do {
            bytes = try FilePath.readConfig(path, field: path)
        } catch {
            throw MartletError(.invalidInput, error.description, hint: error.hint)
        }
        var line = 1
        for chunk in bytes.split(separator: 0x0A, omittingEmptySubsequences: false) {
            guard String(validating: chunk, as: UTF8.self) != nil else {
                throw MartletError(
                    .invalidInput, "\(path):\(line): not valid UTF-8 (a Latin-1 or binary byte?)",
                    hint: "save the file as UTF-8")
            }
            line += 1
        }
        try self.init(path: path, contents: String(decoding: bytes, as: UTF8.self))
    }

    /// Parses `contents`; `path` is used in error messages. A byte order mark is dropped and
    /// CRLF line ends read as LF, so line numbers in errors stay right for Windows editors.
    public init(path: String, contents: String) throws {
        let contents = String(
            String.UnicodeScalarView(
                contents.unicodeScalars.drop { $0 == "\u{FEFF}" }.filter { $0 != "\r" }))
        // The TOML parser hands strings over as C strings: a NUL (raw or escaped) would cut
        // a value short unseen ("hv1\u0000x" read as "hv1"), so a file holding one is refused.
        // Other raw control characters are invalid TOML anywhere, and toml++ asserts on some
        // of them (a form feed in a table header) instead of reporting an error: refused here.
        for (index, line) in contents.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if line.contains("\0") || line.contains("\\u0000") || line.contains("\\U00000000") {
                throw MartletError(
                    .invalidInput, "\(path):\(index + 1): a NUL character (\\u0000) cannot be part of any value",
                    hint: "remove it")
            }
            if let control = line.unicodeScalars.first(where: { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7F }) {
                throw MartletError(
                    .invalidInput,
                    "\(path):\(index + 1): a control character (U+\(String(control.value, radix: 16, uppercase: true))) is not allowed in TOML",
                    hint: "remove it, or write it as an escape inside a string")
            }
            if !Self.headerStartsWithKey(line) {
                throw MartletError(
                    .invalidInput, "\(path):\(index + 1): a table header must start with a key, as in [network]",
                    hint: "fix the header on that line")
            }
        }
        if let line = Self.lineOfBraceAfterSeparator(contents) {
            throw MartletError(
                .invalidInput, "\(path):\(line): '}' where an array element or key should be",
                hint: "fix the brackets on that line")
        }
        self.path = path
        self.source = contents
        do {
            self.root = try TOMLTable(string: contents)
        } catch let error as TOMLParseError {
            throw MartletError(
                .invalidInput,
                "\(path):\(error.source.begin.line):\(error.source.begin.column): "
                    + "not valid TOML: \(error.description)",
                hint: "fix the syntax at that line")
        }
    }

    /// False for a line that opens a table header (`[` or `[[`) followed by anything but a
    /// key or `]`: toml++ asserts on such a header ("[" then a newline, "[#", "[{") instead
    /// of reporting it — an abort in debug builds, undefined behaviour in release ones. Found
    /// by the parser property test; no Martlet file has multi-line strings, so a line
    /// starting with '[' is a header or a nested array, and both start with a key or value.
    /// Scalars, not Characters: "[" followed by a combining mark (U+0362) is one Character
    /// that is not "[", and toml++ still reads it as a header (found by scripts/fuzz).
    static func headerStartsWithKey(_ line: Substring) -> Bool {
        var rest = line.unicodeScalars.drop { $0 == " " || $0 == "\t" }
        guard rest.first == "[" else { return true }
        rest = rest.dropFirst()
        if rest.first == "[" { rest = rest.dropFirst() }
        guard let first = rest.drop(while: { $0 == " " || $0 == "\t" }).first else { return false }
        return ("a"..."z").contains(first) || ("A"..."Z").contains(first) || ("0"..."9").contains(first)
            || "-_\"']".unicodeScalars.contains(first)
    }

    /// The line of a `}` that directly follows `[` or `,` (outside strings and comments):
    /// toml++ asserts on it ("a = [}") instead of reporting it, like on the headers above.
    /// A comment between them does not separate them ("a = [# note" then "}" on the next
    /// line; found by scripts/fuzz profile).
    static func lineOfBraceAfterSeparator(_ contents: String) -> Int? {
        var line = 1
        var quote: Unicode.Scalar?
        var escaped = false
        var comment = false
        var previous: Unicode.Scalar = "\n"
        for scalar in contents.unicodeScalars {
            if scalar == "\n" {
                line += 1
                comment = false
            }
            if comment { continue }
            if let open = quote {
                if escaped {
                    escaped = false
                } else if scalar == "\\" && open == "\"" {
                    escaped = true
                } else if scalar == open {
                    quote = nil
                }
                continue
            }
            switch scalar {
            case "#":
                comment = true
                continue
            case "\"", "'": quote = scalar
            case "}" where previous == "[" || previous == ",": return line
            case " ", "\t", "\n": continue
            default: break
            }
            previous = scalar
        }
        return nil
    }

    /// The top-level table.
    public var rootSection: TOMLSection { TOMLSection(document: self, keyPath: [], table: root) }

    /// `file:line:column` of a key (or table header) when it can be found in the source.
    public func location(of keyPath: [String]) -> String {
        guard let (line, column) = line(of: keyPath.joined(separator: ".")) else { return path }
        return "\(path):\(line):\(column)"
    }

    /// `(line, column)` of a dotted key or table, where `name[N]` is the N-th (from 0) table
    /// of an array of tables: `file[1].mode` is the `mode` key under the second `[[file]]`,
    /// as `TOMLSection.sections` names them. The one key-to-line scanner of the project.
    public func line(of dottedKey: String) -> (line: Int, column: Int)? {
        var counters: [String: Int] = [:]
        var header = ""
        func unquoted(_ text: some StringProtocol) -> String {
            text.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "\"", with: "")
                .replacingOccurrences(of: " ", with: "")
        }
        for (index, rawLine) in source.split(separator: "\n", omittingEmptySubsequences: false)
            .enumerated()
        {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            let column = rawLine.count - rawLine.drop(while: { $0 == " " || $0 == "\t" }).count + 1
            if line.hasPrefix("[[") {
                let name = unquoted(line.dropFirst(2).prefix { $0 != "]" })
                let count = counters[name, default: 0]
                counters[name] = count + 1
                header = "\(name)[\(count)]"
            } else if line.hasPrefix("[") {
                header = unquoted(line.dropFirst().prefix { $0 != "]" })
            } else {
                guard !line.hasPrefix("#"), let eq = line.firstIndex(of: "=") else { continue }
                let key = unquoted(line[..<eq])
                if (header.isEmpty ? key : "\(header).\(key)") == dottedKey {
                    return (index + 1, column)
                }
                continue
            }
            if header == dottedKey { return (index + 1, column) }
        }
        return nil
    }

    /// `value` as TOML text, written by TOMLKit's encoder (which quotes and escapes every
    /// string), after `comment` as `#` lines. Every TOML file Martlet writes goes through here.
    /// The values Martlet writes hold only strings, integers, booleans, arrays and tables,
    /// which always encode: a failure is a programming error (e.g. a `Date` or a `UInt64`
    /// added to a file's model), not something a user can cause or fix.
    public static func text(of value: some Encodable, comment: String? = nil) -> String {
        let body: String
        do {
            body = try TOMLEncoder(options: [.allowUnicodeStrings]).encode(value)
        } catch {
            preconditionFailure("\(type(of: value)) cannot be written as TOML: \(error)")
        }
        let header = comment.map {
            $0.split(separator: "\n", omittingEmptySubsequences: false).map { "# \($0)\n" }
                .joined() + "\n"
        }
        return (header ?? "") + body + (body.hasSuffix("\n") ? "" : "\n")
    }
}

/// One table of a `TOMLDocument`. Typed accessors record which keys were read;
/// `finish()` turns every key nobody asked for into an error.
public final class TOMLSection {
    public let document: TOMLDocument
    public let keyPath: [String]
    let table: TOMLTable
    private var consumed: Set<String> = []

    init(document: TOMLDocument, keyPath: [String], table: TOMLTable) {
        self.document = document
        self.keyPath = keyPath
        self.table = table
    }

    /// The dotted name of `key` in this section, e.g. `iso.label`.
    public func name(_ key: String) -> String { (keyPath + [key]).joined(separator: ".") }

    /// An error about `key` that names the file, line and key.
    public func error(
        _ key: String?, _ message: String, hint: String? = nil
    ) -> MartletError {
        let path = key.map { keyPath + [$0] } ?? keyPath
        let location = path.isEmpty ? document.path : document.location(of: path)
        let subject = path.isEmpty ? "" : "key '\(path.joined(separator: "."))': "
        return MartletError(.invalidInput, "\(location): \(subject)\(message)", hint: hint)
    }

    public func contains(_ key: String) -> Bool { table.contains(key: key) }

    /// The keys of this table, sorted, for tables whose keys are names the user picks
    /// (e.g. udev properties of a `filter` table); read each with a typed accessor.
    public var keys: [String] { table.keys.sorted() }

    private func value(_ key: String) -> TOMLValueConvertible? {
        consumed.insert(key)
        return table[key]
    }

    private func typeError(_ key: String, expected: String, found: TOMLValueConvertible)
        -> MartletError
    {
        error(key, "expected \(expected), found \(Self.describe(found.type))")
    }

    static func describe(_ type: TOMLType) -> String {
        switch type {
        case .table: "a table"
        case .array: "an array"
        case .string: "a string"
        case .int: "an integer"
        case .double: "a float"
        case .bool: "a boolean"
        case .date, .time, .dateTime: "a date/time"
        }
    }

    /// A string without NUL, control characters or line breaks (a trailing "\\n" would pass
    /// many pattern checks and end up in a file on the host).
    public func string(_ key: String) throws -> String? {
        guard let raw = value(key) else { return nil }
        guard let string = raw.string else { throw typeError(key, expected: "a string", found: raw) }
        try checkText(string, key)
        return string
    }

    private func checkText(_ text: String, _ key: String, element: Int? = nil) throws {
        do {
            try Text.check(text, field: name(key))
        } catch {
            let prefix = element.map { "element \($0 + 1): " } ?? ""
            throw self.error(key, prefix + error.problem, hint: error.hint)
        }
    }

    public func int(_ key: String) throws -> Int? {
        guard let raw = value(key) else { return nil }
        guard raw.type == .int, let int = raw.int else {
            throw typeError(key, expected: "an integer", found: raw)
        }
        return int
    }

    public func bool(_ key: String) throws -> Bool? {
        guard let raw = value(key) else { return nil }
        guard raw.type == .bool, let bool = raw.bool else {
            throw typeError(key, expected: "true or false", found: raw)
        }
        return bool
    }

    public func strings(_ key: String) throws -> [String]? {
        guard let raw = value(key) else { return nil }
        guard let array = raw.array else {
            throw typeError(key, expected: "an array of strings", found: raw)
        }
        return try array.enumerated().map { index, element in
            guard let string = element.string else {
                throw error(
                    key, "element \(index + 1) should be a string, found "
                        + Self.describe(element.type))
            }
            try checkText(string, key, element: index)
            return string
        }
    }

    /// A size written as a string with a unit (`"12GiB"`, `"512M"`) or an integer of bytes.
    public func size(_ key: String) throws -> ByteSize? {
        guard let raw = value(key) else { return nil }
        if raw.type == .int, let int = raw.int, int >= 0, UInt64(int) <= ByteSize.maximum.bytes {
            return ByteSize(UInt64(int))
        }
        guard let text = raw.string else {
            throw typeError(key, expected: "a size such as \"12GiB\"", found: raw)
        }
        guard let size = ByteSize(parsing: text) else {
            throw error(
                key, "\(quoted(text)) is not a size of whole bytes up to \(ByteSize.maximum)",
                hint: "write a number with a unit, e.g. \"12GiB\"")
        }
        return size
    }

    /// A string that must be one of `allowed`.
    public func choice(_ key: String, _ allowed: [String]) throws -> String? {
        guard let text = try string(key) else { return nil }
        guard allowed.contains(text) else {
            throw error(
                key, "'\(text)' is not one of \(allowed.map { "\"\($0)\"" }.joined(separator: ", "))")
        }
        return text
    }

    /// A sub-table, e.g. `[iso]`.
    public func section(_ key: String) throws -> TOMLSection? {
        guard let raw = value(key) else { return nil }
        guard let table = raw.table else { throw typeError(key, expected: "a table", found: raw) }
        return TOMLSection(document: document, keyPath: keyPath + [key], table: table)
    }

    /// An array of tables, e.g. `[[overlay]]`.
    public func sections(_ key: String) throws -> [TOMLSection]? {
        guard let raw = value(key) else { return nil }
        guard let array = raw.array else {
            throw typeError(key, expected: "an array of tables", found: raw)
        }
        return try array.enumerated().map { index, element in
            guard let table = element.table else {
                throw error(key, "element \(index + 1) should be a table")
            }
            return TOMLSection(
                document: document, keyPath: keyPath + ["\(key)[\(index)]"], table: table)
        }
    }

    /// Unwraps a required value or throws "missing key".
    public func required<T>(_ value: T?, _ key: String, hint: String? = nil) throws -> T {
        guard let value else {
            let section = keyPath.isEmpty ? "the top level" : "[\(keyPath.joined(separator: "."))]"
            throw MartletError(
                .invalidInput,
                "\(document.path): missing required key '\(name(key))' in \(section)",
                hint: hint)
        }
        return value
    }

    /// Keys present in the file that were never read: typos, or keys from another version.
    public func finish() throws {
        let unknown = table.keys.filter { !consumed.contains($0) }.sorted()
        guard let first = unknown.first else { return }
        let known = consumed.sorted()
        let suggestion = known.min(by: { Self.distance($0, first) < Self.distance($1, first) })
            .flatMap { Self.distance($0, first) <= 3 ? "did you mean '\(name($0))'? " : nil }
            ?? ""
        throw error(
            first,
            unknown.count == 1
                ? "unknown key" : "unknown keys \(unknown.map { "'\(name($0))'" }.joined(separator: ", "))",
            hint: "\(suggestion)known keys here: \(known.joined(separator: ", "))")
    }

    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a)
        let b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let old = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = old
            }
        }
        return row[b.count]
    }
}
