extension VMConfig {
    static let keys: Set<String> = [
        "vcpus", "memory_mib", "kernel", "firmware", "initrd", "cmdline", "disks", "nics", "rng", "serial", "serial_log", "on_reboot",
        "control_socket", "ap_start",
    ]
    static let diskKeys: Set<String> = ["path", "read_only", "id"]
    static let nicKeys: Set<String> = ["tap", "mac"]

    /// Decodes the JSON configuration (see Sources/martlet-vmm/README.md); unknown keys and
    /// wrong types are errors naming the field.
    public init(json text: String, source: String) throws {
        let json: JSON
        do {
            json = try JSON(parsing: text)
        } catch let error as VMMError {
            throw VMMError(.config, "\(source): \(error.message)")
        }
        guard case .object(let members) = json else { throw VMMError(.config, "\(source): the top level must be an object") }
        self.init()
        func fail(_ field: String, _ message: String) -> VMMError { VMMError(.config, "\(source): \(field): \(message)") }
        func integer(_ value: JSON, _ field: String) throws -> Int {
            guard case .number(let number) = value, number == number.rounded(), abs(number) < 1e15 else {
                throw fail(field, "expected an integer, got \(value.text)")
            }
            return Int(number)
        }
        func string(_ value: JSON, _ field: String) throws -> String {
            guard case .string(let text) = value else { throw fail(field, "expected a string, got \(value.text)") }
            return text
        }
        func bool(_ value: JSON, _ field: String) throws -> Bool {
            guard case .bool(let flag) = value else { throw fail(field, "expected true or false, got \(value.text)") }
            return flag
        }
        for (key, value) in members {
            switch key {
            case "vcpus": vcpus = try integer(value, key)
            case "memory_mib": memoryMiB = try integer(value, key)
            case "kernel": kernel = try string(value, key)
            case "firmware": firmware = try string(value, key)
            case "initrd": initrd = try string(value, key)
            case "cmdline": cmdline = try string(value, key)
            case "rng": rng = try bool(value, key)
            case "control_socket": controlSocket = try string(value, key)
            case "serial": serial = try SerialOutput(parsing: try string(value, key), field: "\(source): serial")
            case "serial_log": serialLog = try string(value, key)
            case "on_reboot":
                guard let policy = RebootPolicy(rawValue: try string(value, key)) else {
                    throw fail(key, "\(value.text) is not one of \"exit\", \"restart\"")
                }
                onReboot = policy
            case "ap_start":
                guard let start = APStart(rawValue: try string(value, key)) else {
                    throw fail(key, "\(value.text) is not one of \"sipi\", \"entry\"")
                }
                apStart = start
            case "nics":
                guard case .array(let entries) = value else { throw fail(key, "expected an array of nics") }
                for (index, entry) in entries.enumerated() {
                    let field = "nics[\(index)]"
                    guard case .object(let nicMembers) = entry else { throw fail(field, "expected an object") }
                    var nic = NIC(tap: "")
                    for (nicKey, nicValue) in nicMembers {
                        switch nicKey {
                        case "tap": nic.tap = try string(nicValue, "\(field).tap")
                        case "mac": nic.mac = try string(nicValue, "\(field).mac")
                        default:
                            throw fail("\(field).\(nicKey)", "unknown key; known keys: \(VMConfig.nicKeys.sorted().joined(separator: ", "))")
                        }
                    }
                    nics.append(nic)
                }
            case "disks":
                guard case .array(let entries) = value else { throw fail(key, "expected an array of disks") }
                for (index, entry) in entries.enumerated() {
                    let field = "disks[\(index)]"
                    guard case .object(let diskMembers) = entry else { throw fail(field, "expected an object") }
                    var disk = Disk(path: "")
                    for (diskKey, diskValue) in diskMembers {
                        switch diskKey {
                        case "path": disk.path = try string(diskValue, "\(field).path")
                        case "read_only": disk.readOnly = try bool(diskValue, "\(field).read_only")
                        case "id": disk.id = try string(diskValue, "\(field).id")
                        default:
                            throw fail("\(field).\(diskKey)", "unknown key; known keys: \(VMConfig.diskKeys.sorted().joined(separator: ", "))")
                        }
                    }
                    disks.append(disk)
                }
            default:
                throw fail(key, "unknown key; known keys: \(VMConfig.keys.sorted().joined(separator: ", "))")
            }
        }
        do {
            try validate()
        } catch let error as VMMError {
            throw VMMError(.config, "\(source): \(error.message)")
        }
    }
}

extension SerialOutput {
    /// "stdout", "none", "file:PATH" or "socket:PATH".
    public init(parsing text: String, field: String) throws {
        switch text {
        case "stdout": self = .stdout
        case "none": self = .none
        case _ where text.hasPrefix("file:") && text.count > 5: self = .file(String(text.dropFirst(5)))
        case _ where text.hasPrefix("socket:") && text.count > 7: self = .socket(String(text.dropFirst(7)))
        default:
            throw VMMError(.config, "\(field): '\(text)' is not \"stdout\", \"none\", \"file:PATH\" or \"socket:PATH\"")
        }
    }
}
