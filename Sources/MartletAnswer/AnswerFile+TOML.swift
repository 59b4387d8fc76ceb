import MartletCore

extension AnswerFile {
    /// The answers as an answer file that `AnswerFile.parse` reads back to the same value:
    /// what the text UI saves so an install can be repeated unattended.
    public var toml: String {
        TOMLDocument.text(
            of: FileLayout(self),
            comment: "Martlet answer file: `martlet-installer install --answer FILE` repeats this install.")
    }
}

/// The answer file's tables and keys as `AnswerFile.parse` reads them (the model's own
/// `Codable` form is its JSON shape, with Swift names and enums with payloads).
private struct FileLayout: Encodable {
    struct Global: Encodable {
        var hostname, timezone, keyboard: String
        var rootPassword, rootPasswordHash: String?
        var rootSSHKeys: [String]?
        var rebootMode: String

        enum CodingKeys: String, CodingKey {
            case hostname, timezone, keyboard
            case rootPassword = "root-password"
            case rootPasswordHash = "root-password-hash"
            case rootSSHKeys = "root-ssh-keys"
            case rebootMode = "reboot-mode"
        }
    }

    struct Disk: Encodable {
        var target: String?
        var targets: [String]?
        var raid: String?
        var filter: [String: String]?
        var filesystem: String
        var rootSize, swapSize: Int?
        var wipe: Bool

        enum CodingKeys: String, CodingKey {
            case target, targets, raid, filter, filesystem, wipe
            case rootSize = "root-size"
            case swapSize = "swap-size"
        }
    }

    struct Storage: Encodable {
        var type, volumeGroup: String
        var extraDisks: [String]?

        enum CodingKeys: String, CodingKey {
            case type
            case volumeGroup = "volume-group"
            case extraDisks = "extra-disks"
        }
    }

    struct Bond: Encodable {
        var interfaces: [String]?
        var filter: [String: String]?
        var mode: String
        var lacpRate: String?
        var miimon: Int

        enum CodingKeys: String, CodingKey {
            case interfaces, filter, mode, miimon
            case lacpRate = "lacp-rate"
        }
    }

    struct Network: Encodable {
        var interface: String?
        var filter: [String: String]?
        var bond: Bond?
        var mtu: Int?
        var mode: String
        var address, gateway: String?
        var dns: [String]?
        var ipv6: String
        var ipv6Gateway: String?
        var vlan: Int?

        enum CodingKeys: String, CodingKey {
            case interface, filter, bond, mtu, mode, address, gateway, dns, ipv6, vlan
            case ipv6Gateway = "ipv6-gateway"
        }
    }

    struct FirstBoot: Encodable {
        var script, at: String
    }

    struct PostInstall: Encodable {
        var webhook: String
    }

    var global: Global
    var disk: Disk
    var storage: Storage
    var network: Network
    var firstBoot: FirstBoot?
    var postInstall: PostInstall?

    enum CodingKeys: String, CodingKey {
        case global, disk, storage, network
        case firstBoot = "first-boot"
        case postInstall = "post-install"
    }

    init(_ answer: AnswerFile) {
        firstBoot = answer.firstBoot.map { FirstBoot(script: $0.script, at: $0.at.rawValue) }
        postInstall = answer.postInstall.map { PostInstall(webhook: $0.webhook) }
        var rootPassword: String?
        var rootPasswordHash: String?
        switch answer.global.rootPassword {
        case .plain(let password): rootPassword = password
        case .hashed(let hash): rootPasswordHash = hash
        case nil: break
        }
        global = Global(
            hostname: answer.global.hostname, timezone: answer.global.timezone,
            keyboard: answer.global.keyboard, rootPassword: rootPassword,
            rootPasswordHash: rootPasswordHash,
            rootSSHKeys: answer.global.rootSSHKeys.isEmpty ? nil : answer.global.rootSSHKeys,
            rebootMode: answer.global.rebootMode.rawValue)
        var diskFilter: [String: String]?
        if case .filter(let filter) = answer.disk.target {
            var table = Dictionary(uniqueKeysWithValues: filter.globs.map { ($0.property, $0.pattern) })
            table["min-size"] = filter.minSize?.exactText
            table["max-size"] = filter.maxSize?.exactText
            diskFilter = table
        }
        disk = Disk(
            target: diskFilter == nil && answer.disk.targets.isEmpty
                ? answer.disk.target.description : nil,
            targets: answer.disk.targets.isEmpty ? nil : answer.disk.targets.map(\.description),
            raid: answer.disk.raid?.rawValue, filter: diskFilter,
            filesystem: answer.disk.filesystem.rawValue,
            rootSize: answer.disk.rootSize.map { Int($0.bytes) },
            swapSize: answer.disk.swapSize.map { Int($0.bytes) }, wipe: answer.disk.wipe)
        storage = Storage(
            type: answer.storage.type.rawValue, volumeGroup: answer.storage.volumeGroup,
            extraDisks: answer.storage.extraDisks.isEmpty
                ? nil : answer.storage.extraDisks.map(\.description))
        let ipv6 =
            switch answer.network.ipv6 {
            case .auto: "auto"
            case .off: "off"
            case .address(let address): address
            }
        func filter(_ selector: InterfaceSelector?) -> [String: String]? {
            guard case .filter(let globs) = selector else { return nil }
            return Dictionary(uniqueKeysWithValues: globs.map { ($0.property, $0.pattern) })
        }
        let interface = answer.network.interface
        let bond = answer.network.bond.map { bond in
            let members = bond.members.count == 1 ? bond.members.first : nil
            return Bond(
                interfaces: filter(members) == nil ? bond.members.map(\.description) : nil,
                filter: filter(members), mode: bond.mode.rawValue,
                lacpRate: bond.lacpRate?.rawValue, miimon: bond.miimon)
        }
        network = Network(
            interface: filter(interface) == nil ? interface?.description : nil,
            filter: filter(interface), bond: bond, mtu: answer.network.mtu,
            mode: answer.network.mode.rawValue,
            address: answer.network.address, gateway: answer.network.gateway,
            dns: answer.network.dns.isEmpty ? nil : answer.network.dns, ipv6: ipv6,
            ipv6Gateway: answer.network.ipv6Gateway, vlan: answer.network.vlan)
    }
}
