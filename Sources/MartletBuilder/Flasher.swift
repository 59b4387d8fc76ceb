import Foundation
import MartletCore

/// What `martlet flash` is about to write to.
public struct FlashTarget: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable {
        case blockDevice = "block-device"
        case file
    }

    /// The path as given (`/dev/sdb`, `/dev/disk/by-id/usb-…`, or a file).
    public var path: String
    public var kind: Kind
    /// Kernel name (`sdb`, `loop3`) of a block device.
    public var name: String?
    /// Size in bytes of a block device.
    public var size: UInt64?
    /// The kernel's removable flag, or a device on the USB bus.
    public var removable: Bool
    /// `usb` when the device hangs off a USB controller.
    public var transport: String?
    public var model: String?

    /// `sdb (SanDisk Ultra, 28.6 GiB, USB, removable)`.
    public var summary: String {
        guard kind == .blockDevice else { return "file \(path)" }
        var facts: [String] = []
        if let model, !model.isEmpty { facts.append(model) }
        if let size { facts.append("\(ByteSize(size))") }
        if transport == "usb" { facts.append("USB") }
        facts.append(removable ? "removable" : "not removable")
        return "\(path) (\(name ?? "?"): \(facts.joined(separator: ", ")))"
    }
}

/// What a finished flash wrote and read back.
public struct FlashResult: Sendable, Codable, Equatable {
    public var iso: String
    public var target: FlashTarget
    public var bytes: UInt64
    /// sha256 of the ISO as it was written.
    public var sha256: String
    /// sha256 of the same number of bytes read back from the target.
    public var readBackSHA256: String
    public var writeSeconds: Double
    public var verifySeconds: Double
    public var verified: Bool { sha256 == readBackSHA256 }

    private enum CodingKeys: String, CodingKey {
        case iso, target, bytes, sha256, readBackSHA256, writeSeconds, verifySeconds, verified
    }

    public init(
        iso: String, target: FlashTarget, bytes: UInt64, sha256: String, readBackSHA256: String,
        writeSeconds: Double, verifySeconds: Double
    ) {
        self.iso = iso
        self.target = target
        self.bytes = bytes
        self.sha256 = sha256
        self.readBackSHA256 = readBackSHA256
        self.writeSeconds = writeSeconds
        self.verifySeconds = verifySeconds
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            iso: try c.decode(String.self, forKey: .iso),
            target: try c.decode(FlashTarget.self, forKey: .target),
            bytes: try c.decode(UInt64.self, forKey: .bytes),
            sha256: try c.decode(String.self, forKey: .sha256),
            readBackSHA256: try c.decode(String.self, forKey: .readBackSHA256),
            writeSeconds: try c.decode(Double.self, forKey: .writeSeconds),
            verifySeconds: try c.decode(Double.self, forKey: .verifySeconds))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(iso, forKey: .iso)
        try c.encode(target, forKey: .target)
        try c.encode(bytes, forKey: .bytes)
        try c.encode(sha256, forKey: .sha256)
        try c.encode(readBackSHA256, forKey: .readBackSHA256)
        try c.encode(writeSeconds, forKey: .writeSeconds)
        try c.encode(verifySeconds, forKey: .verifySeconds)
        try c.encode(verified, forKey: .verified)
    }
}

/// Writes an ISO to a USB stick (or a file) the way `dd` does, with the checks `dd` lacks:
/// refuses a disk that is not removable (unless `force`), always refuses a disk that is
/// mounted, used as swap or held by another device (LVM, RAID, dm-crypt), refuses a partition
/// and a target smaller than the ISO; then fsyncs and reads everything back to compare sha256.
public struct Flasher: Sendable {
    public var iso: String
    public var device: String
    /// Write to a block device that is not removable (an internal disk).
    public var force: Bool
    /// Where sysfs and procfs live (tests may point them elsewhere).
    public var sysfs = "/sys"
    public var mountInfo = "/proc/self/mountinfo"
    public var swaps = "/proc/swaps"

    static let chunkSize = 4 << 20
    static let flushInterval: UInt64 = 32 << 20

