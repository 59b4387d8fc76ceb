import Foundation

/// `/etc/martlet/storage.toml`: the host's VM storage pools as `[[pool]]` tables. The
/// installer writes it and the host reads it, both through this type, so the two sides
/// cannot drift apart.
public struct StorageConfiguration: Sendable, Equatable, Encodable {
    public static let defaultPath = "/etc/martlet/storage.toml"

    /// One `[[pool]]` table.
    public struct Pool: Sendable, Equatable, Encodable {
        public enum Kind: String, Sendable, Encodable, CaseIterable {
            case lvmThin = "lvm-thin"
            case directory
        }

        public var name: String
        public var type: Kind
        /// The partition or disk backing the pool (informational: the host does not use it).
        public var device: String?
        /// lvm-thin: the volume group and its thin pool.
        public var volumeGroup: String?
        public var thinPool: String?
        /// directory: the filesystem (informational) and the folder holding the volumes.
        public var filesystem: String?
        public var path: String?

        public init(
            name: String, type: Kind, device: String? = nil, volumeGroup: String? = nil,
            thinPool: String? = nil, filesystem: String? = nil, path: String? = nil
        ) {
            self.name = name
            self.type = type
            self.device = device
            self.volumeGroup = volumeGroup
            self.thinPool = thinPool
            self.filesystem = filesystem
            self.path = path
        }

        enum CodingKeys: String, CodingKey {
            case name, type, device, filesystem, path
            case volumeGroup = "volume-group"
            case thinPool = "thin-pool"
        }
    }

    public var pools: [Pool]

    public init(pools: [Pool]) { self.pools = pools }

    enum CodingKeys: String, CodingKey { case pools = "pool" }

    /// The file's text.
    public var toml: String {
        TOMLDocument.text(of: self, comment: "VM storage pools, written by martlet-installer.")
    }

    /// Reads the file at `path`; a missing file means no pools. Every pool needs a name, a
    /// type and that type's keys; unknown keys are errors. `nameProblem` returns why a pool
    /// name is not allowed (nil when it is) and a hint, so the host's naming rule applies.
    public static func load(
        path: String = defaultPath,
        nameProblem: (String) -> (problem: String, hint: String)? = { _ in nil }
    ) throws -> StorageConfiguration {
        guard FileManager.default.fileExists(atPath: path) else {
            return StorageConfiguration(pools: [])
        }
        let document = try TOMLDocument(path: path)
        let root = document.rootSection
        var pools: [Pool] = []
        for section in try root.sections("pool") ?? [] {
            let name = try section.required(try section.string("name"), "name")
            if let (problem, hint) = nameProblem(name) {
                throw section.error("name", problem, hint: hint)
            }
            guard !pools.contains(where: { $0.name == name }) else {
                throw section.error("name", "pool '\(name)' is defined twice")
            }
            let type = try section.required(
                try section.choice("type", Pool.Kind.allCases.map(\.rawValue)), "type")
            var pool = Pool(
                name: name, type: Pool.Kind(rawValue: type)!, device: try section.string("device"),
                filesystem: try section.string("filesystem"))
            switch pool.type {
            case .lvmThin:
                pool.volumeGroup = try section.required(
                    try section.string("volume-group"), "volume-group")
                pool.thinPool = try section.required(try section.string("thin-pool"), "thin-pool")
            case .directory:
                pool.path = try section.required(try section.string("path"), "path")
            }
            try section.finish()
            pools.append(pool)
        }
        try root.finish()
        return StorageConfiguration(pools: pools)
    }
}
