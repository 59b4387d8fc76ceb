import Foundation
import MartletCore
import MartletValidation

#if canImport(Glibc)
    import Glibc
#endif

/// An unattended install's answers, read strictly from TOML: every key is typed and checked,
/// unknown keys are errors, and every error names the file, line and dotted key. The text UI
/// builds the same value from its screens.
public struct AnswerFile: Codable, Sendable, Equatable {
    public var global: Global
    public var disk: DiskAnswer
    public var storage: StorageAnswer
    public var network: NetworkAnswer
    public var firstBoot: FirstBootAnswer?
    public var postInstall: PostInstallAnswer?

    public init(
        global: Global, disk: DiskAnswer, storage: StorageAnswer, network: NetworkAnswer,
        firstBoot: FirstBootAnswer? = nil, postInstall: PostInstallAnswer? = nil
    ) {
        self.global = global
        self.disk = disk
        self.storage = storage
        self.network = network
        self.firstBoot = firstBoot
        self.postInstall = postInstall
    }

    /// When the installed host runs its first-boot script.
    public enum FirstBootPoint: String, Codable, Sendable, CaseIterable {
        /// Before systemd-networkd configures any link.
        case beforeNetwork = "before-network"
        /// Once the management network is up (network-online.target).
        case networkOnline = "network-online"
        /// When the host is fully up (after multi-user.target).
        case multiUser = "multi-user"
    }

    /// `[first-boot]`: a script run once on the installed host's first boot.
    public struct FirstBootAnswer: Codable, Sendable, Equatable {
        /// A path on the boot medium or an http(s) URL; fetched at install time.
        public var script: String
        public var at: FirstBootPoint

        public init(script: String, at: FirstBootPoint = .multiUser) {
            self.script = script
            self.at = at
        }
    }

    /// `[post-install]`: who hears how the install went.
    public struct PostInstallAnswer: Codable, Sendable, Equatable {
        /// An http(s) URL that is POSTed the install result as JSON.
        public var webhook: String

        public init(webhook: String) { self.webhook = webhook }
    }

    /// What happens when the install has finished.
    public enum RebootMode: String, Codable, Sendable, CaseIterable {
        case reboot, poweroff, none
    }

    /// The root password, as typed or already hashed with crypt(3).
    public enum RootPassword: Codable, Sendable, Equatable {
        case plain(String)
        case hashed(String)
    }

    public struct Global: Codable, Sendable, Equatable {
        public var hostname: String
        public var timezone: String
        public var keyboard: String
        public var rootPassword: RootPassword?
        public var rootSSHKeys: [String]
        public var rebootMode: RebootMode

        public init(
            hostname: String, timezone: String = "UTC", keyboard: String = "us",
            rootPassword: RootPassword?, rootSSHKeys: [String] = [],
            rebootMode: RebootMode = .reboot
        ) {
            self.hostname = hostname
            self.timezone = timezone
            self.keyboard = keyboard
            self.rootPassword = rootPassword
            self.rootSSHKeys = rootSSHKeys
            self.rebootMode = rebootMode
        }
    }

    public enum Filesystem: String, Codable, Sendable, CaseIterable { case ext4, xfs }

    /// Software RAID levels the installer builds with mdadm.
    public enum RaidLevel: String, Codable, Sendable, CaseIterable { case raid1 }

    public struct DiskAnswer: Codable, Sendable, Equatable {
        /// The install disk; with `raid`, the first of `targets`, or the filter that selects them all.
        public var target: DiskSelector
        /// With `raid`: every disk of the array as listed in `targets` (empty when a
        /// `[disk.filter]` selects them, or without raid).
        public var targets: [DiskSelector]
        /// Mirror root, swap and storage over every target disk (md, metadata 1.2).
        public var raid: RaidLevel?
        /// Filesystem of a directory storage pool (the root filesystem is always ext4).
        public var filesystem: Filesystem
        public var rootSize: ByteSize?
        public var swapSize: ByteSize?
        public var wipe: Bool

        /// The smallest root filesystem an answer may ask for (the partition layout's floor).
        public static let minimumRootSize = ByteSize.gib(4)