    public init(iso: String, device: String, force: Bool = false) {
        self.iso = iso
        self.device = device
        self.force = force
    }

    /// Runs every safety check and describes the target; throws `refused` (exit status 6)
    /// naming the reason, or `notFound`/`invalidInput` for a wrong ISO or device path.
    public func inspect() throws -> FlashTarget {
        let isoSize = try checkISO()
        var info = stat()
        guard stat(device, &info) == 0 else {
            let parent = (device as NSString).deletingLastPathComponent
            let isNewFile =
                errno == ENOENT && !device.hasPrefix("/dev/")
                && FileManager.default.fileExists(atPath: parent.isEmpty ? "." : parent)
            if isNewFile {
                // dd creates a missing output file; so do we, outside /dev.
                return FlashTarget(path: device, kind: .file, removable: false)
            }
            if errno == ENOENT {
                throw MartletError(
                    .notFound, "target '\(device)' does not exist",
                    hint: "list disks with: lsblk -d -o NAME,SIZE,RM,TRAN,MODEL")
            }
            throw MartletError.system("stat", path: device)
        }
        var isoInfo = stat()
        if stat(iso, &isoInfo) == 0, isoInfo.st_dev == info.st_dev, isoInfo.st_ino == info.st_ino {
            throw MartletError(
                .refused, "'\(device)' is the ISO itself", hint: "name another target")
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            return FlashTarget(path: device, kind: .file, removable: false)
        case S_IFBLK:
            let target = try blockDevice(info.st_rdev)
            try checkInUse(target, rdev: info.st_rdev)
            if !target.removable && !force {
                throw MartletError(
                    .refused,
                    "\(target.summary) is not a removable disk; refusing to overwrite it",
                    hint:
                        "check that this is the USB stick you mean (lsblk -d -o NAME,SIZE,RM,TRAN,MODEL); if it is, add --force"
                )
            }
            if let size = target.size, size < isoSize {
                throw MartletError(
                    .refused,
                    "\(target.summary) is smaller than the ISO (\(ByteSize(isoSize)))",
                    hint: "use a stick of at least \(ByteSize(isoSize))")
            }
            return target
        default:
            throw MartletError(
                .invalidInput, "'\(device)' is neither a block device nor a regular file",
                hint: "name a whole disk such as /dev/sdb, or an image file")
        }
    }

