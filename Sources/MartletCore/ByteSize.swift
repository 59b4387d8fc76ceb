/// A size in bytes that reads and writes the human forms used in profiles and answer
/// files: `512MiB`, `12G`, `1.5 GiB`, `4096`. Decimal suffixes (KB, MB, GB, TB) are
/// powers of 1000, binary ones (K, M, G, T, KiB, MiB, …) powers of 1024.
public struct ByteSize: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    public var bytes: UInt64

    public init(_ bytes: UInt64) { self.bytes = bytes }
    public static func kib(_ n: UInt64) -> ByteSize { ByteSize(n << 10) }
    public static func mib(_ n: UInt64) -> ByteSize { ByteSize(n << 20) }
    public static func gib(_ n: UInt64) -> ByteSize { ByteSize(n << 30) }

    public static func < (a: ByteSize, b: ByteSize) -> Bool { a.bytes < b.bytes }

    private static let units: [(String, Double)] = [
        ("", 1), ("b", 1),
        ("k", 1024), ("kib", 1024), ("kb", 1000),
        ("m", Double(1 << 20)), ("mib", Double(1 << 20)), ("mb", 1e6),
        ("g", Double(1 << 30)), ("gib", Double(1 << 30)), ("gb", 1e9),
        ("t", Double(UInt64(1) << 40)), ("tib", Double(UInt64(1) << 40)), ("tb", 1e12),
    ]

    /// Parses `text`; returns nil when it is not a size.
    public init?(parsing text: String) {
        let trimmed = text.filter { $0 != " " && $0 != "_" }
        let numberPart = trimmed.prefix { $0.isNumber || $0 == "." }
        let unitPart = trimmed.dropFirst(numberPart.count).lowercased()
        guard !numberPart.isEmpty, let value = Double(numberPart),
            let scale = Self.units.first(where: { $0.0 == unitPart })?.1
        else { return nil }
        let result = value * scale
        guard result >= 0, result < Double(UInt64.max) else { return nil }
        self.bytes = UInt64(result.rounded())
    }

    /// The largest binary unit that keeps at least one whole unit: `1.5 GiB`, `512 MiB`.
    public var description: String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var index = 0
        while value >= 1024, index < units.count - 1 {
            value /= 1024
            index += 1
        }
        if index == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        let text =
            rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
        return "\(text) \(units[index])"
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        self.bytes = try container.decode(UInt64.self)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(bytes)
    }
}