        public init(
            target: DiskSelector, filesystem: Filesystem = .ext4, rootSize: ByteSize? = nil,
            swapSize: ByteSize? = nil, wipe: Bool = false, targets: [DiskSelector] = [],
            raid: RaidLevel? = nil
        ) {
            self.target = target
            self.targets = targets
            self.raid = raid
            self.filesystem = filesystem
            self.rootSize = rootSize
            self.swapSize = swapSize
            self.wipe = wipe
        }
    }

    public enum StorageType: String, Codable, Sendable, CaseIterable {
        case lvmThin = "lvm-thin"
        case directory
    }

    public struct StorageAnswer: Codable, Sendable, Equatable {
        public var type: StorageType
        public var volumeGroup: String
        public var extraDisks: [DiskSelector]

        public init(
            type: StorageType = .lvmThin, volumeGroup: String = "martlet",
            extraDisks: [DiskSelector] = []
        ) {
            self.type = type
            self.volumeGroup = volumeGroup
            self.extraDisks = extraDisks
        }
    }

    public enum AddressMode: String, Codable, Sendable, CaseIterable { case dhcp, `static` }

    /// IPv6 on the bridge: router advertisements, off, or a static address.
    public enum IPv6Mode: Codable, Sendable, Equatable {
        case auto
        case off
        case address(String)
    }

    /// How a bond spreads traffic over its NICs (the kernel bonding driver's modes).
    public enum BondMode: String, Codable, Sendable, CaseIterable {
        case lacp = "802.3ad"
        case activeBackup = "active-backup"
        case balanceALB = "balance-alb"
    }

    /// How often an 802.3ad partner sends LACP frames.
    public enum LACPRate: String, Codable, Sendable, CaseIterable { case slow, fast }

    /// Two or more NICs bonded into `bond0` under the bridge.
    public struct BondAnswer: Codable, Sendable, Equatable {
        /// Each selector picks one NIC, except `.filter`, which picks every NIC it matches.
        public var members: [InterfaceSelector]
        public var mode: BondMode
        /// Only with `.lacp`; nil leaves the kernel's default (slow).
        public var lacpRate: LACPRate?
        /// Link monitoring interval in milliseconds.
        public var miimon: Int

        public static let defaultMIIMon = 100

        public init(
            members: [InterfaceSelector], mode: BondMode, lacpRate: LACPRate? = nil,
            miimon: Int = BondAnswer.defaultMIIMon
        ) {
            self.members = members
            self.mode = mode
            self.lacpRate = lacpRate
            self.miimon = miimon
        }
    }

    public struct NetworkAnswer: Codable, Sendable, Equatable {
        /// The one management NIC; nil when `bond` is set (exactly one of the two is).
        public var interface: InterfaceSelector?
        public var bond: BondAnswer?
        /// One MTU for every link of the management network (NICs, bond, VLAN, bridge), so
        /// the links cannot disagree; nil keeps the default (1500).
        public var mtu: Int?
        public var mode: AddressMode
        public var address: String?
        public var gateway: String?
        public var dns: [String]
        public var ipv6: IPv6Mode
        public var ipv6Gateway: String?
        public var vlan: Int?

        /// The MTUs Ethernet NICs and switches commonly accept: IPv4's minimum to jumbo frames.
        public static let mtuRange = 576...9216

        public init(
            interface: InterfaceSelector?, bond: BondAnswer? = nil, mtu: Int? = nil,
            mode: AddressMode = .dhcp, address: String? = nil,
            gateway: String? = nil, dns: [String] = [], ipv6: IPv6Mode = .auto,
            ipv6Gateway: String? = nil, vlan: Int? = nil
        ) {
            self.interface = interface
            self.bond = bond
            self.mtu = mtu
            self.mode = mode
            self.address = address
            self.gateway = gateway
            self.dns = dns
            self.ipv6 = ipv6
            self.ipv6Gateway = ipv6Gateway
            self.vlan = vlan
        }
    }
}

/// Disks chosen by udev properties and size bounds, like Proxmox's `filter.*`: every glob
/// must match and the size must lie within the bounds.
public struct DiskFilter: Codable, Sendable, Equatable, CustomStringConvertible {
    public var globs: [PropertyGlob]
    public var minSize: ByteSize?
    public var maxSize: ByteSize?

    public init(globs: [PropertyGlob] = [], minSize: ByteSize? = nil, maxSize: ByteSize? = nil) {
        self.globs = globs
        self.minSize = minSize
        self.maxSize = maxSize
    }