    /// Checks (`inspect`), writes, fsyncs and reads back. Throws `verificationFailed` when the
    /// bytes read back differ from the ISO.
    public func flash(progress: any ProgressSink = SilentProgress()) throws -> FlashResult {
        let target = try inspect()
        let isoSize = try checkISO()
        let source = open(iso, O_RDONLY | O_CLOEXEC)
        guard source >= 0 else { throw MartletError.system("open", path: iso) }
        defer { close(source) }

        let flags =
            target.kind == .blockDevice
            ? O_WRONLY | O_EXCL | O_CLOEXEC : O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC
        let output = open(device, flags, 0o644)
        guard output >= 0 else {
            if errno == EBUSY {
                throw MartletError(
                    .refused, "\(device) is in use (the kernel says EBUSY)",
                    hint: "unmount its file systems and stop what holds it, then try again")
            }
            throw MartletError.system(
                "open", path: device, hint: Privilege.isRoot ? nil : "writing to a disk needs root")
        }
        var outputOpen = true
        defer { if outputOpen { close(output) } }
        if target.kind == .blockDevice {
            let size = lseek(output, 0, SEEK_END)
            if size >= 0, UInt64(size) < isoSize {
                throw MartletError(
                    .refused,
                    "\(device) holds \(ByteSize(UInt64(size))), less than the ISO (\(ByteSize(isoSize)))"
                )
            }
            lseek(output, 0, SEEK_SET)
        }

        let write = StageReporter(sink: progress, stage: "write", index: 1, count: 2)
        write.begin("\(iso) → \(target.summary)")
        let hash = SHA256()
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: Self.chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        var written: UInt64 = 0
        while written < isoSize {
            let count = try readChunk(source, into: buffer, path: iso)
            guard count > 0 else {
                throw MartletError(
                    .failed,
                    "\(iso) ended after \(written) of \(isoSize) bytes; did it change while flashing?"
                )
            }
            let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
            try writeAll(output, chunk)
            hash.update(bufferPointer: chunk)
            written += UInt64(count)
            // Flush as we go on a device, so the progress shows what the stick has stored
            // rather than what the page cache has taken (and the final sync is short).
            if target.kind == .blockDevice, written % Self.flushInterval < UInt64(count) {
                guard fdatasync(output) == 0 else {
                    throw MartletError.system(
                        "fdatasync", path: device,
                        hint: "the device failed to store the data; try another stick")
                }
            }
            write.update(
                completed: written, total: isoSize, unit: "bytes",
                message: Self.rate(written, write.elapsed))
        }
        write.note("syncing (waiting for the device to store everything)")
        guard fsync(output) == 0 else {
            throw MartletError.system(
                "fsync", path: device,
                hint: "the device failed to store the data; try another stick")
        }
        outputOpen = false
        guard close(output) == 0 else { throw MartletError.system("close", path: device) }
        let writeSeconds = write.elapsed
        write.end(
            "\(ByteSize(written)) written in \(String(format: "%.1f", writeSeconds)) s (\(Self.rate(written, writeSeconds)))"
        )
        let sha256 = Digest.hex(hash.finalize())

        let verify = StageReporter(sink: progress, stage: "verify", index: 2, count: 2)
        verify.begin("reading \(ByteSize(isoSize)) back from \(device)")
        let readBack = try readBackHash(count: isoSize, buffer: buffer, stage: verify)
        let verifySeconds = verify.elapsed
        let result = FlashResult(
            iso: iso, target: target, bytes: written, sha256: sha256, readBackSHA256: readBack,
            writeSeconds: writeSeconds, verifySeconds: verifySeconds)
        guard result.verified else {
            verify.end("MISMATCH")
            throw MartletError(
                .verificationFailed,
                "what \(device) returns differs from the ISO: wrote sha256 \(sha256), read back \(readBack)",
                hint: "the stick may be faulty or fake (smaller than it claims); try another one")
        }
        verify.end("read back, sha256 \(sha256) matches")
        return result
    }

    // MARK: - Checks

    /// The ISO's size; refuses an empty file or one without an ISO 9660 descriptor (unless
    /// `force`).
    private func checkISO() throws -> UInt64 {
        var info = stat()
        guard stat(iso, &info) == 0 else {
            throw MartletError(.notFound, "ISO '\(iso)' does not exist", hint: "check the path")
        }
        guard info.st_mode & S_IFMT == S_IFREG, info.st_size > 0 else {
            throw MartletError(.invalidInput, "'\(iso)' is not a non-empty regular file")
        }
        if !force {
            let magic = FileHandle(forReadingAtPath: iso).flatMap { handle -> Data? in
                defer { try? handle.close() }
                try? handle.seek(toOffset: 0x8001)
                return try? handle.read(upToCount: 5)
            }
            guard magic == Data("CD001".utf8) else {
                throw MartletError(
                    .refused, "'\(iso)' is not an ISO 9660 image",
                    hint: "give the .iso that martlet build wrote, or add --force to write any file"
                )
            }
        }
        return UInt64(info.st_size)
    }

    /// Describes the block device `rdev` from sysfs; refuses a partition.
    private func blockDevice(_ rdev: dev_t) throws -> FlashTarget {
        let number = DeviceNumber(rdev)
        guard let sysDevice = SysfsBlockDevice(number: number, sysfs: sysfs) else {
            throw MartletError(
                .notFound, "no sysfs entry for \(device) (\(sysfs)/dev/block/\(number))")
        }
        let name = sysDevice.name
        if sysDevice.isPartition {
            let disk = ((sysDevice.directory as NSString).deletingLastPathComponent as NSString)
                .lastPathComponent
            throw MartletError(
                .refused, "\(device) is a partition (\(name)) of /dev/\(disk)",
                hint: "an ISO goes onto the whole disk: use /dev/\(disk)")
        }
        let removable = sysDevice.attribute("removable") == "1"
        let usb = sysDevice.directory.contains("/usb")
        return FlashTarget(
            path: device, kind: .blockDevice, name: name, size: sysDevice.size,
            removable: removable || usb, transport: usb ? "usb" : nil,
            model: sysDevice.attribute("device/model"))
    }

