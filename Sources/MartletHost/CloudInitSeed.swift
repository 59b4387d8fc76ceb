import CArchive
import Foundation
import MartletCore

/// cloud-init's NoCloud seed for a VM: `meta-data`, `user-data` and `network-config` on an
/// ISO 9660 image labelled `cidata`, which the runner attaches as the last, read-only
/// virtio-blk disk. cloud-init finds the seed by that label (blkid), so the image carries
/// Joliet (whose volume name keeps the lower-case label) and Rock Ridge (the file names as
/// they are, `meta-data` with its hyphen).
public struct CloudInitSeed: Equatable, Sendable {
    public var metaData: String
    public var userData: String
    /// Netplan-style network config version 2; nil for a VM without NICs (cloud-init's
    /// fallback then configures what it finds).
    public var networkConfig: String?

    /// The volume label cloud-init's NoCloud data source looks for.
    public static let volumeLabel = "cidata"

    /// The seed of `definition`, nil when it has no `[cloud-init]` table. A user-data file is
    /// read now (bounded), so the seed holds what the file says at this start.
    public init?(_ definition: VMDefinition) throws {
        guard let cloudInit = definition.cloudInit else { return nil }
        let hostname = cloudInit.hostname ?? definition.name
        var meta = [
            // Stable for the VM: cloud-init runs its once-per-instance work on the first boot
            // only, not again at every start.
            "instance-id: \(Self.quoted(Self.instanceID(vm: definition.name)))",
            "local-hostname: \(Self.quoted(hostname))",
        ]
        if !cloudInit.sshKeys.isEmpty {
            meta.append("public-keys:")
            meta += cloudInit.sshKeys.map { "  - \(Self.quoted($0))" }
        }
        metaData = meta.joined(separator: "\n") + "\n"

        if let text = try cloudInit.readUserData() {
            userData = text
        } else {
            var lines = [
                "#cloud-config", "hostname: \(Self.quoted(hostname))", "preserve_hostname: false",
            ]
            if !cloudInit.sshKeys.isEmpty {
                lines.append("ssh_authorized_keys:")
                lines += cloudInit.sshKeys.map { "  - \(Self.quoted($0))" }
            }
            userData = lines.joined(separator: "\n") + "\n"
        }
        networkConfig = Self.networkConfig(cloudInit, nics: definition.nics)
    }

    /// `martlet-NAME`: the VM's name is its identity on the host.
    public static func instanceID(vm: String) -> String { "martlet-\(vm)" }

    /// Version 2 network config: NIC I matched by its MAC and named ethI (`set-name`: the
    /// renderers other than netplan match on the name too, and cloud-init renames only
    /// interfaces that have one); the first gets the static address when one is given,
    /// every other NIC asks DHCP.
    static func networkConfig(_ cloudInit: VMDefinition.CloudInit, nics: [VMDefinition.NIC])
        -> String?
    {
        guard !nics.isEmpty else { return nil }
        var lines = ["version: 2", "ethernets:"]
        for (index, nic) in nics.enumerated() {
            lines += [
                "  eth\(index):", "    match:", "      macaddress: \(quoted(nic.mac))",
                "    set-name: \"eth\(index)\"",
            ]
            if index == 0, let ip = cloudInit.ip {
                lines += ["    addresses:", "      - \(quoted(ip))"]
                if let gateway = cloudInit.gateway {
                    let everywhere =
                        VMDefinition.CloudInit.family(gateway) == AF_INET6 ? "::/0" : "0.0.0.0/0"
                    lines += [
                        "    routes:", "      - to: \(quoted(everywhere))",
                        "        via: \(quoted(gateway))",
                    ]
                }
                if !cloudInit.dns.isEmpty {
                    lines += ["    nameservers:", "      addresses:"]
                    lines += cloudInit.dns.map { "        - \(quoted($0))" }
                }
            } else {
                lines.append("    dhcp4: true")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A YAML double-quoted scalar: JSON's string syntax is a subset of it.
    static func quoted(_ text: String) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(text)) ?? Data("\"\"".utf8), as: UTF8.self)
    }

    /// The files of the seed, in the order they are written.
    public var files: [(name: String, contents: String)] {
        [("meta-data", metaData), ("user-data", userData)]
            + (networkConfig.map { [("network-config", $0)] } ?? [])
    }

    /// Writes the seed image to `path` (mode 0644: the unprivileged VMM reads it) through a
    /// temporary file renamed over it, so a running reader never sees half an image. A path
    /// that holds anything but a regular file is refused.
    public func write(to path: String) throws {
        var existing = stat()
        if lstat(path, &existing) == 0, existing.st_mode & S_IFMT != S_IFREG {
            throw MartletError(
                .refused, "'\(path)' exists and is not a seed image file",
                hint: "remove it; Martlet writes the cloud-init seed there")
        }
        let temporary = path + ".tmp"
        if lstat(temporary, &existing) == 0 {
            guard existing.st_mode & S_IFMT == S_IFREG, unlink(temporary) == 0 else {
                throw MartletError(
                    .refused, "'\(temporary)' exists and is not a file Martlet left",
                    hint: "remove it")
            }
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw MartletError.system("open", path: temporary) }
        do {
            defer { close(fd) }
            try writeISO(fd: fd, path: temporary)
            guard fchmod(fd, 0o644) == 0, fsync(fd) == 0 else {
                throw MartletError.system("fchmod/fsync", path: temporary)
            }
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let error = MartletError.system("rename", path: path)
            unlink(temporary)
            throw error
        }
    }

    func writeISO(fd: Int32, path: String) throws {
        guard let archive = archive_write_new() else {
            throw MartletError(.failed, "archive_write_new failed")
        }
        defer { archive_write_free(archive) }
        func check(_ status: Int32, _ call: String) throws {
            guard status == ARCHIVE_OK else {
                let message = archive_error_string(archive).map { String(cString: $0) } ?? "unknown"
                throw MartletError(.failed, "libarchive '\(call)' failed for '\(path)': \(message)")
            }
        }
        try check(archive_write_set_format_iso9660(archive), "archive_write_set_format_iso9660")
        for (option, value) in [
            ("volume-id", Self.volumeLabel), ("joliet", "1"), ("rockridge", "1"),
        ] {
            try check(
                archive_write_set_option(archive, "iso9660", option, value),
                "archive_write_set_option(\(option)=\(value))")
        }
        // No padding after the image: it is a disk, not a tape.
        try check(archive_write_set_bytes_in_last_block(archive, 1), "archive_write_set_bytes_in_last_block")
        try check(archive_write_open_fd(archive, fd), "archive_write_open_fd")
        for file in files {
            guard let entry = archive_entry_new() else {
                throw MartletError(.failed, "archive_entry_new failed")
            }
            defer { archive_entry_free(entry) }
            let bytes = Array(file.contents.utf8)
            archive_entry_set_pathname(entry, file.name)
            archive_entry_set_filetype(entry, 0o100000)
            archive_entry_set_perm(entry, 0o644)
            archive_entry_set_size(entry, Int64(bytes.count))
            archive_entry_set_mtime(entry, time(nil), 0)
            try check(archive_write_header(archive, entry), "archive_write_header(\(file.name))")
            let written = bytes.withUnsafeBytes {
                archive_write_data(archive, $0.baseAddress, $0.count)
            }
            guard written == bytes.count else {
                try check(ARCHIVE_FATAL, "archive_write_data(\(file.name))")
                return
            }
        }
        try check(archive_write_close(archive), "archive_write_close")
    }
}
