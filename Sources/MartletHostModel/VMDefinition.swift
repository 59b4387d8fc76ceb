import Foundation
import MartletCore
import MartletVMMProtocol
import MartletValidation

/// One virtual machine as a person defines it in `/etc/martlet/vms/NAME.toml`.
/// The runtime turns it into the VMM's JSON configuration.
public struct VMDefinition: Codable, Equatable, Sendable {
    /// What happens when the VMM ends without being asked to (a crash or a guest reset).
    public enum CrashPolicy: String, Codable, Sendable, CaseIterable {
        /// Start the VM again (systemd `Restart=on-failure` on a host).
        case restart
        /// Leave it stopped and keep the console log for inspection.
        case stop
    }

    /// Where a boot file comes from: a path on the host, or a volume in a pool.
    public enum FileSource: Codable, Equatable, Sendable, CustomStringConvertible {
        case path(String)
        case volume(pool: String, volume: String)

        /// Reads `PATH` (absolute) or `POOL/VOLUME`.
        public init?(parsing text: String) {
            if text.hasPrefix("/") {
                self = .path(text)
                return
            }
            let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(
                String.init)
            guard parts.count == 2, VMDefinition.isValidName(parts[0]),
                VMDefinition.isValidName(parts[1])
            else { return nil }
            self = .volume(pool: parts[0], volume: parts[1])
        }

        public var description: String {
            switch self {
            case .path(let path): path
            case .volume(let pool, let volume): "\(pool)/\(volume)"
            }
        }

