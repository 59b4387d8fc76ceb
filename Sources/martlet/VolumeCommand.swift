import ArgumentParser
import Foundation
import MartletCore
import MartletHost

extension ImageFormat: ExpressibleByArgument {}

struct VolumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume",
        abstract: "Create, list, grow, import and delete the volumes of the storage pools.",
        discussion:
            "Volumes are named POOL/VOLUME: thin LVs in an lvm-thin pool, NAME.raw files in a directory pool.",
        subcommands: [
            VolumeCreateCommand.self, VolumeListCommand.self, VolumeResizeCommand.self,
            VolumeDeleteCommand.self, VolumeImportCommand.self,
        ])
}

struct VolumeCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create an empty volume (refused when the pool is full).")
    @Argument(help: ArgumentHelp("The new volume.", valueName: "POOL/VOLUME")) var volume: String
    @Option(help: "Size, e.g. 8GiB.") var size: ByteSize
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "volume create", json: options.json,
            { host -> VolumeInfo in
                let reference = try VMHost.volumeReference(volume)
                return try host.pool(reference.pool).createVolume(reference.volume, size: size)
            }, text: { "created \($0.pool)/\($0.name) (\(ByteSize($0.size))) at \($0.path)" })
    }
}

struct VolumeListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List volumes (of one pool, or of all).")
    @Argument(help: "Only this pool.") var pool: String?
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "volume list", json: options.json,
            { host -> [VolumeInfo] in
                let pools = try pool.map { [try host.pool($0)] } ?? host.pools()
                return try pools.flatMap { try $0.volumes() }
            },
            text: { volumes in
                table(
                    ["VOLUME", "SIZE", "ALLOCATED", "PATH"],
                    volumes.map {
                        [
                            "\($0.pool)/\($0.name)", ByteSize($0.size).description,
                            $0.allocated.map { ByteSize($0).description } ?? "-", $0.path,
                        ]
                    })
            })
    }
}

struct VolumeResizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resize", abstract: "Grow a volume (refused while a running VM uses it).")
    @Argument(help: ArgumentHelp("The volume.", valueName: "POOL/VOLUME")) var volume: String
    @Option(help: "The new size, e.g. 16GiB.") var size: ByteSize
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "volume resize", json: options.json,
            { host -> VolumeInfo in
                let reference = try VMHost.volumeReference(volume)
                return try host.resizeVolume(
                    pool: reference.pool, volume: reference.volume, size: size)
            }, text: { "resized \($0.pool)/\($0.name) to \(ByteSize($0.size))" })
    }
}

struct VolumeDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a volume (refused while a VM definition uses it).")
    @Argument(help: ArgumentHelp("The volume.", valueName: "POOL/VOLUME")) var volume: String
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "volume delete", json: options.json,
            { host -> Done in
                let reference = try VMHost.volumeReference(volume)
                try host.deleteVolume(pool: reference.pool, volume: reference.volume)
                return Done(message: "deleted \(volume)")
            }, text: { $0.message })
    }
}

struct VolumeImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Create a volume from a raw or qcow2 image file or http(s) URL.",
        discussion: """
            The format is read from the image (a qcow2 header, else raw); qcow2 is converted \
            with qemu-img. A URL is downloaded with curl into $TMPDIR (default /var/tmp) and \
            removed once it is in the volume. Progress goes to stderr. With --sha256 an image \
            whose digest differs is refused and nothing is left behind.
              URL=https://cloud.debian.org/images/cloud/bookworm/latest
              martlet volume import local/debian-12 \\
                $URL/debian-12-genericcloud-amd64.qcow2 --sha256 HEX
            """)
    @Argument(help: ArgumentHelp("The new volume.", valueName: "POOL/VOLUME")) var volume: String
    @Argument(help: ArgumentHelp("The image: a file, or an http:// or https:// URL.", valueName: "IMAGE"))
    var image: String
    @Option(help: "Image format: raw or qcow2 (detected when left out).") var format: ImageFormat?
    @Option(help: ArgumentHelp("The image's expected SHA-256 (64 hex digits).", valueName: "HEX"))
    var sha256: String?
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "volume import", json: options.json,
            { host -> VolumeInfo in
                let reference = try VMHost.volumeReference(volume)
                return try host.pool(reference.pool).importVolume(
                    reference.volume, from: image, format: format, sha256: sha256,
                    progress: TextProgress())
            }, text: { "imported \(image) as \($0.pool)/\($0.name) (\(ByteSize($0.size)))" })
    }
}
