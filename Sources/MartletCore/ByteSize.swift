import MartletValidation

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

    /// The largest size Martlet accepts (1 EiB): more than any disk or memory, and small
    /// enough that adding a few sizes cannot overflow.
    public static let maximum = ByteSize(1 << 60)

    /// Parses `text` to exact bytes; nil when it is not a size, not whole bytes ("1.1"), or
    /// larger than `maximum`.
    public init?(parsing text: String) {
        guard let bytes = ByteCount.bytes(text, maximum: ByteSize.maximum.bytes) else { return nil }
        self.bytes = bytes
    }

    /// The text `init(parsing:)` reads back to exactly these bytes ("1500MiB", not the
    /// rounded "1.5 GiB" of `description`): what is stored in files.
    public var exactText: String { ByteCount.exactText(bytes) }

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
