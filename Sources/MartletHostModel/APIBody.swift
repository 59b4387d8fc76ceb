import Foundation
import MartletCore

/// The REST API's request bodies (`APIServer`'s routes take them; openapi.yaml documents
/// them) and the one way to read them: here, without the HTTP stack, so the server and
/// martlet-fuzz's `api-body` target run the same decoding and checks.
public enum APIBody {
    /// The most of a request body the server reads.
    public static let maxBytes = 1 << 20

    /// `body` as a `T`, or an invalid-input error saying why it is not one.
    public static func decode<T: Decodable>(_ type: T.Type, from body: Data) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: body)
        } catch {
            throw MartletError(
                .invalidInput, "the request body is not valid JSON for this operation: \(error)")
        }
    }

    /// What `POST /v1/vms` and `PUT /v1/vms/{name}` take: a definition whose optional fields
    /// get the same defaults as the TOML file.
    public struct VMRequest: Codable, Sendable {
        public var name: String?
        public var vcpus: Int?
        public var memory: String?
        /// "kernel" (the default) or "disk": the firmware boots the first disk.
        public var boot: String?
        /// Required when `boot` is "kernel"; refused when it is "disk".
        public var kernel: String?
        public var initrd: String?
        /// The BIOS image for `boot` "disk"; the seabios package's when left out.
        public var firmware: String?
        public var cmdline: String?
        public var disks: [DiskRequest]?
        public var nics: [NICRequest]?
        public var autostart: Bool?
        public var onCrash: String?
        /// A cloud-init NoCloud seed: `sshKeys` are the keys' text, `userData` a path on the host.
        public var cloudInit: VMDefinition.CloudInit?
        /// false runs the VMM outside its jail, as `vm create --no-jail`: debugging only.
        public var jail: Bool?

        public struct DiskRequest: Codable, Sendable {
            public var pool: String
            public var volume: String
            public var readOnly: Bool?
        }

        public struct NICRequest: Codable, Sendable {
            public var bridge: String?
            public var mac: String?
            public var queues: Int?
        }

        /// The definition of VM `name`, with the TOML file's defaults, validated.
        public func definition(name: String) throws -> VMDefinition {
            func source(_ text: String, _ key: String) throws -> VMDefinition.FileSource {
                guard let source = VMDefinition.FileSource(parsing: text) else {
                    throw MartletError(
                        .invalidInput, "\(key): '\(text)' is neither an absolute path nor POOL/VOLUME",
                        hint: "write \"/var/lib/martlet/kernels/vmlinuz\" or \"local/kernel\"")
                }
                return source
            }
            let size = try Self.memory(memory ?? "256MiB")
            let policy = try Self.crashPolicy(onCrash ?? VMDefinition.CrashPolicy.restart.rawValue)
            let modeText = boot ?? VMDefinition.BootMode.kernel.rawValue
            guard let mode = VMDefinition.BootMode(rawValue: modeText) else {
                throw MartletError(
                    .invalidInput, "boot: '\(modeText)' is not one of "
                        + VMDefinition.BootMode.allCases.map(\.rawValue).joined(separator: ", "))
            }
            let definition = VMDefinition(
                name: name, vcpus: vcpus ?? 1, memory: size,
                boot: .init(
                    mode: mode, kernel: try kernel.map { try source($0, "kernel") },
                    initrd: try initrd.map { try source($0, "initrd") },
                    cmdline: cmdline ?? VMDefinition.Boot.defaultCmdline, firmware: firmware),
                disks: (disks ?? []).map {
                    .init(pool: $0.pool, volume: $0.volume, readOnly: $0.readOnly ?? false)
                },
                nics: (nics ?? []).enumerated().map { index, nic in
                    .init(
                        bridge: nic.bridge ?? "br0",
                        mac: nic.mac?.lowercased() ?? VMDefinition.generatedMAC(vm: name, index: index),
                        queues: nic.queues)
                },
                autostart: autostart ?? false, onCrash: policy, cloudInit: cloudInit, jail: jail ?? true)
            try definition.validate()
            return definition
        }

        /// `memory` as a size, or an error naming the key and the value.
        static func memory(_ text: String) throws -> ByteSize {
            guard let size = ByteSize(parsing: text) else {
                throw MartletError(
                    .invalidInput, "memory: '\(text)' is not a size", hint: "write e.g. \"512MiB\" or \"2GiB\"")
            }
            return size
        }

        /// `onCrash` as a policy, or an error naming the key, the value and the choices.
        static func crashPolicy(_ text: String) throws -> VMDefinition.CrashPolicy {
            guard let policy = VMDefinition.CrashPolicy(rawValue: text) else {
                throw MartletError(
                    .invalidInput, "onCrash: '\(text)' is not one of "
                        + VMDefinition.CrashPolicy.allCases.map(\.rawValue).joined(separator: ", "))
            }
            return policy
        }
    }

    /// What `PATCH /v1/vms/{name}` takes: the settings a stopped VM may change without its
    /// whole definition being sent again (the web UI's edit form). Fields left out stay.
    public struct VMChange: Codable, Sendable {
        public var vcpus: Int?
        public var memory: String?
        public var autostart: Bool?
        public var onCrash: String?

        /// `definition` with these changes, validated.
        public func applied(to definition: VMDefinition) throws -> VMDefinition {
            var changed = definition
            if let vcpus { changed.vcpus = vcpus }
            if let memory { changed.memory = try VMRequest.memory(memory) }
            if let autostart { changed.autostart = autostart }
            if let onCrash { changed.onCrash = try VMRequest.crashPolicy(onCrash) }
            try changed.validate()
            return changed
        }
    }

    public struct VolumeRequest: Codable, Sendable {
        public var name: String
        /// The size for a new empty volume, e.g. "8GiB".
        public var size: String?
        /// An image to import instead (raw or qcow2): a file on the host or an http(s) URL.
        public var image: String?
        public var format: ImageFormat?
        /// The image's expected SHA-256; a mismatch is refused and leaves nothing behind.
        public var sha256: String?

        /// The size of the new empty volume, for a request that names no `image`.
        public func emptyVolumeSize() throws -> ByteSize {
            guard let text = size, let size = ByteSize(parsing: text) else {
                throw MartletError(.invalidInput, "give 'size' (e.g. \"8GiB\") or 'image'")
            }
            return size
        }
    }

    public struct ResizeRequest: Codable, Sendable {
        public var size: String

        /// `size` as a size, or an error naming the value.
        public func newSize() throws -> ByteSize {
            guard let size = ByteSize(parsing: size) else {
                throw MartletError(.invalidInput, "'\(size)' is not a size")
            }
            return size
        }
    }
}

/// The image formats `volume import` reads.
public enum ImageFormat: String, Codable, Sendable, CaseIterable {
    case raw, qcow2
}