        public init(from decoder: Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let source = FileSource(parsing: text) else {
                throw DecodingError.dataCorrupted(
                    .init(
                        codingPath: decoder.codingPath,
                        debugDescription: "'\(text)' is not PATH or POOL/VOLUME"))
            }
            self = source
        }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(description)
        }
    }

    /// How a VM starts.
    public enum BootMode: String, Codable, Sendable, CaseIterable {
        /// Linux directly: the VMM loads `kernel` (and `initrd`) with `cmdline`.
        case kernel
        /// Like a PC: the firmware (SeaBIOS) boots whatever the first disk holds — an MBR with
        /// GRUB, a hybrid ISO, a cloud image.
        case disk
    }

    public struct Boot: Codable, Equatable, Sendable {
        public var mode: BootMode
        /// Required for mode kernel; refused for mode disk.
        public var kernel: FileSource?
        public var initrd: FileSource?
        /// The kernel command line (mode kernel; the disk's bootloader has its own).
        public var cmdline: String
        /// The BIOS image for mode disk; nil means `VMDefinition.defaultFirmware`.
        public var firmware: String?

        /// Direct kernel boot.
        public init(
            kernel: FileSource, initrd: FileSource? = nil, cmdline: String = "console=ttyS0"
        ) {
            self.init(mode: .kernel, kernel: kernel, initrd: initrd, cmdline: cmdline)
        }

        /// Any combination, as a file or a request gives it; `validate()` judges it.
        public init(
            mode: BootMode, kernel: FileSource? = nil, initrd: FileSource? = nil,
            cmdline: String = Boot.defaultCmdline, firmware: String? = nil
        ) {
            self.mode = mode
            self.kernel = kernel
            self.initrd = initrd
            self.cmdline = cmdline
            self.firmware = firmware
        }

        /// The kernel command line when none is given.
        public static let defaultCmdline = "console=ttyS0"

        /// Firmware boot from the first disk, with `firmware` or the default one.
        public static func disk(firmware: String? = nil) -> Boot {
            Boot(mode: .disk, firmware: firmware)
        }

        /// The BIOS image the VMM gets in mode disk.
        public var firmwarePath: String { firmware ?? VMDefinition.defaultFirmware }
    }

    /// A volume of a pool given to the guest as a virtio-blk disk.
    public struct Disk: Codable, Equatable, Sendable {
        public var pool: String
        public var volume: String
        public var readOnly: Bool
        public init(pool: String, volume: String, readOnly: Bool = false) {
            self.pool = pool
            self.volume = volume
            self.readOnly = readOnly
        }
    }

    /// A network interface: a tap device on a host bridge.
    public struct NIC: Codable, Equatable, Sendable {
        public var bridge: String
        public var mac: String
        /// virtio-net queue pairs (the VMM's `queues`); nil: one. More than one makes the tap
        /// a multi-queue one.
        public var queues: Int?
        public init(bridge: String = "br0", mac: String, queues: Int? = nil) {
            self.bridge = bridge
            self.mac = mac
            self.queues = queues
        }
    }

    public var name: String
    public var vcpus: Int
    public var memory: ByteSize
    public var boot: Boot
    public var disks: [Disk]
    public var nics: [NIC]
    public var autostart: Bool
    public var onCrash: CrashPolicy
    /// A NoCloud seed for cloud images (`[cloud-init]`); none when nil.
    public var cloudInit: CloudInit?
    /// The runner starts the VMM in its own namespaces and root (`VMJail`); `jail = false`
    /// is for debugging only.
    public var jail: Bool

    public init(
        name: String, vcpus: Int = 1, memory: ByteSize = .mib(256), boot: Boot, disks: [Disk] = [],
        nics: [NIC] = [], autostart: Bool = false, onCrash: CrashPolicy = .restart,
        cloudInit: CloudInit? = nil, jail: Bool = true
    ) {
        self.name = name
        self.vcpus = vcpus
        self.memory = memory
        self.boot = boot
        self.disks = disks
        self.nics = nics
        self.autostart = autostart
        self.onCrash = onCrash
        self.cloudInit = cloudInit
        self.jail = jail
    }

    public static let maxVCPUs = 64
    public static let maxDisks = 6
    public static let minMemory = ByteSize.mib(4)
    /// SeaBIOS for PCI-less machines, from Debian's `seabios` package (in profiles/default).
    public static let defaultFirmware = FirmwareRules.seaBIOSMicrovm

    /// VM, pool and volume names: they become file names, LV names, unit instance names
    /// (MartletValidation's one name pattern).
    public static func isValidName(_ name: String) -> Bool { Name.isValid(name) }

    package static let nameRule = Name.rule()

    /// A locally administered unicast MAC that stays the same for this VM name and NIC index.
    public static func generatedMAC(vm: String, index: Int) -> String {
        let hash = fnv1a("\(vm)#\(index)")
        let bytes: [UInt64] = [
            0x02, 0x4D, 0x4C, (hash >> 16) & 0xFF, (hash >> 8) & 0xFF, hash & 0xFF,
        ]
        return bytes.map { String(format: "%02x", $0) }.joined(separator: ":")
    }

    /// The tap device name of NIC `index` (at most 15 characters, the kernel's limit).
    public static func tapName(vm: String, index: Int) -> String {
        String(format: "mvm%08x", UInt32(truncatingIfNeeded: fnv1a(vm))) + "n\(index)"
    }

    static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return hash
    }

    /// A unicast, not all-zero MAC: what a NIC may have.
    static func isValidMAC(_ mac: String) -> Bool {
        (try? MACAddress.parseUnicast(mac, field: "mac")) != nil
    }
}

extension VMDefinition {
    static let topKeys = [
        "vcpus", "memory", "autostart", "on-crash", "jail", "boot", "disk", "nic", "cloud-init",
    ]

    /// Parses the definition file at `path`; the VM's name is the file name without `.toml`.
    public init(path: String) throws {
        try self.init(document: try TOMLDocument(path: path))
    }

    /// Parses `contents` as the definition of the VM named by `path`'s file name.
    public init(path: String, contents: String) throws {
        try self.init(document: try TOMLDocument(path: path, contents: contents))
    }