    /// Whether a disk of `size` with udev `properties` passes (a missing property fails).
    public func matches(size: ByteSize, properties: [String: String]) -> Bool {
        if let minSize, size < minSize { return false }
        if let maxSize, size > maxSize { return false }
        return globs.allSatisfy { $0.matches(properties) }
    }

    public var description: String {
        let terms =
            globs.map(\.description) + (minSize.map { ["min-size=\($0.exactText)"] } ?? [])
            + (maxSize.map { ["max-size=\($0.exactText)"] } ?? [])
        return "filter " + terms.joined(separator: ",")
    }
}

/// How the answer names a disk: a device path, a property that must match exactly one disk,
/// or a filter that must.
public enum DiskSelector: Codable, Sendable, Equatable, CustomStringConvertible {
    case filter(DiskFilter)
    case path(String)
    case serial(String)
    case model(String)
    case wwn(String)
    case smallest
    case largest

    /// Parses `/dev/sda`, `serial:S`, `model:M`, `wwn:W`, `size:smallest`, `size:largest`.
    public init?(parsing text: String) {
        func rest(_ prefix: String) -> String? {
            guard text.hasPrefix(prefix) else { return nil }
            let value = String(text.dropFirst(prefix.count))
            return value.isEmpty ? nil : value
        }
        if text.hasPrefix("/dev/"), text.count > 5 {
            self = .path(text)
        } else if text.hasPrefix("serial:") {
            guard let value = rest("serial:") else { return nil }
            self = .serial(value)
        } else if text.hasPrefix("model:") {
            guard let value = rest("model:") else { return nil }
            self = .model(value)
        } else if text.hasPrefix("wwn:") {
            guard let value = rest("wwn:") else { return nil }
            self = .wwn(value)
        } else if text == "size:smallest" {
            self = .smallest
        } else if text == "size:largest" {
            self = .largest
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .path(let path): path
        case .serial(let value): "serial:\(value)"
        case .model(let value): "model:\(value)"
        case .wwn(let value): "wwn:\(value)"
        case .smallest: "size:smallest"
        case .largest: "size:largest"
        case .filter(let filter): filter.description
        }
    }
}

/// A udev property and a glob its value must match (fnmatch(3): `*`, `?`, `[...]`), e.g.
/// `ID_NET_NAME_PATH` and `enp1s*`.
public struct PropertyGlob: Codable, Sendable, Equatable, CustomStringConvertible {
    public var property: String
    public var pattern: String

    public init(property: String, pattern: String) {
        self.property = property
        self.pattern = pattern
    }

    /// udev property names: upper-case letters, digits and '_'.
    public static func isPropertyName(_ name: String) -> Bool {
        name.range(of: #"^[A-Z][A-Z0-9_]{0,63}$"#, options: .regularExpression) != nil
    }

    /// Whether `properties` has this property with a value the glob matches.
    public func matches(_ properties: [String: String]) -> Bool {
        properties[property].map { fnmatch(pattern, $0, 0) == 0 } ?? false
    }

    public var description: String { "\(property)=\(pattern)" }
}

/// A management NIC: by kernel name, by MAC address, or by udev properties.
public enum InterfaceSelector: Codable, Sendable, Equatable, CustomStringConvertible {
    case name(String)
    case mac(String)
    /// Every NIC whose udev properties match all the globs.
    case filter([PropertyGlob])

    public init?(parsing text: String) {
        if NetworkSyntax.isMAC(text) {
            self = .mac(text.lowercased())
        } else if NetworkSyntax.isInterfaceName(text) {
            self = .name(text)
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .name(let name): name
        case .mac(let mac): mac
        case .filter(let globs): globs.map(\.description).joined(separator: ",")
        }
    }
}

extension AnswerFile {
    /// Reads and validates the answer file at `path`.
    public static func load(path: String) throws -> AnswerFile {
        try parse(TOMLDocument(path: path))
    }

    /// Parses and validates `contents`; `path` names the file in errors.
    public static func parse(path: String, contents: String) throws -> AnswerFile {
        try parse(TOMLDocument(path: path, contents: contents))
    }

