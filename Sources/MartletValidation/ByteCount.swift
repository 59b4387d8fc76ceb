/// Sizes written as `512MiB`, `12G`, `1.5 GiB` or `4096`, parsed to exact bytes with
/// checked arithmetic: a value that is not a whole number of bytes or does not fit is
/// refused, never rounded or wrapped. Decimal suffixes (KB, MB, GB, TB) are powers of 1000,
/// binary ones (K, M, G, T, KiB, MiB, …) powers of 1024.
public enum ByteCount {
    static let units: [(suffix: String, scale: UInt64)] = [
        ("", 1), ("b", 1),
        ("k", 1 << 10), ("kib", 1 << 10), ("kb", 1_000),
        ("m", 1 << 20), ("mib", 1 << 20), ("mb", 1_000_000),
        ("g", 1 << 30), ("gib", 1 << 30), ("gb", 1_000_000_000),
        ("t", 1 << 40), ("tib", 1 << 40), ("tb", 1_000_000_000_000),
    ]

    /// The exact byte count of `text`, nil when it is not a size, not whole bytes, or more
    /// than `maximum` (default: what a signed 64-bit file offset holds).
    public static func bytes(_ text: String, maximum: UInt64 = UInt64(Int64.max)) -> UInt64? {
        let compact = text.unicodeScalars.filter { $0 != " " && $0 != "_" }
        let digits = compact.prefix { ("0"..."9").contains($0) || $0 == "." }
        let unit = String(String.UnicodeScalarView(compact.dropFirst(digits.count))).lowercased()
        let parts = String(String.UnicodeScalarView(digits)).split(separator: ".", omittingEmptySubsequences: false)
        guard let scale = units.first(where: { $0.suffix == unit })?.scale, (1...2).contains(parts.count),
            !parts[0].isEmpty, parts.count == 1 || !parts[1].isEmpty
        else { return nil }
        guard let whole = UInt64(parts[0]) else { return nil }
        var (total, overflow) = whole.multipliedReportingOverflow(by: scale)
        guard !overflow else { return nil }
        if parts.count == 2 {
            // fraction × scale must be whole bytes: 1.5 KiB is 1536, 1.1 B is refused.
            let fraction = parts[1]
            guard fraction.count <= 18, let numerator = UInt64(fraction) else { return nil }
            var denominator: UInt64 = 1
            for _ in 0..<fraction.count { denominator *= 10 }
            let (scaled, scaledOverflow) = numerator.multipliedFullWidth(by: scale)
            let (quotient, remainder) = denominator.dividingFullWidth((scaled, scaledOverflow))
            guard remainder == 0 else { return nil }
            (total, overflow) = total.addingReportingOverflow(quotient)
            guard !overflow else { return nil }
        }
        return total <= maximum ? total : nil
    }

    /// `bytes(text)` or an error naming `field` that says what a size looks like.
    public static func parse(_ text: String, field: String, maximum: UInt64 = UInt64(Int64.max))
        throws(InvalidInput) -> UInt64
    {
        guard let value = bytes(text, maximum: maximum) else {
            throw InvalidInput(
                field, "\(quoted(text)) is not a size of whole bytes up to \(maximum)",
                hint: "write a size like \"512MiB\", \"20GiB\" or \"4096\"")
        }
        return value
    }

    /// The shortest text `bytes(_:)` reads back to exactly `value`: the largest binary unit
    /// that divides it ("1500MiB", "2GiB", "1000").
    public static func exactText(_ value: UInt64) -> String {
        for (suffix, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] as [(String, UInt64)]
        where value != 0 && value & ((1 << shift) - 1) == 0 {
            return "\(value >> shift)\(suffix)"
        }
        return "\(value)"
    }
}
