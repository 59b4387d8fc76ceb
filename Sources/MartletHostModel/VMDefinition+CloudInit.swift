import Foundation
import MartletCore

extension VMDefinition {
    /// What a cloud image learns on its first boot through cloud-init's NoCloud data source:
    /// the `[cloud-init]` table of a definition. The runner writes it as a seed disk
    /// (`CloudInitSeed`) at every start, so the guest always sees the current definition.
    public struct CloudInit: Codable, Equatable, Sendable {
        /// The guest's host name; the VM's name when nil.
        public var hostname: String?
        /// OpenSSH public keys (`TYPE BASE64 [COMMENT]`) for the image's default user.
        public var sshKeys: [String]
        /// A user-data file on the host given to the guest as it is, instead of the generated
        /// `#cloud-config` (the keys and host name still reach it through meta-data).
        public var userData: String?
        /// A static address `ADDRESS/PREFIX` for the first NIC; DHCP on every NIC when nil.
        public var ip: String?
        public var gateway: String?
        public var dns: [String]

        public init(
            hostname: String? = nil, sshKeys: [String] = [], userData: String? = nil,
            ip: String? = nil, gateway: String? = nil, dns: [String] = []
        ) {
            self.hostname = hostname
            self.sshKeys = sshKeys
            self.userData = userData
            self.ip = ip
            self.gateway = gateway
            self.dns = dns
        }

        enum CodingKeys: String, CodingKey {
            case hostname, sshKeys, userData, ip, gateway, dns
        }

        /// The API's JSON: every field optional, lists empty when left out.
        public init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            self.init(
                hostname: try container.decodeIfPresent(String.self, forKey: .hostname),
                sshKeys: try container.decodeIfPresent([String].self, forKey: .sshKeys) ?? [],
                userData: try container.decodeIfPresent(String.self, forKey: .userData),
                ip: try container.decodeIfPresent(String.self, forKey: .ip),
                gateway: try container.decodeIfPresent(String.self, forKey: .gateway),
                dns: try container.decodeIfPresent([String].self, forKey: .dns) ?? [])
        }

        /// The largest user-data file a seed takes.
        public static let maxUserDataBytes = 256 << 10
        /// The largest file `--ssh-key` reads.
        public static let maxKeyFileBytes = 64 << 10

        static let keys = ["hostname", "ssh-keys", "user-data", "ip", "gateway", "dns"]

        /// Reads a `[cloud-init]` table.
        init(section: TOMLSection) throws {
            self.init(
                hostname: try section.string("hostname"),
                sshKeys: try section.strings("ssh-keys") ?? [],
                userData: try section.string("user-data"), ip: try section.string("ip"),
                gateway: try section.string("gateway"), dns: try section.strings("dns") ?? [])
            try section.finish()
        }

        /// The first rule this table breaks: the key, what is wrong, what to do.
        func violation(vm: String, nics: [NIC]) -> (key: String, message: String, hint: String)? {
            if let hostname, !Self.isValidHostname(hostname) {
                return (
                    "hostname", "'\(hostname)' is not a valid host name",
                    "use labels of 1-63 letters, digits and '-' (not first or last), joined by dots"
                )
            }
            for (index, key) in sshKeys.enumerated() {
                if let problem = Self.sshKeyProblem(key) {
                    return ("ssh-keys", "key \(index + 1) is not an SSH public key: \(problem)",
                        "give the contents of an id_*.pub file: TYPE BASE64 [COMMENT]")
                }
            }
            // The file itself is checked where files are (`VMHost.checkReferences`) and read
            // at every start: a definition whose file went missing still lists and shows.
            if let userData, !userData.hasPrefix("/") {
                return ("user-data", "'\(userData)' is not an absolute path",
                    "write the full path of the user-data file on the host")
            }
            if let ip {
                guard nics.count > 0 else {
                    return ("ip", "a static address needs a NIC", "add a [[nic]] table, or leave ip out")
                }
                guard Self.parseCIDR(ip) != nil else {
                    return ("ip", "'\(ip)' is not ADDRESS/PREFIX", "write e.g. \"192.0.2.10/24\" or \"2001:db8::10/64\"")
                }
            } else if gateway != nil {
                return ("gateway", "a gateway needs a static address", "add ip = \"ADDRESS/PREFIX\", or leave gateway out for DHCP")
            }
            if let gateway, Self.family(gateway) == nil {
                return ("gateway", "'\(gateway)' is not an IP address", "write e.g. \"192.0.2.1\"")
            }
            for server in dns where Self.family(server) == nil {
                return ("dns", "'\(server)' is not an IP address", "write e.g. [\"192.0.2.1\"]")
            }
            return nil
        }