    init(document: TOMLDocument) throws {
        let path = document.path
        let name = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        guard Self.isValidName(name) else {
            throw MartletError(
                .invalidInput, "\(path): '\(name)' is not a valid VM name", hint: Self.nameRule)
        }
        let root = document.rootSection
        let vcpus = try root.int("vcpus") ?? 1
        let memory = try root.size("memory") ?? .mib(256)
        let autostart = try root.bool("autostart") ?? false
        let jail = try root.bool("jail") ?? true
        let policyText =
            try root.choice("on-crash", CrashPolicy.allCases.map(\.rawValue)) ?? "restart"
        let bootSection = try root.required(
            try root.section("boot"), "boot",
            hint: "add a [boot] table with kernel = \"PATH\", or mode = \"disk\"")
        func source(_ section: TOMLSection, _ key: String) throws -> FileSource? {
            guard let text = try section.string(key) else { return nil }
            guard let source = FileSource(parsing: text) else {
                throw section.error(
                    key, "'\(text)' is neither an absolute path nor POOL/VOLUME",
                    hint: "write \"/var/lib/martlet/kernels/vmlinuz\" or \"local/kernel\"")
            }
            return source
        }
        let mode = BootMode(
            rawValue: try bootSection.choice("mode", BootMode.allCases.map(\.rawValue))
                ?? BootMode.kernel.rawValue)!
        let firmware = try bootSection.string("firmware")
        var kernel = try source(bootSection, "kernel")
        // With a firmware but no mode, the boot rules below say what to change.
        if mode == .kernel && firmware == nil { kernel = try bootSection.required(kernel, "kernel") }
        let initrd = try source(bootSection, "initrd")
        let cmdlineText = try bootSection.string("cmdline")
        if mode == .disk, cmdlineText != nil {
            throw bootSection.error(
                "cmdline", "is only for mode \"kernel\"; the first disk's bootloader passes its own",
                hint: "remove cmdline (set it in the guest's GRUB configuration)")
        }
        let cmdline = cmdlineText ?? Boot.defaultCmdline
        try bootSection.finish()

        let diskSections = try root.sections("disk") ?? []
        var disks: [Disk] = []
        for section in diskSections {
            let pool = try section.required(try section.string("pool"), "pool")
            let volume = try section.required(try section.string("volume"), "volume")
            disks.append(
                Disk(pool: pool, volume: volume, readOnly: try section.bool("read-only") ?? false))
            try section.finish()
        }
        let nicSections = try root.sections("nic") ?? []
        var nics: [NIC] = []
        for (index, section) in nicSections.enumerated() {
            let bridge = try section.string("bridge") ?? "br0"
            let mac =
                try section.string("mac")?.lowercased() ?? Self.generatedMAC(vm: name, index: index)
            nics.append(NIC(bridge: bridge, mac: mac, queues: try section.int("queues")))
            try section.finish()
        }
        let cloudInitSection = try root.section("cloud-init")
        let cloudInit = try cloudInitSection.map { try CloudInit(section: $0) }
        try root.finish()
        self.init(
            name: name, vcpus: vcpus, memory: memory,
            boot: Boot(
                mode: mode, kernel: kernel, initrd: initrd, cmdline: cmdline, firmware: firmware),
            disks: disks, nics: nics,
            autostart: autostart, onCrash: CrashPolicy(rawValue: policyText)!, cloudInit: cloudInit,
            jail: jail)
        // The same rules as `validate()`, reported at the line of the key that breaks one.
        if let violation = firstViolation() {
            let section: TOMLSection =
                switch violation.table {
                case .root: root
                case .boot: bootSection
                case .disk(let index): diskSections[index]
                case .nic(let index): nicSections[index]
                case .cloudInit: cloudInitSection ?? root
                }
            throw section.error(violation.key, violation.message, hint: violation.hint)
        }
    }
}

extension VMDefinition {
    /// A rule a definition breaks: where (the table and key), what is wrong, what to do.
    struct Violation {
        enum Table {
            case root, boot
            case disk(Int)
            case nic(Int)
            case cloudInit
        }
        var table: Table
        var key: String
        var message: String
        var hint: String?

        /// "vcpus", "boot.cmdline", "disk[1].volume" (0-based, as in the API's JSON).
        var keyPath: String {
            switch table {
            case .root: key
            case .boot: "boot.\(key)"
            case .disk(let index): "disk[\(index)].\(key)"
            case .nic(let index): "nic[\(index)].\(key)"
            case .cloudInit: "cloud-init.\(key)"
            }
        }
    }

