/// Password hashes in the crypt(5) formats the installed host's libcrypt verifies.
public enum CryptHash {
    static let alphabet = Set("./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".unicodeScalars)

    static func isCryptText(_ text: Substring, count: ClosedRange<Int>) -> Bool {
        count.contains(text.count) && text.unicodeScalars.allSatisfy { alphabet.contains($0) }
    }

    /// Whether `hash` has the exact shape of a yescrypt ($y$, $gy$), scrypt ($7$),
    /// SHA-512 ($6$), SHA-256 ($5$), bcrypt ($2b$, $2a$, $2y$) or MD5 ($1$) crypt hash:
    /// its prefix, parameters, salt and hash lengths. `$6$x` is not one.
    public static func isValid(_ hash: String) -> Bool {
        let fields = hash.split(separator: "$", omittingEmptySubsequences: false)
        guard fields.count >= 4, fields[0].isEmpty else { return false }
        switch fields[1] {
        case "y", "gy":
            guard fields.count == 5 else { return false }
            return isCryptText(fields[2], count: 1...128) && isCryptText(fields[3], count: 0...128)
                && isCryptText(fields[4], count: 43...43)
        case "7":
            // Parameters (11 characters) and salt in one field.
            guard fields.count == 4 else { return false }
            return isCryptText(fields[2], count: 11...128) && isCryptText(fields[3], count: 43...43)
        case "6", "5":
            let hashLength = fields[1] == "6" ? 86 : 43
            var rest = fields.dropFirst(2)
            if let rounds = rest.first, rounds.hasPrefix("rounds=") {
                guard let count = Int(rounds.dropFirst(7)), (1000...999_999_999).contains(count) else { return false }
                rest = rest.dropFirst()
            }
            guard rest.count == 2 else { return false }
            return isCryptText(rest[rest.startIndex], count: 1...16) && isCryptText(rest[rest.startIndex + 1], count: hashLength...hashLength)
        case "2b", "2a", "2y":
            guard fields.count == 4, let cost = Int(fields[2]), fields[2].count == 2, (4...31).contains(cost) else { return false }
            return isCryptText(fields[3], count: 53...53)
        case "1":
            guard fields.count == 4 else { return false }
            return isCryptText(fields[2], count: 1...8) && isCryptText(fields[3], count: 22...22)
        default:
            return false
        }
    }

    public static func check(_ hash: String, field: String) throws(InvalidInput) {
        guard isValid(hash) else {
            throw InvalidInput(
                field, "is not a crypt(5) password hash ($y$, $6$, $5$, $2b$ … with a salt and a hash of the right length)",
                hint: "create one with: mkpasswd -m yescrypt   (or openssl passwd -6)")
        }
    }
}

/// One line of an OpenSSH public key ("ssh-ed25519 AAAA… comment"), parsed: a known type,
/// base64 that decodes, a blob that names the same type, and a sane length.
public enum SSHPublicKey {
    public static let types: Set<String> = [
        "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    ]
    /// An RSA key of 16384 bits is about 2 KiB; anything much larger is not a key.
    static let maxBlobBytes = 4096

    public static func check(_ line: String, field: String) throws(InvalidInput) {
        let hint = "paste one line of an id_*.pub file: \"ssh-ed25519 AAAA… comment\""
        try Text.check(line, field: field)
        let parts = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, types.contains(String(parts[0])) else {
            throw InvalidInput(field, "\(quoted(String(line.prefix(40)))) does not start with a known key type", hint: hint)
        }
        guard let blob = Base64.decode(parts[1]), (20...maxBlobBytes).contains(blob.count) else {
            throw InvalidInput(field, "the \(parts[0]) key's base64 does not decode to a key", hint: hint)
        }
        let length = blob.prefix(4).reduce(0) { $0 << 8 | Int($1) }
        guard length == parts[0].utf8.count, blob.count > 4 + length, Array(blob[4..<(4 + length)]) == Array(parts[0].utf8)
        else {
            throw InvalidInput(field, "the key's data is not a \(parts[0]) key", hint: hint)
        }
    }
}

/// Strict base64 (RFC 4648, with padding): nil for any other character or a bad length.
enum Base64 {
    static func decode(_ text: Substring) -> [UInt8]? {
        let scalars = Array(text.unicodeScalars)
        guard !scalars.isEmpty, scalars.count % 4 == 0 else { return nil }
        var bytes: [UInt8] = []
        var accumulator: UInt32 = 0
        var padding = 0
        for (index, scalar) in scalars.enumerated() {
            let value: UInt32
            switch scalar {
            case "A"..."Z": value = scalar.value - 65
            case "a"..."z": value = scalar.value - 71
            case "0"..."9": value = scalar.value + 4
            case "+": value = 62
            case "/": value = 63
            case "=" where index >= scalars.count - 2:
                padding += 1
                value = 0
            default: return nil
            }
            guard padding == 0 || scalar == "=" else { return nil }
            accumulator = accumulator << 6 | value
            if index % 4 == 3 {
                bytes += [UInt8(accumulator >> 16 & 0xFF), UInt8(accumulator >> 8 & 0xFF), UInt8(accumulator & 0xFF)]
                accumulator = 0
            }
        }
        return Array(bytes.dropLast(padding))
    }
}

/// A certificate's SHA-256 fingerprint as people copy it: 64 hex digits, with or without
/// colons (`openssl x509 -noout -fingerprint -sha256` prints AB:CD:…), any case.
public enum CertificateFingerprint {
    /// The fingerprint as 64 lower-case hex digits, or nil when `text` is not one.
    public static func sha256(_ text: String) -> String? {
        let hex = text.filter { $0 != ":" }.lowercased()
        guard hex.count == 64, hex.allSatisfy({ $0.isHexDigit }) else { return nil }
        return hex
    }
}