        /// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
        public static func isValidHostname(_ name: String) -> Bool {
            guard (1...253).contains(name.utf8.count) else { return false }
            return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
                (1...63).contains(label.utf8.count) && label.first != "-" && label.last != "-"
                    && label.unicodeScalars.allSatisfy {
                        ("a"..."z").contains($0) || ("A"..."Z").contains($0)
                            || ("0"..."9").contains($0) || $0 == "-"
                    }
            }
        }

        /// Key types OpenSSH writes to `.pub` files.
        static let sshKeyTypes: Set<String> = [
            "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
            "sk-ecdsa-sha2-nistp256@openssh.com",
        ]

        /// Why `line` is not `TYPE BASE64 [COMMENT]` with a known type whose blob names the
        /// same type (the SSH wire format: a length-prefixed type string first); nil when it is.
        static func sshKeyProblem(_ line: String) -> String? {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard fields.count >= 2 else { return "expected TYPE BASE64 [COMMENT]" }
            guard sshKeyTypes.contains(fields[0]) else {
                return "'\(fields[0].prefix(40))' is not a key type (\(sshKeyTypes.sorted().joined(separator: ", ")))"
            }
            guard let blob = Data(base64Encoded: fields[1]), blob.count > 4 else {
                return "the key data is not base64"
            }
            let bytes = [UInt8](blob)
            let length = Int(bytes[0]) << 24 | Int(bytes[1]) << 16 | Int(bytes[2]) << 8 | Int(bytes[3])
            guard length <= bytes.count - 4,
                String(decoding: bytes[4..<(4 + length)], as: UTF8.self) == fields[0]
            else { return "the key data is not a '\(fields[0])' key" }
            guard !line.contains("\n") else { return "it spans lines" }
            return nil
        }

        /// The public keys in an `id_*.pub` or authorized_keys-style file: its non-empty lines
        /// that are not comments, each checked.
        public static func readKeys(file path: String) throws -> [String] {
            let text = try readBounded(path, limit: maxKeyFileBytes, what: "SSH key file")
            let keys = text.split(separator: "\n").map {
                $0.trimmingCharacters(in: .whitespacesAndNewlines)
            }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
            guard !keys.isEmpty else {
                throw MartletError(
                    .invalidInput, "--ssh-key: '\(path)' holds no key",
                    hint: "give a public key file such as ~/.ssh/id_ed25519.pub")
            }
            for (index, key) in keys.enumerated() {
                if let problem = sshKeyProblem(key) {
                    throw MartletError(
                        .invalidInput, "--ssh-key: '\(path)' line \(index + 1) is not an SSH public key: \(problem)",
                        hint: "give the .pub file, never the private key")
                }
            }
            return keys
        }

        /// The contents of a regular file of at most `limit` bytes, as UTF-8.
        static func readBounded(_ path: String, limit: Int, what: String) throws -> String {
            var info = stat()
            guard stat(path, &info) == 0 else {
                throw MartletError(.notFound, "\(what) '\(path)' does not exist")
            }
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw MartletError(.invalidInput, "\(what) '\(path)' is not a regular file")
            }
            guard info.st_size <= limit else {
                throw MartletError(
                    .invalidInput,
                    "\(what) '\(path)' is \(ByteSize(UInt64(info.st_size))), more than \(ByteSize(UInt64(limit)))")
            }
            guard let data = FileManager.default.contents(atPath: path),
                let text = String(data: data, encoding: .utf8)
            else {
                throw MartletError(.invalidInput, "\(what) '\(path)' is not readable UTF-8 text")
            }
            return text
        }

        /// The user-data file's text, at most `maxUserDataBytes`.
        package func readUserData() throws -> String? {
            try userData.map {
                try Self.readBounded($0, limit: Self.maxUserDataBytes, what: "user-data file")
            }
        }

        /// AF_INET or AF_INET6 for an address, nil for anything else.
        package static func family(_ address: String) -> Int32? {
            var buffer = [UInt8](repeating: 0, count: 16)
            if inet_pton(AF_INET, address, &buffer) == 1 { return AF_INET }
            if inet_pton(AF_INET6, address, &buffer) == 1 { return AF_INET6 }
            return nil
        }

        /// `ADDRESS/PREFIX` with the prefix in range for the address family.
        static func parseCIDR(_ text: String) -> (address: String, prefix: Int, family: Int32)? {
            let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, let family = family(parts[0]), let prefix = Int(parts[1]),
                (0...(family == AF_INET ? 32 : 128)).contains(prefix), parts[1].allSatisfy(\.isNumber)
            else { return nil }
            return (parts[0], prefix, family)
        }
    }
}

/// The `[cloud-init]` table as the definition file writes it.
struct CloudInitTable: Encodable {
    var hostname: String?
    var sshKeys: [String]?
    var userData: String?
    var ip: String?
    var gateway: String?
    var dns: [String]?

    enum CodingKeys: String, CodingKey {
        case hostname, ip, gateway, dns
        case sshKeys = "ssh-keys"
        case userData = "user-data"
    }

    init(_ cloudInit: VMDefinition.CloudInit) {
        hostname = cloudInit.hostname
        sshKeys = cloudInit.sshKeys.isEmpty ? nil : cloudInit.sshKeys
        userData = cloudInit.userData
        ip = cloudInit.ip
        gateway = cloudInit.gateway
        dns = cloudInit.dns.isEmpty ? nil : cloudInit.dns
    }
}