    static func parse(_ document: TOMLDocument) throws -> AnswerFile {
        let root = document.rootSection
        let globalSection = try root.required(root.section("global"), "global")
        let diskSection = try root.required(root.section("disk"), "disk")
        let storageSection = try root.section("storage")
        let networkSection = try root.required(root.section("network"), "network")
        let firstBoot = try root.section("first-boot").map(parseFirstBoot)
        let postInstall = try root.section("post-install").map(parsePostInstall)
        try root.finish()

        let global = try parseGlobal(globalSection)
        let disk = try parseDisk(diskSection)
        let storage = try storageSection.map(parseStorage) ?? StorageAnswer()
        let network = try parseNetwork(networkSection)
        let answer = AnswerFile(
            global: global, disk: disk, storage: storage, network: network, firstBoot: firstBoot,
            postInstall: postInstall)
        if let storageSection,
            let shared = storage.extraDisks.first(where: { ([disk.target] + disk.targets).contains($0) })
        {
            throw storageSection.error(
                "extra-disks",
                "'\(shared)' is also an install target ([disk] \(disk.targets.isEmpty ? "target" : "targets"))",
                hint: "list only other disks as extra storage")
        }
        return answer
    }

    static func isURL(_ text: String) -> Bool {
        text.range(of: #"^https?://[^\s/?#]+[^\s]*$"#, options: .regularExpression) != nil
    }

    private static func parseFirstBoot(_ section: TOMLSection) throws -> FirstBootAnswer {
        let script = try section.required(
            section.string("script"), "script",
            hint: "a path on the boot medium (\"/hooks/first-boot.sh\") or an http(s) URL")
        let pathPattern = #"^/[A-Za-z0-9._+\-/]+$"#
        guard isURL(script)
            || (script.range(of: pathPattern, options: .regularExpression) != nil
                && !script.split(separator: "/").contains(".."))
        else {
            throw section.error(
                "script", "'\(script)' is neither a path on the boot medium nor an http(s) URL",
                hint: "e.g. \"/hooks/first-boot.sh\" or \"https://deploy.example.org/hv1.sh\"")
        }
        let at =
            try section.choice("at", FirstBootPoint.allCases.map(\.rawValue))
            .flatMap(FirstBootPoint.init(rawValue:)) ?? .multiUser
        try section.finish()
        return FirstBootAnswer(script: script, at: at)
    }

    private static func parsePostInstall(_ section: TOMLSection) throws -> PostInstallAnswer {
        let webhook = try section.required(
            section.string("webhook"), "webhook", hint: "the http(s) URL that hears the result")
        guard isURL(webhook) else {
            throw section.error(
                "webhook", "'\(webhook)' is not an http(s) URL",
                hint: "e.g. \"https://deploy.example.org/installed\"")
        }
        try section.finish()
        return PostInstallAnswer(webhook: webhook)
    }

    private static func parseGlobal(_ section: TOMLSection) throws -> Global {
        let hostname = try section.required(section.string("hostname"), "hostname")
        guard NetworkSyntax.isHostname(hostname) else {
            throw section.error(
                "hostname", "'\(hostname)' is not a valid host name",
                hint: "use letters, digits and '-', labels of 1-63 characters separated by '.'")
        }
        let timezone = try section.string("timezone") ?? "UTC"
        let zonePattern = #"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$"#
        guard timezone.range(of: zonePattern, options: .regularExpression) != nil,
            !timezone.contains("..")
        else {
            throw section.error(
                "timezone", "'\(timezone)' is not a time zone name",
                hint: "use a tz database name such as \"Europe/Paris\" or \"UTC\"")
        }
        let keyboard = try section.string("keyboard") ?? "us"
        guard
            keyboard.range(of: #"^[a-z]{2,8}(:[A-Za-z0-9_\-]+)?$"#, options: .regularExpression)
                != nil
        else {
            throw section.error(
                "keyboard", "'\(keyboard)' is not a keyboard layout",
                hint: "use an XKB layout such as \"us\", \"de\" or \"fr:bepo\" (layout:variant)")
        }
        let plain = try section.string("root-password")
        let hash = try section.string("root-password-hash")
        var password: RootPassword?
        switch (plain, hash) {
        case (.some, .some):
            throw section.error(
                "root-password-hash", "conflicts with 'global.root-password'",
                hint: "give either root-password or root-password-hash, not both")
        case (.some(let plain), nil):
            guard !plain.isEmpty else {
                throw section.error(
                    "root-password", "is empty", hint: "set a password or remove the key")
            }
            guard !plain.contains("\n"), !plain.contains(":") else {
                throw section.error("root-password", "must not contain ':' or a line break")
            }
            password = .plain(plain)
        case (nil, .some(let hash)):
            do {
                try CryptHash.check(hash, field: section.name("root-password-hash"))
            } catch {
                throw section.error("root-password-hash", error.problem, hint: error.hint)
            }
            password = .hashed(hash)
        case (nil, nil):
            password = nil
        }
        let keys = try section.strings("root-ssh-keys") ?? []
        for (index, key) in keys.enumerated() {
            do {
                try SSHPublicKey.check(key, field: section.name("root-ssh-keys"))
            } catch {
                throw section.error(
                    "root-ssh-keys", "element \(index + 1): \(error.problem)", hint: error.hint)
            }
        }
        if password == nil && keys.isEmpty {
            throw section.error(
                "root-password",
                "missing: the installed host would have no way to log in as root",
                hint: "set root-password, root-password-hash or root-ssh-keys")
        }
        let mode =
            try section.choice("reboot-mode", RebootMode.allCases.map(\.rawValue))
            .flatMap(RebootMode.init(rawValue:)) ?? .reboot
        try section.finish()
        return Global(
            hostname: hostname, timezone: timezone, keyboard: keyboard, rootPassword: password,
            rootSSHKeys: keys, rebootMode: mode)
    }

    private static func diskSelector(_ section: TOMLSection, _ key: String, _ text: String) throws
        -> DiskSelector
    {
        guard let selector = DiskSelector(parsing: text) else {
            throw section.error(
                key, "'\(text)' does not name a disk",
                hint: "use a path (\"/dev/sda\", \"/dev/disk/by-id/...\"), \"serial:...\", "
                    + "\"model:...\", \"wwn:...\", \"size:smallest\" or \"size:largest\"")
        }
        return selector
    }

    /// A `[disk.filter]` table: upper-case keys are udev property globs, `min-size` and
    /// `max-size` bound the size.
    private static func parseDiskFilter(_ section: TOMLSection) throws -> DiskFilter {
        var filter = DiskFilter()
        filter.minSize = try section.size("min-size")
        filter.maxSize = try section.size("max-size")
        if let min = filter.minSize, let max = filter.maxSize, min > max {
            throw section.error(
                "max-size", "\(max.exactText) is below min-size \(min.exactText)",
                hint: "no disk can match; swap or widen the bounds")
        }
        filter.globs = try propertyGlobs(
            section, besides: ["min-size", "max-size"], example: "ID_SERIAL = \"S3Z*\"")
        if filter.globs.isEmpty && filter.minSize == nil && filter.maxSize == nil {
            throw section.error(
                nil, "is empty",
                hint: "give udev property globs (ID_MODEL = \"*SSD*\") and/or min-size/max-size")
        }
        try section.finish()
        return filter
    }

    private static func parseDisk(_ section: TOMLSection) throws -> DiskAnswer {
        let targetText = try section.string("target")
        let targetsText = try section.strings("targets")
        let filterSection = try section.section("filter")
        let raid = try section.choice("raid", RaidLevel.allCases.map(\.rawValue))
            .flatMap(RaidLevel.init(rawValue:))
        let raidHint =
            "a mirror needs two or more disks: targets = [\"/dev/sda\", \"/dev/sdb\"] with "
            + "raid = \"raid1\", or a [disk.filter] that matches them"
        var targets: [DiskSelector] = []
        let target: DiskSelector
        switch (targetText, targetsText, filterSection) {
        case (.some(let text), nil, nil):
            if raid != nil {
                throw section.error(
                    "raid", "needs two or more disks, and 'disk.target' names one", hint: raidHint)
            }
            target = try diskSelector(section, "target", text)
        case (nil, .some(let texts), nil):
            guard let raid else {
                throw section.error(
                    "targets", "lists several disks but no 'disk.raid' level says what to do with them",
                    hint: "add raid = \"raid1\" to mirror them, or use target = \"...\" for one disk")
            }
            guard texts.count >= 2 else {
                throw section.error(
                    "targets", "\(raid.rawValue) needs two or more disks, \(texts.count) listed",
                    hint: raidHint)
            }
            for text in texts {
                let selector = try diskSelector(section, "targets", text)
                guard !targets.contains(selector) else {
                    throw section.error(
                        "targets", "'\(text)' is listed twice",
                        hint: "each disk of the mirror may appear once")
                }
                targets.append(selector)
            }
            target = targets[0]
        case (nil, nil, .some(let filter)): target = .filter(try parseDiskFilter(filter))
        case (.some, .some, _):
            throw section.error(
                "targets", "conflicts with 'disk.target'",
                hint: "one disk: target = \"...\"; a mirror: targets = [...] with raid = \"raid1\"")
        case (_, _, .some):
            throw section.error(
                "filter", "conflicts with 'disk.\(targetText == nil ? "targets" : "target")'",
                hint: "choose the disks either by target(s) or by a [disk.filter] table")
        case (nil, nil, nil):
            throw section.error(
                "target", "missing: no disk to install on",
                hint: "name the disk to install on, e.g. target = \"/dev/sda\", or give a "
                    + "[disk.filter] table; `martlet-installer disks` lists them")
        }
        let filesystem =
            try section.choice("filesystem", Filesystem.allCases.map(\.rawValue))
            .flatMap(Filesystem.init(rawValue:)) ?? .ext4
        let rootSize = try section.size("root-size")
        if let rootSize, rootSize < DiskAnswer.minimumRootSize {
            throw section.error(
                "root-size", "\(rootSize) is too small",
                hint: "the root filesystem needs at least \(DiskAnswer.minimumRootSize)")
        }
        let swapSize = try section.size("swap-size")
        let wipe = try section.bool("wipe") ?? false
        try section.finish()
        return DiskAnswer(
            target: target, filesystem: filesystem,
            rootSize: rootSize, swapSize: swapSize.flatMap { $0.bytes == 0 ? nil : $0 }, wipe: wipe,
            targets: targets, raid: raid)
    }

    private static func parseStorage(_ section: TOMLSection) throws -> StorageAnswer {
        let type =
            try section.choice("type", StorageType.allCases.map(\.rawValue))
            .flatMap(StorageType.init(rawValue:)) ?? .lvmThin
        let group = try section.string("volume-group") ?? "martlet"
        guard
            group.range(of: #"^[A-Za-z0-9_+][A-Za-z0-9_+.\-]{0,63}$"#, options: .regularExpression)
                != nil
        else {
            throw section.error(
                "volume-group", "'\(group)' is not a valid LVM volume group name",
                hint: "use letters, digits, '_', '+', '.', '-' (not starting with '-')")
        }
        var extra: [DiskSelector] = []
        for text in try section.strings("extra-disks") ?? [] {
            let selector = try diskSelector(section, "extra-disks", text)
            guard !extra.contains(selector) else {
                throw section.error("extra-disks", "'\(text)' is listed twice")
            }
            extra.append(selector)
        }
        try section.finish()
        return StorageAnswer(type: type, volumeGroup: group, extraDisks: extra)
    }

    private static func interfaceSelector(_ section: TOMLSection, _ key: String, _ text: String)
        throws -> InterfaceSelector
    {
        guard let selector = InterfaceSelector(parsing: text) else {
            throw section.error(
                key, "'\(text)' is neither an interface name nor a MAC address",
                hint: "e.g. \"eno1\" or \"52:54:00:12:34:56\"; "
                    + "to match udev properties use a filter table")
        }
        return selector
    }

    /// The udev property globs of a filter table: every key except `besides`.
    static func propertyGlobs(_ section: TOMLSection, besides: Set<String>, example: String)
        throws -> [PropertyGlob]
    {
        var globs: [PropertyGlob] = []
        for property in section.keys where !besides.contains(property) {
            guard PropertyGlob.isPropertyName(property) else {
                let others = besides.sorted().joined(separator: ", ")
                throw section.error(
                    property, "is not a udev property name" + (others.isEmpty ? "" : " (nor \(others))"),
                    hint: "use the name as `udevadm info` prints it (upper case), e.g. \(example)")
            }
            let pattern = try section.required(section.string(property), property)
            guard !pattern.isEmpty else {
                throw section.error(property, "is empty", hint: "give a glob, e.g. \(example)")
            }
            globs.append(PropertyGlob(property: property, pattern: pattern))
        }
        return globs
    }

    /// A NIC `filter` table of udev property globs, e.g. `ID_NET_NAME_PATH = "enp1s*"`.
    static func parseFilter(_ section: TOMLSection) throws -> [PropertyGlob] {
        let globs = try propertyGlobs(section, besides: [], example: "ID_NET_NAME_PATH = \"enp1s*\"")
        guard !globs.isEmpty else {
            throw section.error(
                nil, "is empty", hint: "give at least one udev property, e.g. ID_NET_NAME_PATH = \"enp1s*\"")
        }
        try section.finish()
        return globs
    }

    private static func parseBond(_ section: TOMLSection) throws -> BondAnswer {
        let names = try section.strings("interfaces")
        let filter = try section.section("filter")
        var members: [InterfaceSelector] = []
        switch (names, filter) {
        case (.some, .some):
            throw section.error(
                "filter", "conflicts with 'network.bond.interfaces'",
                hint: "choose the NICs either by name/MAC (interfaces) or by udev properties (filter)")
        case (nil, nil):
            throw section.error(
                "interfaces", "missing: a bond needs its NICs",
                hint: "e.g. interfaces = [\"eno1\", \"eno2\"], or a [network.bond.filter] table")
        case (.some(let names), nil):
            for name in names {
                let selector = try interfaceSelector(section, "interfaces", name)
                guard !members.contains(selector) else {
                    throw section.error(
                        "interfaces", "'\(name)' is listed twice",
                        hint: "a NIC can have one role in the bond")
                }
                members.append(selector)
            }
            guard members.count >= 2 else {
                throw section.error(
                    "interfaces", "a bond needs at least 2 NICs, found \(members.count)",
                    hint: "list two or more NICs, or use interface = \"...\" without a bond")
            }
        case (nil, .some(let filter)):
            members = [.filter(try parseFilter(filter))]
        }
        let mode = try section.required(
            section.choice("mode", BondMode.allCases.map(\.rawValue)).flatMap(BondMode.init(rawValue:)),
            "mode", hint: "one of \(BondMode.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
        let rate = try section.choice("lacp-rate", LACPRate.allCases.map(\.rawValue))
            .flatMap(LACPRate.init(rawValue:))
        if rate != nil, mode != .lacp {
            throw section.error(
                "lacp-rate", "is only used with mode = \"802.3ad\" (this bond is \"\(mode.rawValue)\")",
                hint: "remove lacp-rate or set mode = \"802.3ad\"")
        }
        let miimon = try section.int("miimon") ?? BondAnswer.defaultMIIMon
        guard (1...60_000).contains(miimon) else {
            throw section.error(
                "miimon", "\(miimon) is not a link monitoring interval",
                hint: "give milliseconds from 1 to 60000 (100 is usual)")
        }
        try section.finish()
        return BondAnswer(members: members, mode: mode, lacpRate: rate, miimon: miimon)
    }

    private static func parseNetwork(_ section: TOMLSection) throws -> NetworkAnswer {
        let interfaceText = try section.string("interface")
        let filter = try section.section("filter")
        let bond = try section.section("bond").map(parseBond)
        var interface: InterfaceSelector?
        switch (interfaceText, filter, bond) {
        case (.some(let text), nil, nil):
            interface = try interfaceSelector(section, "interface", text)
        case (nil, .some(let filter), nil):
            interface = .filter(try parseFilter(filter))
        case (nil, nil, .some):
            interface = nil
        case (nil, nil, nil):
            throw section.error(
                "interface", "missing: no management NIC",
                hint: "name the management NIC, e.g. interface = \"eno1\" or a MAC address, "
                    + "or give a [network.filter] or [network.bond] table")
        default:
            let given = [
                interfaceText.map { _ in "interface" }, filter.map { _ in "filter" },
                bond.map { _ in "bond" },
            ].compactMap { $0 }
            throw section.error(
                given[1], "conflicts with 'network.\(given[0])'",
                hint: "give one of interface, [network.filter] or [network.bond]")
        }
        let mtu = try section.int("mtu")
        if let mtu, !NetworkAnswer.mtuRange.contains(mtu) {
            throw section.error(
                "mtu", "\(mtu) is not an Ethernet MTU",
                hint: "use \(NetworkAnswer.mtuRange.lowerBound) to \(NetworkAnswer.mtuRange.upperBound) (1500 is the default, 9000 for jumbo frames)")
        }
        let mode =
            try section.choice("mode", AddressMode.allCases.map(\.rawValue))
            .flatMap(AddressMode.init(rawValue:)) ?? .dhcp
        let address = try section.string("address")
        let gateway = try section.string("gateway")
        switch mode {
        case .static:
            let address = try section.required(
                address, "address", hint: "mode = \"static\" needs address = \"192.0.2.10/24\"")
            let host = try hostAddress(section, "address", address, family: AF_INET)
            if let gateway { try checkGateway(section, "gateway", gateway, of: host) }
        case .dhcp:
            if address != nil {
                throw section.error(
                    "address", "is only used with mode = \"static\"",
                    hint: "set mode = \"static\" or remove address")
            }
            if gateway != nil {
                throw section.error(
                    "gateway", "is only used with mode = \"static\"",
                    hint: "set mode = \"static\" or remove gateway")
            }
        }
        let dns = try section.strings("dns") ?? []
        for server in dns
        where !NetworkSyntax.isAddress(server, family: AF_INET)
            && !NetworkSyntax.isAddress(server, family: AF_INET6)
        {
            throw section.error("dns", "'\(server)' is not an IP address")
        }
        let ipv6Text = try section.string("ipv6") ?? "auto"
        let ipv6: IPv6Mode
        switch ipv6Text {
        case "auto": ipv6 = .auto
        case "none", "off": ipv6 = .off
        default:
            _ = try hostAddress(section, "ipv6", ipv6Text, family: AF_INET6)
            ipv6 = .address(ipv6Text)
        }
        let ipv6Gateway = try section.string("ipv6-gateway")
        if let ipv6Gateway {
            guard case .address(let ipv6Text) = ipv6 else {
                throw section.error("ipv6-gateway", "is only used with a static ipv6 address")
            }
            let host = try hostAddress(section, "ipv6", ipv6Text, family: AF_INET6)
            try checkGateway(section, "ipv6-gateway", ipv6Gateway, of: host)
        }
        let vlan = try section.int("vlan")
        if let vlan, !(1...4094).contains(vlan) {
            throw section.error("vlan", "\(vlan) is not a VLAN id", hint: "use 1 to 4094")
        }
        try section.finish()
        return NetworkAnswer(
            interface: interface, bond: bond, mtu: mtu, mode: mode, address: address, gateway: gateway, dns: dns,
            ipv6: ipv6, ipv6Gateway: ipv6Gateway, vlan: vlan)
    }
}

extension AnswerFile {
    /// The host address in `key`, refused with the section's file, line and key.
    static func hostAddress(_ section: TOMLSection, _ key: String, _ text: String, family: Int32)
        throws -> HostAddress
    {
        do {
            return try HostAddress(parsing: text, family: family, field: section.name(key))
        } catch {
            throw section.error(key, error.problem, hint: error.hint)
        }
    }

    static func checkGateway(_ section: TOMLSection, _ key: String, _ text: String, of host: HostAddress)
        throws
    {
        do {
            try host.checkGateway(text, field: section.name(key))
        } catch {
            throw section.error(key, error.problem, hint: error.hint)
        }
    }
}

/// Syntax checks of answer values on the primitives of MartletValidation; public so the
/// text UI can check a field as it is typed.
public enum NetworkSyntax {
    public static func isAddress(_ text: String, family: Int32) -> Bool {
        IPAddress(text, family: family) != nil
    }

    /// A host's address with a prefix length (not a network, broadcast or loopback address).
    public static func isCIDR(_ text: String, family: Int32) -> Bool {
        (try? HostAddress(parsing: text, family: family, field: "")) != nil
    }

    public static func isMAC(_ text: String) -> Bool {
        MACAddress.bytes(text) != nil
    }

    public static func isInterfaceName(_ text: String) -> Bool { Name.isInterfaceName(text) }

    public static func isHostname(_ text: String) -> Bool {
        guard text.count <= 253 else { return false }
        let label = #"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"#
        return text.range(of: "^\(label)(\\.\(label))*$", options: .regularExpression) != nil
    }
}
