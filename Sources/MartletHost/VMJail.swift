import Foundation
import MartletCore
import MartletSystem
import MartletVMMProtocol

/// What a jailed VMM sees: its root is an empty tmpfs (`HostPaths.jailRoot`, a mount only its
/// own mount namespace has) holding, at the same paths as on the host so `vmm.json` needs no
/// rewriting: /usr read-only (its program and the C libraries), its configuration, kernel,
/// initrd or firmware read-only, its disks as the definition says, its console log and its
/// own run directory (control and serial sockets), /dev/kvm, /dev/null, /dev/urandom, and
/// /dev/net/tun and /dev/vhost-net when it has NICs (it opens its taps by name, so it keeps
/// the host's network namespace; vhost-net moves their frames in the kernel). Nothing else of the host: no /etc, no other VM's disks or sockets.
enum VMJail {
    /// The host directories that are (on merged-/usr hosts) symbolic links into /usr: the
    /// dynamic loader is /lib64/ld-linux-x86-64.so.2.
    static let libraryLinks = ["/lib", "/lib64"]

    static func layout(
        config: VMConfig, configFile: String, vmmDirectory: String, vmm: String, root: String,
        credentials: JailLayout.Credentials?
    ) throws -> JailLayout {
        var entries = systemEntries()
        // A VMM outside /usr (a development build) brings its own program and the directories
        // of the shared libraries it links from elsewhere (the Swift runtime of a debug build).
        if !vmm.hasPrefix("/usr/") {
            for directory in try libraryDirectories(of: vmm) where !isShared(directory, entries) {
                entries.append(.bind(source: directory, target: directory, readOnly: true))
            }
            entries.append(.bind(source: vmm, target: vmm, readOnly: true))
        }
        var readOnly = [configFile, config.kernel] + [config.initrd, config.firmware].compactMap { $0 }
        readOnly.removeAll { $0.isEmpty }
        for path in readOnly where !isShared(path, entries) {
            entries.append(.bind(source: path, target: path, readOnly: true))
        }
        for disk in config.disks {
            entries.append(.bind(source: disk.path, target: disk.path, readOnly: disk.readOnly))
        }
        if let log = config.serialLog { entries.append(.bind(source: log, target: log, readOnly: false)) }
        entries.append(.bind(source: vmmDirectory, target: vmmDirectory, readOnly: false))
        var devices = ["/dev/kvm", "/dev/null", "/dev/urandom"]
        if !config.nics.isEmpty { devices += ["/dev/net/tun", "/dev/vhost-net"] }
        // A device the host lacks stays out: the VMM then says what is missing and what to do
        // ("/dev/kvm does not exist … enable virtualization"), or without /dev/vhost-net moves
        // frames itself, rather than the jail failing.
        for device in devices where FileManager.default.fileExists(atPath: device) {
            entries.append(.bind(source: device, target: device, readOnly: false))
        }
        return JailLayout(root: root, entries: entries, credentials: credentials)
    }

    /// /usr read-only and /lib, /lib64 as on the host: what a dynamically linked program needs.
    static func systemEntries() -> [JailLayout.Entry] {
        var entries: [JailLayout.Entry] = [.bind(source: "/usr", target: "/usr", readOnly: true)]
        for path in libraryLinks {
            if let destination = try? FileManager.default.destinationOfSymbolicLink(atPath: path) {
                entries.append(.symlink(path: path, destination: destination))
            } else if FileManager.default.fileExists(atPath: path) {
                entries.append(.bind(source: path, target: path, readOnly: true))
            }
        }
        return entries
    }

    /// True when `path` is already in the jail through a directory bound at its own path.
    static func isShared(_ path: String, _ entries: [JailLayout.Entry]) -> Bool {
        entries.contains { entry in
            guard case .bind(let source, let target, _) = entry, source == target else { return false }
            return path == target || path.hasPrefix(target + "/")
        }
    }

    /// The directories `ldd` finds `executable`'s shared libraries in, outside /usr and /lib*;
    /// none for a static program.
    static func libraryDirectories(of executable: String) throws -> [String] {
        let output = try Command("ldd", [executable]).runAllowingFailure().stdoutText
        var directories: [String] = []
        for line in output.split(separator: "\n") {
            guard let arrow = line.range(of: "=> /") else { continue }
            let path = line[line.index(before: arrow.upperBound)...].split(separator: " ").first.map(String.init) ?? ""
            let directory = (path as NSString).deletingLastPathComponent
            if directory.hasPrefix("/usr/") || directory.hasPrefix("/lib") || directories.contains(directory) {
                continue
            }
            directories.append(directory)
        }
        return directories
    }

    /// The VMM user's credentials as `setpriv --init-groups` would set them.
    static func credentials(user: String, uid: uid_t, gid: gid_t) -> JailLayout.Credentials {
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        while getgrouplist(user, gid, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
        }
        return JailLayout.Credentials(uid: uid, gid: gid, groups: Array(groups.prefix(Int(count))))
    }
}
