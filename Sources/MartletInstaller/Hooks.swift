import Foundation
import MartletAnswer
import MartletCore

/// The `[first-boot]` script on the installed host: kept in /var/lib/martlet/first-boot and
/// run by a oneshot unit at the chosen point of the first boot, its output in the journal
/// (`journalctl -u martlet-first-boot`); the unit disables itself whether the script
/// succeeds or not, so it runs once.
public enum FirstBootHook {
    public static let unitName = "martlet-first-boot.service"
    public static let scriptPath = "/var/lib/martlet/first-boot/script"

    /// The unit for `point`.
    public static func unit(at point: AnswerFile.FirstBootPoint) -> String {
        var ordering: [(String, String)]
        switch point {
        case .beforeNetwork:
            ordering = [("Wants", "network-pre.target"), ("Before", "network-pre.target")]
        case .networkOnline:
            ordering = [("Wants", "network-online.target"), ("After", "network-online.target")]
        case .multiUser:
            ordering = [("After", "multi-user.target")]
        }
        return NetworkConfiguration.unit([
            (
                "Unit",
                [("Description", "Martlet first-boot hook (\(point.rawValue)) from the answer file")]
                    + ordering + [("ConditionPathExists", scriptPath)]
            ),
            (
                "Service",
                [
                    ("Type", "oneshot"), ("ExecStart", scriptPath),
                    ("ExecStopPost", "/usr/bin/systemctl disable \(unitName)"),
                    ("StandardOutput", "journal"), ("StandardError", "journal"),
                    ("SyslogIdentifier", "martlet-first-boot"), ("TimeoutStartSec", "30min"),
                ]
            ),
            ("Install", [("WantedBy", "multi-user.target")]),
        ])
    }

    /// The script's bytes: a file on the boot medium, or fetched from its URL.
    public static func script(
        _ answer: AnswerFile.FirstBootAnswer, medium: String = DiskDiscovery.defaultMediumMount
    ) throws -> Data {
        if answer.script.hasPrefix("http://") || answer.script.hasPrefix("https://") {
            return try Command(
                "curl",
                [
                    "--fail", "--silent", "--show-error", "--location", "--retry", "3",
                    "--max-time", "60", answer.script,
                ]
            ).run(hint: "check first-boot.script and the network of the live system").stdout
        }
        let path = AnswerLocator.onMedium(answer.script, medium: medium)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MartletError(
                .notFound, "first-boot.script: '\(answer.script)' is not on the boot medium (\(path))")
        }
        return data
    }

    /// Writes the script (0700), the unit (0644) and its enabling link into `root`.
    public static func install(script: Data, at point: AnswerFile.FirstBootPoint, into root: String)
        throws
    {
        let files = [
            (root + scriptPath, script, 0o700),
            ("\(root)/etc/systemd/system/\(unitName)", Data(unit(at: point).utf8), 0o644),
        ]
        for (path, contents, mode) in files {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            guard !FileManager.default.fileExists(atPath: path) else {
                throw MartletError(.refused, "\(path) already exists; the installer does not replace it")
            }
            guard
                FileManager.default.createFile(
                    atPath: path, contents: contents, attributes: [.posixPermissions: mode])
            else { throw MartletError.system("open", path: path) }
        }
        let wants = "\(root)/etc/systemd/system/multi-user.target.wants"
        try FileManager.default.createDirectory(atPath: wants, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            atPath: "\(wants)/\(unitName)", withDestinationPath: "/etc/systemd/system/\(unitName)")
    }
}

/// What `[post-install] webhook` is POSTed when the install ends, well or not.
public struct InstallReport: Codable, Sendable, Equatable {
    public var hostname: String
    /// `installed` or `failed`.
    public var result: String
    public var error: String?
    public var target: String
    public var seconds: Double
    public var machine: MachineInventory

    public init(
        hostname: String, result: String, error: String?, target: String, seconds: Double,
        machine: MachineInventory
    ) {
        self.hostname = hostname
        self.result = result
        self.error = error
        self.target = target
        self.seconds = seconds
        self.machine = machine
    }

    /// POSTs the report to `url` (3 tries); a failure is returned for the caller to show,
    /// since the install itself is over by then.
    public func post(to url: String) -> MartletError? {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let body = try? encoder.encode(self) else {
            return MartletError(.failed, "post-install.webhook: the report cannot be encoded")
        }
        do {
            let result = try Command(
                "curl",
                [
                    "--fail", "--silent", "--show-error", "--retry", "2", "--max-time", "30",
                    "--header", "Content-Type: application/json", "--data-binary", "@-",
                    "--output", "/dev/null", url,
                ]
            ).runAllowingFailure(input: body)
            guard result.status == 0 else {
                return MartletError(
                    .failed,
                    "post-install.webhook \(url): curl exited with \(result.status): "
                        + result.stderr.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            return nil
        } catch let error as MartletError {
            return error
        } catch {
            return MartletError(.failed, "post-install.webhook \(url): \(error)")
        }
    }
}