    /// Checks every value rule of a definition, however it was built (TOML, CLI flags, the
    /// REST API); the error names the VM and the key.
    public func validate() throws {
        guard Self.isValidName(name) else {
            throw MartletError(
                .invalidInput, "'\(name)' is not a valid VM name", hint: Self.nameRule)
        }
        if let violation = firstViolation() {
            throw MartletError(
                .invalidInput, "VM '\(name)': \(violation.keyPath): \(violation.message)",
                hint: violation.hint)
        }
    }

    /// The first rule this definition breaks, in the order of the file.
    func firstViolation() -> Violation? {
        guard (1...Self.maxVCPUs).contains(vcpus) else {
            return Violation(
                table: .root, key: "vcpus", message: "\(vcpus) is out of range",
                hint: "use 1 to \(Self.maxVCPUs)")
        }
        guard memory >= Self.minMemory, memory.bytes % (1 << 20) == 0 else {
            return Violation(
                table: .root, key: "memory",
                message: "\(memory) is not a whole number of MiB of at least 4 MiB",
                hint: "write e.g. \"512MiB\" or \"2GiB\"")
        }
        if let violation = bootViolation() { return violation }
        guard boot.cmdline.utf8.count <= 2048 else {
            return Violation(
                table: .boot, key: "cmdline", message: "is \(boot.cmdline.utf8.count) bytes long",
                hint: "keep it under 2048 bytes")
        }
        for (index, disk) in disks.enumerated() {
            for (key, value) in [("pool", disk.pool), ("volume", disk.volume)]
            where !Self.isValidName(value) {
                return Violation(
                    table: .disk(index), key: key, message: "'\(value)' is not a valid name",
                    hint: Self.nameRule)
            }
            if disks[..<index].contains(where: { $0.pool == disk.pool && $0.volume == disk.volume }) {
                return Violation(
                    table: .disk(index), key: "volume",
                    message: "'\(disk.pool)/\(disk.volume)' is attached twice",
                    hint: "remove one of the [[disk]] tables")
            }
        }
        guard disks.count <= Self.maxDisks else {
            return Violation(
                table: .root, key: "disk", message: "\(disks.count) disks given",
                hint: "a VM has at most \(Self.maxDisks) disks")
        }
        for (index, nic) in nics.enumerated() {
            guard Name.isInterfaceName(nic.bridge) else {
                return Violation(
                    table: .nic(index), key: "bridge",
                    message: "'\(nic.bridge)' is not a network interface name",
                    hint: "use the host bridge, e.g. \"br0\"")
            }
            guard Self.isValidMAC(nic.mac) else {
                return Violation(
                    table: .nic(index), key: "mac", message: "'\(nic.mac)' is not a unicast MAC address",
                    hint: "write six hex bytes like \"02:4d:4c:12:34:56\", or leave it out to generate one")
            }
            if let queues = nic.queues, !(1...VMConfig.NIC.maxQueues).contains(queues) {
                return Violation(
                    table: .nic(index), key: "queues", message: "\(queues) queue pairs is out of range",
                    hint: "use 1 to \(VMConfig.NIC.maxQueues), or leave it out for one")
            }
            if nics[..<index].contains(where: { $0.mac == nic.mac }) {
                return Violation(
                    table: .nic(index), key: "mac", message: "'\(nic.mac)' is used by another NIC of this VM")
            }
        }
        if let problem = cloudInit?.violation(vm: name, nics: nics) {
            return Violation(
                table: .cloudInit, key: problem.key, message: problem.message, hint: problem.hint)
        }
        return nil
    }

