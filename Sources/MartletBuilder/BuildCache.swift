import Foundation
import MartletCore

/// One folder of cached build products under `/var/cache/martlet` (base layers, binaries
/// layers, host initramfs images), each file named by a digest of everything that decides its
/// bytes. An entry appears only once complete (made under `NAME.partial-PID`, then renamed),
/// so a killed build never leaves a bad one; a new key adds an entry, and the folder keeps
/// only its most recently used ones.
struct BuildCache {
    let folder: String
    /// Entries kept when a new one is added.
    let keep: Int
    let suffix: String

    init(_ options: BuildOptions, _ name: String, suffix: String, keep: Int) throws {
        folder = options.cacheDirectory + "/" + name
        self.keep = keep
        self.suffix = suffix
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        Self.removeAbandonedPartials(in: folder)
    }

    func path(_ key: String, prefix: String = "") -> String {
        folder + "/" + prefix + key.prefix(16) + suffix
    }

    /// The entry for `key`: taken from the cache when `reuse` allows and it is there (then
    /// marked as used), else made by `make` into the temporary path it is given and stored.
    func entry(
        _ key: String, prefix: String = "", reuse: Bool, make: (_ temporary: String) throws -> Void
    ) throws -> (path: String, cached: Bool) {
        let path = path(key, prefix: prefix)
        if reuse, FileManager.default.fileExists(atPath: path) {
            _ = utimensat(AT_FDCWD, path, nil, 0)
            return (path, true)
        }
        let temporary = path + ".partial-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        try make(temporary)
        // rename(2) replaces atomically: a concurrent build that stored the same key first
        // is overwritten with the same bytes.
        if rename(temporary, path) != 0 { throw MartletError.system("rename", path: path) }
        _ = utimensat(AT_FDCWD, path, nil, 0)
        prune()
        return (path, false)
    }

    /// Removes all but the `keep` most recently used entries.
    private func prune() {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [])
            .filter { $0.hasSuffix(suffix) }
        let byAge = names.map { name -> (String, Date) in
            let path = folder + "/" + name
            let date = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
            return (path, date ?? .distantPast)
        }.sorted { $0.1 > $1.1 }
        for (path, _) in byAge.dropFirst(keep) {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    /// A build killed while making an entry leaves `NAME.partial-PID`; once PID is gone the
    /// file is garbage (and large). The rootfs tarballs follow the same rule.
    static func removeAbandonedPartials(in directory: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            guard let range = name.range(of: ".partial-"),
                let pid = pid_t(name[range.upperBound...]),
                kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            try? FileManager.default.removeItem(atPath: directory + "/" + name)
        }
    }
}
