/// A value a parser refuses: which field (key, flag or argument) and what is wrong with it,
/// plus what to do when that is not obvious. Each parser wraps it in its own error type.
public struct InvalidInput: Error, Equatable, Sendable, CustomStringConvertible {
    /// The key, flag or argument, as the user wrote it ("nics[0].mac", "global.hostname").
    public var field: String
    /// What is wrong, without the field: "contains a NUL byte".
    public var problem: String
    public var hint: String?

    public init(_ field: String, _ problem: String, hint: String? = nil) {
        self.field = field
        self.problem = problem
        self.hint = hint
    }

    /// "nics[0].mac: '01:00:5e:00:00:01' is a multicast address; use a unicast one".
    public var description: String {
        "\(field): \(problem)" + (hint.map { "; \($0)" } ?? "")
    }
}

/// `'text'` for a message, with control characters and quotes escaped so a hostile value
/// cannot forge lines on a terminal or in a log.
public func quoted(_ text: String) -> String {
    var result = "'"
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\n": result += "\\n"
        case "\r": result += "\\r"
        case "\t": result += "\\t"
        case "'", "\\": result += "\\" + String(scalar)
        case _ where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value):
            let digits = String(scalar.value, radix: 16)
            result += "\\x" + String(repeating: "0", count: max(0, 2 - digits.count)) + digits
        default: result.unicodeScalars.append(scalar)
        }
    }
    return result + "'"
}
