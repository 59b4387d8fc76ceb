import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletInstaller

/// The test runner may start with a PATH that lacks the system directories the tools live in.
let standardPath: Void = {
    let current = ProcessInfo.processInfo.environment["PATH"] ?? ""
    let missing = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .filter { !current.split(separator: ":").contains(Substring($0)) }
    if !missing.isEmpty {
        setenv("PATH", ((current.isEmpty ? [] : [current]) + missing).joined(separator: ":"), 1)
    }
}()

/// Runs a command and returns stdout; throws with stderr when it fails.
@discardableResult
func sh(_ executable: String, _ arguments: [String], input: Data? = nil) throws -> String {
    standardPath
    return try Command(executable, arguments).run(input: input).stdoutText
}

/// Every suite that uses loop devices or LVM nests in here, so they run one at a time.
@Suite("Loop devices and LVM", .serialized)
enum LoopDeviceSuites {}

/// A sparse file attached as a loop device with partition scanning. `deinit` unmounts what
/// is mounted from it, deactivates volume groups on it and detaches it, also after failures.
final class LoopDisk {
    let file: String
    let path: String

    init(size: ByteSize) throws {
        file = "/var/tmp/martlet-installer-test-\(UUID().uuidString.prefix(8)).img"
        standardPath
        guard FileManager.default.createFile(atPath: file, contents: nil) else {
            throw MartletError(.failed, "cannot create \(file)")
        }
        guard truncate(file, off_t(size.bytes)) == 0 else {
            try? FileManager.default.removeItem(atPath: file)
            throw MartletError.system("truncate", path: file)
        }
        do {
            path = try sh("losetup", ["--find", "--show", "--partscan", file])
                .trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            try? FileManager.default.removeItem(atPath: file)
            throw error
        }
    }

    func partition(_ number: Int) -> String { "\(path)p\(number)" }

    /// Writes a partition table with sfdisk and waits for the kernel's partition devices.
    func partition(script: String, count: Int) throws {
        try sh("sfdisk", ["--quiet", path], input: Data(script.utf8))
        // Some kernels ignore the re-read ioctl on loop devices; partx adds them one by one.
        _ = try? sh("partx", ["--update", path])
        for _ in 0..<50 where !FileManager.default.fileExists(atPath: partition(count)) {
            usleep(100_000)
        }
        guard FileManager.default.fileExists(atPath: partition(count)) else {
            throw MartletError(
                .failed, "\(partition(count)) did not appear within 5 s of partitioning \(path)")
        }
    }

    /// An 8 GiB disk with leftovers of an old system: GPT, an ext4 partition labelled
    /// `olddata` and an LVM physical volume, written with sfdisk, mkfs.ext4 and pvcreate.
    static func withOldData() throws -> LoopDisk {
        let disk = try LoopDisk(size: .gib(8))
        try disk.partition(
            script: "label: gpt\nsize=200MiB, name=old\n"
                + "size=200MiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
            count: 2)
        try sh("mkfs.ext4", ["-q", "-L", "olddata", disk.partition(1)])
        try sh("pvcreate", ["-q", "-ff", "-y", disk.partition(2)])
        return disk
    }

    /// Volume groups with a physical volume on this disk.
    func volumeGroups() -> [String] {
        let name = (path as NSString).lastPathComponent
        let devices =
            ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/block/\(name)")) ?? [])
            .filter { $0.hasPrefix(name + "p") }.map { "/dev/\($0)" } + [path]
        return devices.compactMap { device in
            let group =
                (try? Command("pvs", ["--noheadings", "-o", "vg_name", device])
                .runAllowingFailure())?
                .stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            return group.isEmpty ? nil : group
        }
    }

    deinit {
        let name = (path as NSString).lastPathComponent
        let mountinfo = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in mountinfo.split(separator: "\n").reversed() {
            let fields = line.split(separator: " ")
            guard let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            let source = fields[dash + 2]
            if source == path || source.hasPrefix("/dev/\(name)p")
                || source.hasPrefix("/dev/mapper/")
            {
                if source.hasPrefix("/dev/mapper/")
                    && !volumeGroups().contains(where: { source.contains($0) })
                {
                    continue
                }
                _ = try? Command("umount", ["-l", String(fields[4])])
                    .runAllowingFailure()
            }
        }
        for group in volumeGroups() {
            _ = try? Command("vgchange", ["-an", group]).runAllowingFailure()
        }
        _ = try? Command("losetup", ["-d", path]).runAllowingFailure()
        try? FileManager.default.removeItem(atPath: file)
    }
}

/// A temporary directory removed in `deinit`.
final class TemporaryDirectory {
    let path: String

    init(_ prefix: String = "martlet-installer-test") throws {
        standardPath
        path = try Installer.temporaryDirectory("/var/tmp/\(prefix)")
    }

    @discardableResult
    func write(_ name: String, _ text: String) -> String {
        let file = "\(path)/\(name)"
        _ = FileManager.default.createFile(atPath: file, contents: Data(text.utf8))
        return file
    }

    deinit {
        _ = try? Command("rm", ["-rf", "--one-file-system", path]).runAllowingFailure()
    }
}

/// A valid answer file; tests replace lines to break it.
func validAnswer(
    target: String = "/dev/sdz", wipe: Bool = false, group: String = "martlet",
    storage: String = "lvm-thin", swap: String = "1GiB"
) -> String {
    """
    [global]
    hostname = "hv1.example.org"
    timezone = "Europe/Paris"
    keyboard = "de"
    root-password = "s3cret pass"
    root-ssh-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy admin@example.org"]
    reboot-mode = "none"

    [disk]
    target = "\(target)"
    filesystem = "ext4"
    swap-size = "\(swap)"
    wipe = \(wipe)

    [storage]
    type = "\(storage)"
    volume-group = "\(group)"

    [network]
    interface = "52:54:00:12:34:56"
    mode = "static"
    address = "192.0.2.10/24"
    gateway = "192.0.2.1"
    dns = ["192.0.2.53", "2001:db8::53"]
    ipv6 = "2001:db8::10/64"
    ipv6-gateway = "2001:db8::1"
    vlan = 42

    """
}
