import Foundation

/// A block device's number, written `major:minor` as in sysfs `dev` files and mountinfo.
public struct DeviceNumber: Hashable, Sendable, CustomStringConvertible {
    public var major: UInt64
    public var minor: UInt64

    public init(major: UInt64, minor: UInt64) {
        self.major = major
        self.minor = minor
    }

    /// Splits a `dev_t` the way glibc's `major()`/`minor()` do (macros Swift cannot import):
    /// major in bits 8-19 and 44-63, minor in bits 0-7 and 20-43.
    public init(_ dev: dev_t) {
        let value = UInt64(dev)
        major = ((value >> 8) & 0xfff) | ((value >> 32) & ~UInt64(0xfff))
        minor = (value & 0xff) | ((value >> 12) & 0xffff_ff00)
    }

    /// Parses `major:minor`; nil for anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let major = UInt64(parts[0]), let minor = UInt64(parts[1]) else {
            return nil
        }
        self.init(major: major, minor: minor)
    }

    public var description: String { "\(major):\(minor)" }
}

/// What is mounted and swapped on which block device, from `/proc/self/mountinfo` and
/// `/proc/swaps`. The builder's flasher and the installer's disk discovery both refuse a disk
/// in use through this one reading.
public struct MountTable: Sendable {
    /// One mountinfo line: the device and where it is mounted (unescaped).
    public struct Mount: Sendable, Equatable {
        public var device: DeviceNumber
        public var mountpoint: String
    }

    public var mounts: [Mount] = []
    /// Block devices listed in /proc/swaps.
    public var swaps: [DeviceNumber] = []

    /// Parses mountinfo and swaps text; `swapDevice` turns a /proc/swaps file name into the
    /// device it is (a swap file is not a block device and gives nil).
    public init(
        mountInfo: String, swaps: String = "",
        swapDevice: (String) -> DeviceNumber? = MountTable.blockDevice(at:)
    ) {
        for line in mountInfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4, let device = DeviceNumber(fields[2]) else { continue }
            mounts.append(Mount(device: device, mountpoint: Self.unescape(fields[4])))
        }
        for line in swaps.split(separator: "\n").dropFirst() {
            guard let file = line.split(separator: " ").first else { continue }
            if let device = swapDevice(Self.unescape(file)) { self.swaps.append(device) }
        }
    }

    /// This process's mount table (missing files read as empty: nothing mounted).
    public static func read(
        mountInfo: String = "/proc/self/mountinfo", swaps: String = "/proc/swaps"
    ) -> MountTable {
        MountTable(
            mountInfo: SysfsAttribute.read(mountInfo) ?? "", swaps: SysfsAttribute.read(swaps) ?? "")
    }

    /// Mount points of `device`, plus `[swap]` when it is used as swap.
    public func mountpoints(of device: DeviceNumber) -> [String] {
        mounts.filter { $0.device == device }.map(\.mountpoint)
            + (swaps.contains(device) ? ["[swap]"] : [])
    }

    /// The device mounted at `path` (the last mount there wins, as in the kernel).
    public func device(mountedAt path: String) -> DeviceNumber? {
        mounts.last { $0.mountpoint == path }?.device
    }

    /// The device number of the block device node at `path`; nil for anything else.
    public static func blockDevice(at path: String) -> DeviceNumber? {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFBLK else { return nil }
        return DeviceNumber(info.st_rdev)
    }

    /// The kernel writes space, tab, newline and backslash in mountinfo and swaps as `\ooo`
    /// (octal); every such escape is decoded, as bytes, so UTF-8 names survive.
    public static func unescape(_ text: some StringProtocol) -> String {
        let utf8 = Array(text.utf8)
        func octal(_ index: Int) -> UInt8? {
            index < utf8.count && (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(utf8[index])
                ? utf8[index] - UInt8(ascii: "0") : nil
        }
        var bytes: [UInt8] = []
        var index = 0
        while index < utf8.count {
            if utf8[index] == UInt8(ascii: "\\"), let high = octal(index + 1), high <= 3,
                let middle = octal(index + 2), let low = octal(index + 3)
            {
                bytes.append(high << 6 | middle << 3 | low)
                index += 4
            } else {
                bytes.append(utf8[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// One block device's folder in sysfs (`/sys/block/sda`, `/sys/block/sda/sda1`), with the
/// attributes both the flasher and disk discovery read.
public struct SysfsBlockDevice: Sendable {
    /// The folder with symlinks resolved.
    public let directory: String

    public init(directory: String) {
        self.directory = URL(fileURLWithPath: directory).resolvingSymlinksInPath().path
    }

    /// The device `number` through `sysfs/dev/block/MAJOR:MINOR`; nil when it has no entry.
    public init?(number: DeviceNumber, sysfs: String = "/sys") {
        self.init(directory: "\(sysfs)/dev/block/\(number)")
        guard FileManager.default.fileExists(atPath: directory + "/dev") else { return nil }
    }

    /// The kernel's name, e.g. `sda` or `nvme0n1p2`.
    public var name: String { (directory as NSString).lastPathComponent }

    /// The attribute file at `relative` (e.g. `size`, `device/model`), trimmed; nil when it
    /// is missing or empty.
    public func attribute(_ relative: String) -> String? {
        SysfsAttribute.read("\(directory)/\(relative)")
    }

    public var number: DeviceNumber? { attribute("dev").flatMap { DeviceNumber($0) } }
    public var isPartition: Bool { FileManager.default.fileExists(atPath: directory + "/partition") }
    /// Size in bytes (sysfs counts 512-byte sectors whatever the device's sector size).
    public var size: UInt64? { attribute("size").flatMap { UInt64($0) }.map { $0 * 512 } }

    /// The partitions of a whole disk, sorted by name.
    public var partitions: [SysfsBlockDevice] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return entries.sorted().filter {
            FileManager.default.fileExists(atPath: "\(directory)/\($0)/partition")
        }.map { SysfsBlockDevice(directory: "\(directory)/\($0)") }
    }

    /// Kernel names of the devices stacked on this one (LVM, md, dm-crypt), sorted.
    public var holders: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/holders")) ?? [])
            .sorted()
    }
}

/// Reading small kernel text files (sysfs attributes, procfs tables).
public enum SysfsAttribute {
    /// The file's text, trimmed of surrounding white space; nil when missing or empty.
    public static func read(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(
            in: .whitespacesAndNewlines)
        return text.isEmpty ? nil : text
    }
}
