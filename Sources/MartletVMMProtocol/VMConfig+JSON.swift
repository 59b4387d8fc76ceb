extension VMConfig {
    /// The keys of the JSON configuration (see Sources/martlet-vmm/README.md), each with the
    /// field it sets: a new key is one line here.
    static var fields: [JSONField<VMConfig>] {
        [
            .integer("vcpus", \.vcpus),
            .integer("memory_mib", \.memoryMiB),
            .string("kernel", \.kernel),
            .string("firmware", \.firmware),
            .string("initrd", \.initrd),
            .string("cmdline", \.cmdline),
            .objects("disks", \.disks, of: Disk(path: ""), fields: Disk.fields),
            .objects("nics", \.nics, of: NIC(tap: ""), fields: NIC.fields),
            .bool("rng", \.rng),
            JSONField(
                "serial", decode: { $0.serial = try SerialOutput(parsing: try $1.string($2), field: $2) },
                encode: { .string($0.serial.text) }),
            .string("serial_log", \.serialLog),
            .choice("on_reboot", \.onReboot),
            .string("control_socket", \.controlSocket),
            .choice("ap_start", \.apStart),
            .choice("seccomp", \.seccomp),
        ]
    }

    /// Decodes and validates the JSON configuration; errors start with `source` and name the
    /// key: unknown keys, wrong types and values out of range.
    public init(json text: String, source: String) throws {
        self.init()
        do {
            try JSON(parsing: text).decode(into: &self, fields: VMConfig.fields)
            try validate()
        } catch let error as ProtocolError {
            throw ProtocolError("\(source): \(error.message)")
        }
    }

    /// The configuration as JSON, every key written; `VMConfig(json:)` reads it back equal.
    public var json: JSON { JSON(encoding: self, fields: VMConfig.fields) }
}

extension VMConfig.Disk {
    static var fields: [JSONField<Self>] {
        [.string("path", \.path), .bool("read_only", \.readOnly), .string("id", \.id), .choice("cache", \.cache), .integer("queues", \.queues)]
    }
}

extension VMConfig.NIC {
    static var fields: [JSONField<Self>] {
        [.string("tap", \.tap), .string("mac", \.mac), .integer("queues", \.queues)]
    }
}

extension SerialOutput {
    /// "stdout", "none", "file:PATH" or "socket:PATH"; the error names `field`.
    public init(parsing text: String, field: String) throws {
        switch text {
        case "stdout": self = .stdout
        case "none": self = .none
        case _ where text.hasPrefix("file:") && text.count > 5: self = .file(String(text.dropFirst(5)))
        case _ where text.hasPrefix("socket:") && text.count > 7: self = .socket(String(text.dropFirst(7)))
        default:
            throw ProtocolError("\(field): '\(text)' is not \"stdout\", \"none\", \"file:PATH\" or \"socket:PATH\"")
        }
    }

    /// The form `init(parsing:field:)` reads.
    public var text: String {
        switch self {
        case .stdout: "stdout"
        case .none: "none"
        case .file(let path): "file:\(path)"
        case .socket(let path): "socket:\(path)"
        }
    }
}
