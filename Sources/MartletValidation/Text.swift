/// Checks of free text from configuration files, answer files and requests.
public enum Text {
    /// Refuses NUL, other control characters (tab allowed), U+FFFD (bytes that were not
    /// UTF-8 when decoded) and, unless `allowLineBreaks`, line breaks — a trailing newline
    /// included, so `"hv1\n"` is not `hv1`. `maxBytes` bounds the UTF-8 length.
    public static func check(
        _ value: String, field: String, allowLineBreaks: Bool = false, maxBytes: Int? = nil
    ) throws(InvalidInput) {
        for scalar in value.unicodeScalars {
            switch scalar.value {
            case 0:
                throw InvalidInput(field, "\(quoted(value)) contains a NUL byte")
            case 0x0A where allowLineBreaks, 0x09:
                continue
            case 0x0A, 0x0D:
                throw InvalidInput(field, "\(quoted(value)) contains a line break", hint: "write it on one line")
            case 0..<0x20, 0x7F...0x9F:
                throw InvalidInput(field, "\(quoted(value)) contains a control character")
            case 0xFFFD:
                throw InvalidInput(field, "\(quoted(value)) is not valid UTF-8", hint: "save the file as UTF-8")
            default:
                continue
            }
        }
        if let maxBytes, value.utf8.count > maxBytes {
            throw InvalidInput(field, "is \(value.utf8.count) bytes long; at most \(maxBytes) fit")
        }
    }
}

/// Names Martlet turns into file names, LV names, unit instances and tap devices: one
/// pattern for VMs, volumes, pools and taps — lowercase letters, digits, '-' and '_',
/// starting with a letter or digit. No '/', '.', '%', or anything a shell or the kernel
/// would read differently.
public enum Name {
    /// VM, volume and pool names.
    public static let maxLength = 48
    /// Tap devices: the kernel's IFNAMSIZ less the NUL.
    public static let maxInterfaceLength = 15

    public static func rule(maxLength: Int = Name.maxLength) -> String {
        "use 1 to \(maxLength) characters a-z, 0-9, '-' and '_', starting with a letter or digit"
    }

    public static func isValid(_ name: String, maxLength: Int = Name.maxLength) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...maxLength).contains(bytes.count), isLowerAlphanumeric(bytes[0]) else { return false }
        return bytes.allSatisfy { isLowerAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }
    }

    /// Refuses a name that is not `isValid`; `what` says what it names ("VM name").
    public static func check(_ name: String, field: String, what: String = "name", maxLength: Int = Name.maxLength)
        throws(InvalidInput)
    {
        guard isValid(name, maxLength: maxLength) else {
            throw InvalidInput(field, "\(quoted(name)) is not a valid \(what)", hint: rule(maxLength: maxLength))
        }
    }

    /// A network interface name (a bridge, a tap, a host NIC): what the kernel accepts for
    /// a device (1 to 15 bytes, not "." or "..", no '/', ':' or white space), narrowed to
    /// ASCII letters, digits, '_', '.' and '-', so never a '%' template the kernel would fill in.
    public static func isInterfaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...maxInterfaceLength).contains(bytes.count), name != ".", name != ".." else { return false }
        return bytes.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-")
        }
    }

    private static func isLowerAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }
}