    /// The boot mode's rules: a kernel VM names a kernel and no firmware; a disk VM names no
    /// kernel or initrd, an absolute firmware path if any, and has a disk to boot.
    func bootViolation() -> Violation? {
        let conflict = "boot.kernel and boot.firmware conflict: a VM boots either a kernel directly or the firmware from its first disk"
        switch boot.mode {
        case .kernel:
            if boot.firmware != nil {
                return Violation(
                    table: .boot, key: "firmware", message: conflict,
                    hint: boot.kernel == nil
                        ? "add mode = \"disk\" to boot the first disk with it"
                        : "remove firmware, or remove kernel and set mode = \"disk\"")
            }
            guard boot.kernel != nil else {
                return Violation(
                    table: .boot, key: "kernel", message: "missing for mode \"kernel\"",
                    hint: "give kernel = \"PATH\" or \"POOL/VOLUME\", or set mode = \"disk\"")
            }
        case .disk:
            if boot.kernel != nil {
                return Violation(
                    table: .boot, key: "kernel", message: conflict,
                    hint: "remove kernel (and initrd) for mode \"disk\", or use mode \"kernel\"")
            }
            if boot.initrd != nil {
                return Violation(
                    table: .boot, key: "initrd",
                    message: "is only for mode \"kernel\"; the first disk's bootloader loads its own",
                    hint: "remove initrd")
            }
            if boot.cmdline != Boot.defaultCmdline {
                return Violation(
                    table: .boot, key: "cmdline",
                    message: "is only for mode \"kernel\"; the first disk's bootloader passes its own",
                    hint: "remove cmdline (set it in the guest's GRUB configuration)")
            }
            if let firmware = boot.firmware, !firmware.hasPrefix("/") {
                return Violation(
                    table: .boot, key: "firmware", message: "'\(firmware)' is not an absolute path",
                    hint: "write e.g. \"\(VMDefinition.defaultFirmware)\", or leave it out for that one")
            }
            if disks.isEmpty {
                return Violation(
                    table: .root, key: "disk",
                    message: "boot mode \"disk\" boots the first disk, and the VM has none",
                    hint: "add a [[disk]] table (e.g. an imported image) before any other disk")
            }
        }
        return nil
    }

    /// The TOML text of this definition, in the form `init(path:)` reads.
    public var toml: String {
        TOMLDocument.text(
            of: FileLayout(self),
            comment: "Martlet VM '\(name)'. Edit with 'martlet vm edit \(name)'; see 'martlet vm --help'.")
    }
}

/// A definition file's keys and tables as `VMDefinition.init(path:contents:)` reads them
/// (the model's own `Codable` form is the API's JSON shape).
private struct FileLayout: Encodable {
    struct Boot: Encodable {
        var mode: String?
        var kernel: String?
        var initrd: String?
        var cmdline: String?
        var firmware: String?
    }

    struct Disk: Encodable {
        var pool, volume: String
        var readOnly: Bool?

        enum CodingKeys: String, CodingKey {
            case pool, volume
            case readOnly = "read-only"
        }
    }

    struct NIC: Encodable {
        var bridge, mac: String
        var queues: Int?
    }

    var vcpus: Int
    var memory: String
    var autostart: Bool
    var onCrash: String
    /// Written only when off: a definition says `jail = false` only when someone chose it.
    var jail: Bool?
    var boot: Boot
    var disk: [Disk]?
    var nic: [NIC]?
    var cloudInit: CloudInitTable?

    enum CodingKeys: String, CodingKey {
        case vcpus, memory, autostart, jail, boot, disk, nic
        case onCrash = "on-crash"
        case cloudInit = "cloud-init"
    }

    init(_ definition: VMDefinition) {
        vcpus = definition.vcpus
        // Exact, never the rounded description: 1500MiB must not come back as 1.5GiB.
        memory = definition.memory.exactText
        autostart = definition.autostart
        onCrash = definition.onCrash.rawValue
        jail = definition.jail ? nil : false
        let boot = definition.boot
        // A kernel VM's file reads as before boot modes existed; a disk VM has no cmdline.
        self.boot = Boot(
            mode: boot.mode == .kernel ? nil : boot.mode.rawValue,
            kernel: boot.kernel?.description, initrd: boot.initrd?.description,
            cmdline: boot.mode == .kernel ? boot.cmdline : nil, firmware: boot.firmware)
        disk =
            definition.disks.isEmpty
            ? nil
            : definition.disks.map {
                Disk(pool: $0.pool, volume: $0.volume, readOnly: $0.readOnly ? true : nil)
            }
        nic =
            definition.nics.isEmpty
            ? nil : definition.nics.map { NIC(bridge: $0.bridge, mac: $0.mac, queues: $0.queues) }
        cloudInit = definition.cloudInit.map(CloudInitTable.init)
    }
}
