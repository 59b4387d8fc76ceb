#if canImport(Glibc)
    import Glibc
#endif

/// Ethernet addresses of NICs: "52:54:00:12:34:56", six groups of two hex digits.
public enum MACAddress {
    /// The six bytes, nil unless `text` is strictly six colon-separated pairs of hex digits
    /// (no signs, no single digits, no other separators).
    public static func bytes(_ text: String) -> [UInt8]? {
        let scalars = Array(text.unicodeScalars)
        guard scalars.count == 17 else { return nil }
        var bytes: [UInt8] = []
        for group in 0..<6 {
            let start = group * 3
            guard group == 5 || scalars[start + 2] == ":",
                let high = hexDigit(scalars[start]), let low = hexDigit(scalars[start + 1])
            else { return nil }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    /// The bytes of a MAC a NIC may have: unicast (which excludes broadcast) and not all zero.
    public static func parseUnicast(_ text: String, field: String) throws(InvalidInput) -> [UInt8] {
        guard let bytes = bytes(text) else {
            throw InvalidInput(field, "\(quoted(text)) is not a MAC address like 52:54:00:12:34:56")
        }
        guard bytes[0] & 1 == 0 else {
            throw InvalidInput(
                field, "\(quoted(text)) is a multicast or broadcast address",
                hint: "a NIC needs a unicast address: the first byte must be even (52:54:00:…, 02:…)")
        }
        guard bytes.contains(where: { $0 != 0 }) else {
            throw InvalidInput(field, "\(quoted(text)) is all zero; give a real address or leave it out")
        }
        return bytes
    }

    private static func hexDigit(_ scalar: Unicode.Scalar) -> UInt8? {
        switch scalar {
        case "0"..."9": UInt8(scalar.value - 48)
        case "a"..."f": UInt8(scalar.value - 87)
        case "A"..."F": UInt8(scalar.value - 55)
        default: nil
        }
    }
}

/// An IPv4 or IPv6 address, parsed by inet_pton (the judge the kernel's tools use).
public struct IPAddress: Equatable, Sendable {
    public let bytes: [UInt8]
    public var isIPv4: Bool { bytes.count == 4 }
    public var bitCount: Int { bytes.count * 8 }

    /// Nil unless `text` is an address of `family` (AF_INET or AF_INET6).
    public init?(_ text: String, family: Int32) {
        guard !text.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value > 0x7E }) else { return nil }
        var buffer = [UInt8](repeating: 0, count: 16)
        guard inet_pton(family, text, &buffer) == 1 else { return nil }
        bytes = Array(buffer.prefix(family == AF_INET ? 4 : 16))
    }

    /// Whether bit `index` (0 = most significant) is set.
    func bit(_ index: Int) -> Bool { bytes[index / 8] & (0x80 >> UInt8(index % 8)) != 0 }

    /// Whether this and `other` agree in the first `prefix` bits.
    public func sharesPrefix(_ prefix: Int, with other: IPAddress) -> Bool {
        bytes.count == other.bytes.count && (0..<prefix).allSatisfy { bit($0) == other.bit($0) }
    }

    var isLoopback: Bool { isIPv4 ? bytes[0] == 127 : bytes == [UInt8](repeating: 0, count: 15) + [1] }
    var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }
    var isMulticast: Bool { isIPv4 ? (224...239).contains(bytes[0]) : bytes[0] == 0xFF }
    /// fe80::/10, where IPv6 routers commonly answer.
    var isIPv6LinkLocal: Bool { !isIPv4 && bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80 }
}

/// A host's own address with its prefix length, "192.0.2.10/24" or "2001:db8::10/64".
public struct HostAddress: Equatable, Sendable {
    public let address: IPAddress
    public let prefix: Int

    /// Refuses anything but an address of `family` with a prefix of 1–32 (1–128) that a
    /// host can have: not loopback, unspecified or multicast, and in IPv4 subnets larger
    /// than /31 not the network or broadcast address.
    public init(parsing text: String, family: Int32, field: String) throws(InvalidInput) {
        let limit = family == AF_INET ? 32 : 128
        let example = family == AF_INET ? "192.0.2.10/24" : "2001:db8::10/64"
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPAddress(String(parts[0]), family: family) else {
            throw InvalidInput(field, "\(quoted(text)) is not an address with a prefix length like \(example)")
        }
        guard let prefix = Int(parts[1]), String(prefix) == parts[1], (1...limit).contains(prefix) else {
            throw InvalidInput(field, "\(quoted(text)): the prefix length must be 1 to \(limit)")
        }
        guard !address.isLoopback, !address.isUnspecified, !address.isMulticast else {
            throw InvalidInput(field, "\(quoted(text)) is a loopback, unspecified or multicast address, not a host's")
        }
        let hostBits = (prefix..<address.bitCount)
        if address.isIPv4 && prefix <= 30 {
            guard hostBits.contains(where: { address.bit($0) }) else {
                throw InvalidInput(field, "\(quoted(text)) is the network address of its subnet, not a host's")
            }
            guard hostBits.contains(where: { !address.bit($0) }) else {
                throw InvalidInput(field, "\(quoted(text)) is the broadcast address of its subnet, not a host's")
            }
        }
        self.address = address
        self.prefix = prefix
    }

    /// Refuses a gateway of the other family, or one outside this address's subnet (an
    /// IPv6 link-local router, fe80::/10, is reachable from any subnet).
    public func checkGateway(_ text: String, field: String) throws(InvalidInput) {
        guard let gateway = IPAddress(text, family: address.isIPv4 ? AF_INET : AF_INET6) else {
            throw InvalidInput(field, "\(quoted(text)) is not an IPv\(address.isIPv4 ? 4 : 6) address")
        }
        guard gateway != address else { throw InvalidInput(field, "\(quoted(text)) is the host's own address") }
        guard gateway.sharesPrefix(prefix, with: address) || gateway.isIPv6LinkLocal else {
            throw InvalidInput(field, "\(quoted(text)) is outside the host's subnet /\(prefix); a gateway must be reachable directly")
        }
    }
}