    /// Refuses a device (or one of its partitions) that is mounted, swap, or held by another
    /// block device. `--force` does not override this.
    private func checkInUse(_ target: FlashTarget, rdev: dev_t) throws {
        let disk = SysfsBlockDevice(directory: "\(sysfs)/dev/block/\(DeviceNumber(rdev))")
        let nodes = [(target.name ?? device, disk)] + disk.partitions.map { ($0.name, $0) }
        let byNumber = Dictionary(
            nodes.compactMap { name, node in node.number.map { ($0, name) } },
            uniquingKeysWith: { a, _ in a })
        let table = MountTable.read(mountInfo: mountInfo, swaps: swaps)

        let mounted = table.mounts.compactMap { mount in
            byNumber[mount.device].map { "/dev/\($0) on \(mount.mountpoint)" }
        }
        if !mounted.isEmpty {
            throw MartletError(
                .refused, "\(device) is mounted: \(mounted.joined(separator: ", "))",
                hint:
                    "unmount it first (umount \(mounted.map { $0.components(separatedBy: " on ")[1] }.joined(separator: " "))); --force does not override this"
            )
        }

        let swapped = table.swaps.compactMap { byNumber[$0].map { "/dev/\($0)" } }
        if !swapped.isEmpty {
            throw MartletError(
                .refused, "\(device) is in use as swap: \(swapped.joined(separator: ", "))",
                hint:
                    "swapoff \(swapped.joined(separator: " ")) first; --force does not override this"
            )
        }

        var holders: [String] = []
        for (name, node) in nodes {
            for holder in node.holders {
                let dmName = SysfsAttribute.read("\(sysfs)/block/\(holder)/dm/name")
                holders.append(
                    "/dev/\(name) is held by \(holder)\(dmName.map { " (\($0))" } ?? "")")
            }
        }
        if !holders.isEmpty {
            throw MartletError(
                .refused, "\(device) is in use: \(holders.joined(separator: ", "))",
                hint:
                    "deactivate what uses it (vgchange -an, mdadm --stop, cryptsetup close) first; --force does not override this"
            )
        }
    }

    // MARK: - I/O

    private func readBackHash(
        count: UInt64, buffer: UnsafeMutableRawBufferPointer, stage: StageReporter
    ) throws -> String {
        let input = open(device, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw MartletError.system("open", path: device) }
        defer { close(input) }
        // Drop cached pages so the bytes come from the device, not from what we just wrote.
        _ = posix_fadvise(input, 0, 0, POSIX_FADV_DONTNEED)
        let hash = SHA256()
        var done: UInt64 = 0
        while done < count {
            let want = Int(min(UInt64(buffer.count), count - done))
            let got = try readChunk(
                input, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), path: device
            )
            guard got > 0 else {
                throw MartletError(
                    .verificationFailed,
                    "\(device) ended after \(done) of \(count) bytes while reading back")
            }
            hash.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
            done += UInt64(got)
            stage.update(
                completed: done, total: count, unit: "bytes",
                message: Self.rate(done, stage.elapsed))
        }
        return Digest.hex(hash.finalize())
    }

    /// One `read(2)`, retried on EINTR.
    private func readChunk(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String)
        throws -> Int
    {
        while true {
            let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            if errno != EINTR { throw MartletError.system("read", path: path) }
        }
    }

    /// `write(2)` until every byte is out, retried on EINTR and short writes.
    private func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let count = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if count < 0 {
                if errno == EINTR { continue }
                let hint =
                    errno == ENOSPC
                    ? "the target is full" : "the device may have been removed or be faulty"
                throw MartletError.system("write", path: device, hint: hint)
            }
            offset += count
        }
    }

    static func rate(_ bytes: UInt64, _ seconds: Double) -> String {
        guard seconds > 0 else { return "" }
        return String(format: "%.1f MB/s", Double(bytes) / seconds / 1e6)
    }
}
