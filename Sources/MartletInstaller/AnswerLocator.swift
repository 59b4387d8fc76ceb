import Foundation
import MartletCore

/// Finds the answer file named on the kernel command line (`martlet.answer=`): a path on the
/// boot medium, `label:MARTLET-ANSWER` (a partition or stick with that filesystem label,
/// holding `answer.toml`), an http(s) URL the machine's facts are POSTed to
/// (`AnswerFetch`, pinned with `martlet.answer-fingerprint=`), or `dhcp`: that URL from the
/// DHCP server (`AnswerLease`).
public enum AnswerLocator {
    public static let parameter = "martlet.answer="

    /// The value of `martlet.answer=` (or another `parameter`) in `cmdline`, or nil.
    public static func value(of parameter: String = parameter, inCommandLine cmdline: String) -> String? {
        cmdline.split(whereSeparator: { $0 == " " || $0 == "\n" })
            .last { $0.hasPrefix(parameter) }
            .map { String($0.dropFirst(parameter.count)) }
    }

    /// Where `path` (absolute or not) lies on the boot medium mounted at `medium`.
    public static func onMedium(_ path: String, medium: String = DiskDiscovery.defaultMediumMount) -> String {
        path.hasPrefix("/") ? "\(medium)\(path)" : "\(medium)/\(path)"
    }

    /// Fetches the answer named on /proc/cmdline into a local file and returns its path.
    public static func fromKernelCommandLine(
        cmdline: String = "/proc/cmdline", medium: String = DiskDiscovery.defaultMediumMount,
        workDirectory: String = "/run/martlet", leases: String = AnswerLease.defaultLeases
    ) throws -> String {
        func report(_ message: String) {
            FileHandle.standardError.write(Data("answer: \(message)\n".utf8))
        }
        let text = (try? String(contentsOfFile: cmdline, encoding: .utf8)) ?? ""
        guard let value = value(inCommandLine: text), !value.isEmpty else {
            throw MartletError(
                .notFound, "no answer file: give --answer FILE, or boot with martlet.answer=",
                hint:
                    "martlet.answer= takes a path on the boot medium, label:MARTLET-ANSWER, an http(s) URL, or dhcp"
            )
        }
        try FileManager.default.createDirectory(
            atPath: workDirectory, withIntermediateDirectories: true)
        let local = "\(workDirectory)/answer.toml"
        var url: String?
        var fingerprintText = Self.value(of: AnswerFetch.fingerprintParameter, inCommandLine: text)
        var fingerprintSource = AnswerFetch.fingerprintParameter
        if value == AnswerLease.commandLineValue {
            let lease = try AnswerLease.wait(directory: leases) { report($0) }
            report("answer URL \(lease.url) from DHCP (\(lease.source))")
            url = lease.url
            if fingerprintText == nil, let fromLease = lease.fingerprint {
                fingerprintText = fromLease
                fingerprintSource = "DHCP option \(AnswerLease.fingerprintOption) in \(lease.source): "
            }
        } else if value.hasPrefix("http://") || value.hasPrefix("https://") {
            url = value
        }
        if let url {
            var fingerprint: String?
            if let fingerprintText {
                guard let normalized = AnswerFetch.normalizedFingerprint(fingerprintText) else {
                    throw MartletError(
                        .invalidInput,
                        "\(fingerprintSource)\(fingerprintText) is not a SHA-256 fingerprint",
                        hint: "give 64 hex digits, with or without colons, as "
                            + "`openssl x509 -in CERT -noout -fingerprint -sha256` prints them")
                }
                fingerprint = normalized
            }
            // No loop devices: on the live system they are its own squashfs layers, noise to
            // a server choosing a target among the machine's disks.
            let facts = MachineInventory(
                disks: (try? DiskDiscovery(includeLoop: false).disks()) ?? [], nics: NICDiscovery().nics(),
                dmi: MachineInventory.dmi())
            try AnswerFetch(url: url, fingerprint: fingerprint).fetch(facts: facts, to: local) { report($0) }
            return local
        }
        if value.hasPrefix("label:") {
            let label = String(value.dropFirst("label:".count))
            let device = try Command("blkid", ["-L", label]).run(
                hint: "plug in the stick or disk whose filesystem is labelled \(label)"
            ).stdoutText
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let mountpoint = "\(workDirectory)/answer-medium"
            try FileManager.default.createDirectory(
                atPath: mountpoint, withIntermediateDirectories: true)
            try Command("mount", ["-o", "ro", device, mountpoint]).run()
            defer { _ = try? Command("umount", [mountpoint]).runAllowingFailure() }
            let source = "\(mountpoint)/answer.toml"
            guard FileManager.default.fileExists(atPath: source) else {
                throw MartletError(
                    .notFound, "\(device) (label \(label)) has no answer.toml at its top level")
            }
            try? FileManager.default.removeItem(atPath: local)
            try FileManager.default.copyItem(atPath: source, toPath: local)
            return local
        }
        let path = onMedium(value, medium: medium)
        guard FileManager.default.fileExists(atPath: path) else {
            throw MartletError(
                .notFound, "martlet.answer=\(value): no such file on the boot medium (\(path))")
        }
        return path
    }
}
