import ArgumentParser
import Foundation
import MartletCore
import MartletHost

struct PoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Show the storage pools of /etc/martlet/storage.toml: capacity, used, free.",
        subcommands: [PoolListCommand.self, PoolShowCommand.self])
}

struct PoolListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the pools.")
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "pool list", json: options.json, { host in try host.pools().map { try $0.status() } },
            text: { pools in
                table(
                    ["POOL", "TYPE", "LOCATION", "CAPACITY", "USED", "FREE", "VOLUMES"],
                    pools.map {
                        [
                            $0.name, $0.type, $0.location, ByteSize($0.capacity).description,
                            ByteSize($0.used).description,
                            ByteSize($0.free).description, "\($0.volumes)",
                        ]
                    })
            })
    }
}

struct PoolShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Show one pool and its volumes.")
    @Argument var name: String
    @OptionGroup var options: HostOptions

    struct Detail: Encodable {
        var pool: PoolStatus
        var volumes: [VolumeInfo]
    }

    func run() throws {
        try runHostCommand(
            "pool show", json: options.json,
            { host -> Detail in
                let pool = try host.pool(name)
                return Detail(pool: try pool.status(), volumes: try pool.volumes())
            },
            text: { detail in
                let pool = detail.pool
                return """
                    pool:     \(pool.name) (\(pool.type), \(pool.location))
                    capacity: \(ByteSize(pool.capacity))
                    used:     \(ByteSize(pool.used))
                    free:     \(ByteSize(pool.free))
                    volumes:  \(detail.volumes.map { "\($0.name) (\(ByteSize($0.size)))" }.joined(separator: ", "))
                    """
            })
    }
}
