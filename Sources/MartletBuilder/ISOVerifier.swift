import Foundation
import MartletCore

/// One check of `martlet verify`: its name, whether it passed, and what was found.
public struct ISOCheck: Sendable, Codable, Equatable {
    /// `el-torito`, `mbr`, `gpt`, `label`, `squashfs`, `sha256sums` or `iso-sha256`.
    public var name: String
    public var passed: Bool
    public var detail: String

    public init(name: String, passed: Bool, detail: String) {
        self.name = name
        self.passed = passed
        self.detail = detail
    }
}

/// The outcome of verifying one ISO.
public struct ISOVerificationReport: Sendable, Codable, Equatable {
    public var iso: String
    public var checks: [ISOCheck]
    public var passed: Bool { checks.allSatisfy(\.passed) }

    public func check(_ name: String) -> ISOCheck? { checks.first { $0.name == name } }

    /// A `verificationFailed` error naming the failed checks, or nil when all passed.
    public var failure: MartletError? {
        let failed = checks.filter { !$0.passed }
        guard !failed.isEmpty else { return nil }
        return MartletError(
            .verificationFailed,
            "'\(iso)' failed \(failed.count) of \(checks.count) checks: "
                + failed.map(\.name).joined(separator: ", "),
            hint: "rebuild the ISO (martlet build), or download it again",
            cause: failed.map { "\($0.name): \($0.detail)" }.joined(separator: "\n"))
    }

    private enum CodingKeys: String, CodingKey { case iso, checks, passed }

    public init(iso: String, checks: [ISOCheck]) {
        self.iso = iso
        self.checks = checks
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        iso = try container.decode(String.self, forKey: .iso)
        checks = try container.decode([ISOCheck].self, forKey: .checks)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(iso, forKey: .iso)
        try container.encode(checks, forKey: .checks)
        try container.encode(passed, forKey: .passed)
    }
}

/// Checks a Martlet ISO without root: boot records for BIOS and UEFI (El Torito), the hybrid
/// partition tables (MBR + GPT with an EFI system partition), the volume label, the live
/// squashfs, and every file against the in-ISO `/SHA256SUMS`; and, when a `SHA256SUMS` next to
/// the ISO lists it, the ISO's own hash.
public struct ISOVerifier: Sendable {
    public var iso: String
    /// The volume label the ISO must carry; any valid label passes when nil.
    public var expectedLabel: String?
    /// Paths of the layer images inside the ISO.
    public var squashfsPaths: [String] = SquashfsStage.images.map { "live/" + $0 }
    /// Files the in-ISO SHA256SUMS cannot list: itself, and the El Torito catalog that
    /// xorriso writes while making the image (its path comes from the ISO).
    public static let unlistedFiles: Set<String> = ["SHA256SUMS"]

    public init(iso: String, expectedLabel: String? = nil) {
        self.iso = iso
        self.expectedLabel = expectedLabel
    }

    /// Runs every check. Throws only when the ISO cannot be read at all (missing file, missing
    /// tool); failed checks are in the report.
    public func verify(progress: any ProgressSink = SilentProgress()) throws
        -> ISOVerificationReport
    {
        let image = try ISOImageFile(path: iso)
        let pvd = image.read(at: 0x8000, count: 6)
        guard pvd.count == 6, Array(pvd[1..<6]) == Array("CD001".utf8) else {
            throw MartletError(
                .invalidInput,
                "'\(iso)' is not an ISO 9660 image (no volume descriptor at offset 0x8000)",
                hint: "give the .iso file that martlet build wrote")
        }
        var checks: [ISOCheck] = []
        let stage = StageReporter(sink: progress, stage: "verify")
        stage.begin("reading boot records and partition tables of \(iso)")
        checks.append(ElTorito.check(image))
        checks.append(HybridPartitions.checkMBR(image))
        checks.append(HybridPartitions.checkGPT(image))
        checks.append(checkLabel(image))

        stage.note("extracting the ISO's files (xorriso)")
        let tree = try ExtractedTree(iso: iso)
        checks.append(checkSquashfs(tree))
        stage.note("hashing the ISO's files")
        let boot = try ElTorito.xorrisoReport(iso: iso)
        checks.append(
            try SHA256Sums.checkTree(
                tree.path, ignoring: Self.unlistedFiles.union(boot.catalogPath.map { [$0] } ?? []),
                patched: boot.patchedImages))
        if let own = try SHA256Sums.checkNeighbour(iso: iso) {
            stage.note("hashing the ISO against SHA256SUMS next to it")
            checks.append(own)
        }
        stage.end(checks.allSatisfy(\.passed) ? "all checks passed" : "some checks failed")
        return ISOVerificationReport(iso: iso, checks: checks)
    }

    func checkLabel(_ image: ISOImageFile) -> ISOCheck {
        let pvd = image.read(at: 0x8000, count: 2048)
        guard pvd.count == 2048, pvd[0] == 1, Array(pvd[1..<6]) == Array("CD001".utf8) else {
            return ISOCheck(
                name: "label", passed: false,
                detail: "no ISO 9660 primary volume descriptor at offset 0x8000")
        }
        let label = String(decoding: pvd[40..<72], as: UTF8.self)
            .trimmingCharacters(in: CharacterSet(charactersIn: " \0"))
        if let problem = ProfileRules.labelProblem(label) {
            return ISOCheck(name: "label", passed: false, detail: "volume label \(problem)")
        }
        if let expectedLabel, expectedLabel != label {
            return ISOCheck(
                name: "label", passed: false,
                detail: "volume label is '\(label)', expected '\(expectedLabel)'")
        }
        return ISOCheck(name: "label", passed: true, detail: "volume label '\(label)'")
    }

    /// Each layer must be a whole squashfs 4 image; the first that is not fails the check.
    func checkSquashfs(_ tree: ExtractedTree) -> ISOCheck {
        var details: [String] = []
        for squashfsPath in squashfsPaths {
            let path = tree.path + "/" + squashfsPath
            guard let handle = FileHandle(forReadingAtPath: path) else {
                return ISOCheck(
                    name: "squashfs", passed: false, detail: "/\(squashfsPath) is not on the ISO")
            }
            defer { try? handle.close() }
            let header = (try? handle.read(upToCount: 96)) ?? Data()
            let size = (try? handle.seekToEnd()) ?? 0
            let check = Squashfs.check(header: header, fileSize: size, name: "/" + squashfsPath)
            guard check.passed else { return check }
            details.append(check.detail)
        }
        return ISOCheck(name: "squashfs", passed: true, detail: details.joined(separator: "; "))
    }
}

/// Random access to the ISO's bytes.
struct ISOImageFile {
    let path: String
    let size: UInt64
    private let handle: FileHandle

    init(path: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory),
            !isDirectory.boolValue
        else {
            throw MartletError(.notFound, "ISO '\(path)' does not exist", hint: "check the path")
        }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw MartletError.system("open", path: path)
        }
        self.path = path
        self.handle = handle
        self.size = (try? handle.seekToEnd()) ?? 0
    }

    /// Up to `count` bytes at `offset`; fewer at the end of the file.
    func read(at offset: UInt64, count: Int) -> Data {
        guard offset < size else { return Data() }
        try? handle.seek(toOffset: offset)
        return (try? handle.read(upToCount: count)) ?? Data()
    }
}

extension Data {
    func le16(_ offset: Int) -> UInt16 {
        UInt16(self[startIndex + offset]) | UInt16(self[startIndex + offset + 1]) << 8
    }
    func le32(_ offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(self[startIndex + offset + $1]) << (8 * $1) }
    }
    func le64(_ offset: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(self[startIndex + offset + $1]) << (8 * $1) }
    }
}

/// The El Torito boot catalog: which firmware platforms have a bootable entry.
enum ElTorito {
    struct Entry: Equatable {
        /// 0x00 BIOS (x86), 0xEF EFI.
        var platform: UInt8
        var loadRBA: UInt32
        var sectors: UInt16
    }

    static func check(_ image: ISOImageFile) -> ISOCheck {
        switch bootEntries(image) {
        case .failure(let problem):
            return ISOCheck(name: "el-torito", passed: false, detail: problem.text)
        case .success(let entries):
            let platforms = Set(entries.map(\.platform))
            let listing = entries.map {
                "\(platformName($0.platform)) image at sector \($0.loadRBA)"
            }.joined(separator: ", ")
            var missing: [String] = []
            if !platforms.contains(0x00) { missing.append("BIOS (platform 0x00)") }
            if !platforms.contains(0xEF) { missing.append("EFI (platform 0xEF)") }
            guard missing.isEmpty else {
                return ISOCheck(
                    name: "el-torito", passed: false,
                    detail: "no bootable \(missing.joined(separator: " and ")) entry; found: "
                        + (listing.isEmpty ? "none" : listing))
            }
            return ISOCheck(name: "el-torito", passed: true, detail: listing)
        }
    }

    struct Problem: Error { let text: String }

    /// What xorriso says about the boot setup: the catalog's path in the ISO tree, and the
    /// boot images it patched while writing (`boot-info-table`, `grub2-boot-info`), whose
    /// bytes on the ISO therefore differ from the files the SHA256SUMS was made from.
    static func xorrisoReport(iso: String) throws -> (
        catalogPath: String?, patchedImages: Set<String>
    ) {
        let output = try Command(
            "xorriso", ["-indev", iso, "-report_el_torito", "plain"]
        ).run().stdoutText
        var catalogPath: String?
        var paths: [String: String] = [:]
        var patched: Set<String> = []
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            guard parts.count == 2 else { continue }
            let fields = parts[1].split(separator: " ", omittingEmptySubsequences: true).map(
                String.init)
            switch parts[0] {
            case "El Torito cat path":
                catalogPath = SHA256Sums.normalize(parts[1])
            case "El Torito img path" where fields.count >= 2:
                paths[fields[0]] = SHA256Sums.normalize(fields.dropFirst().joined(separator: " "))
            case "El Torito img opts" where fields.count >= 2:
                if fields.contains("boot-info-table") || fields.contains("grub2-boot-info") {
                    patched.insert(fields[0])
                }
            default: continue
            }
        }
        return (catalogPath, Set(patched.compactMap { paths[$0] }))
    }

    static func platformName(_ platform: UInt8) -> String {
        switch platform {
        case 0x00: "BIOS"
        case 0xEF: "EFI"
        case 0x01: "PowerPC"
        case 0x02: "Mac"
        default: String(format: "platform 0x%02X", platform)
        }
    }

    /// The bootable entries of the catalog that the boot record volume descriptor points at.
    static func bootEntries(_ image: ISOImageFile) -> Result<[Entry], Problem> {
        var catalogSector: UInt32?
        for index in 16..<64 {
            let descriptor = image.read(at: UInt64(index) * 2048, count: 2048)
            guard descriptor.count == 2048, Array(descriptor[1..<6]) == Array("CD001".utf8) else {
                return .failure(Problem(text: "no ISO 9660 volume descriptors (not an ISO image?)"))
            }
            if descriptor[0] == 255 { break }
            let system = String(decoding: descriptor[7..<39], as: UTF8.self)
                .trimmingCharacters(in: CharacterSet(charactersIn: "\0 "))
            if descriptor[0] == 0, system == "EL TORITO SPECIFICATION" {
                catalogSector = descriptor.le32(0x47)
                break
            }
        }
        guard let catalogSector else {
            return .failure(
                Problem(text: "no El Torito boot record: the ISO cannot boot from a CD"))
        }
        let catalog = image.read(at: UInt64(catalogSector) * 2048, count: 2048 * 4)
        guard catalog.count >= 64 else {
            return .failure(Problem(text: "the boot catalog at sector \(catalogSector) is cut off"))
        }
        let validation = catalog.prefix(32)
        let sum = stride(from: 0, to: 32, by: 2).reduce(UInt16(0)) { $0 &+ validation.le16($1) }
        guard catalog[0] == 1, catalog[30] == 0x55, catalog[31] == 0xAA, sum == 0 else {
            return .failure(
                Problem(
                    text:
                        "the boot catalog at sector \(catalogSector) has no valid validation entry")
            )
        }
        var entries: [Entry] = []
        func entry(_ offset: Int, platform: UInt8) {
            guard catalog[offset] == 0x88 else { return }
            entries.append(
                Entry(
                    platform: platform, loadRBA: catalog.le32(offset + 8),
                    sectors: catalog.le16(offset + 6)))
        }
        entry(32, platform: catalog[1])
        var offset = 64
        while offset + 32 <= catalog.count {
            let indicator = catalog[offset]
            guard indicator == 0x90 || indicator == 0x91 else { break }
            let platform = catalog[offset + 1]
            let count = Int(catalog.le16(offset + 2))
            offset += 32
            var seen = 0
            while seen < count, offset + 32 <= catalog.count {
                if catalog[offset] != 0x44 {  // 0x44: extension of the previous entry
                    entry(offset, platform: platform)
                    seen += 1
                }
                offset += 32
            }
            if indicator == 0x91 { break }
        }
        return .success(entries)
    }
}

/// The MBR and GPT that make an ISO bootable from a disk (a USB stick written with dd).
enum HybridPartitions {
    /// EFI system partition type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B as stored on disk.
    static let espType: [UInt8] = [
        0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9,
        0x3B,
    ]

    static func checkMBR(_ image: ISOImageFile) -> ISOCheck {
        let sector = image.read(at: 0, count: 512)
        guard sector.count == 512, sector[510] == 0x55, sector[511] == 0xAA else {
            return ISOCheck(
                name: "mbr", passed: false,
                detail:
                    "no MBR boot signature (0x55AA) in sector 0: a dd'd stick would not boot with BIOS"
            )
        }
        var partitions: [String] = []
        for index in 0..<4 {
            let base = 446 + index * 16
            let type = sector[base + 4]
            guard type != 0 else { continue }
            let start = sector.le32(base + 8)
            let count = sector.le32(base + 12)
            let name =
                type == 0xEE ? " (GPT protective)" : type == 0xEF ? " (EFI system)" : ""
            partitions.append(
                String(
                    format: "%d: type 0x%02X%@ at sector %u, %u sectors", index + 1, type, name,
                    start, count))
        }
        guard !partitions.isEmpty else {
            return ISOCheck(name: "mbr", passed: false, detail: "the MBR has no partition entries")
        }
        // Boot code: a hybrid image carries GRUB's boot_hybrid.img (or isohybrid's), not zeros.
        guard sector[0..<440].contains(where: { $0 != 0 }) else {
            return ISOCheck(
                name: "mbr", passed: false,
                detail: "the MBR has partitions but no boot code: BIOS cannot boot the stick")
        }
        return ISOCheck(name: "mbr", passed: true, detail: partitions.joined(separator: "; "))
    }

    static func checkGPT(_ image: ISOImageFile) -> ISOCheck {
        let header = image.read(at: 512, count: 512)
        guard header.count == 512, Array(header[0..<8]) == Array("EFI PART".utf8) else {
            return ISOCheck(
                name: "gpt", passed: false,
                detail:
                    "no GPT header ('EFI PART') at sector 1: a dd'd stick would not boot with UEFI")
        }
        let headerSize = Int(header.le32(12))
        guard (92...512).contains(headerSize) else {
            return ISOCheck(
                name: "gpt", passed: false, detail: "GPT header size \(headerSize) is invalid")
        }
        var zeroed = Data(header.prefix(headerSize))
        zeroed.replaceSubrange(16..<20, with: [0, 0, 0, 0])
        guard CRC32.checksum(zeroed) == header.le32(16) else {
            return ISOCheck(name: "gpt", passed: false, detail: "the GPT header checksum is wrong")
        }
        let entriesLBA = header.le64(72)
        let count = Int(header.le32(80))
        let entrySize = Int(header.le32(84))
        guard entrySize >= 128, count > 0, count <= 1024 else {
            return ISOCheck(
                name: "gpt", passed: false,
                detail: "GPT claims \(count) entries of \(entrySize) bytes")
        }
        let entries = image.read(at: entriesLBA * 512, count: count * entrySize)
        guard entries.count == count * entrySize, CRC32.checksum(entries) == header.le32(88) else {
            return ISOCheck(
                name: "gpt", passed: false, detail: "the GPT partition array checksum is wrong")
        }
        for index in 0..<count {
            let entry = entries.subdata(in: index * entrySize..<(index + 1) * entrySize)
            guard Array(entry[0..<16]) == espType else { continue }
            let first = entry.le64(32)
            let last = entry.le64(40)
            guard last >= first, (last + 1) * 512 <= image.size else {
                return ISOCheck(
                    name: "gpt", passed: false,
                    detail: "the EFI system partition (\(first)–\(last)) lies outside the image")
            }
            let boot = image.read(at: first * 512, count: 512)
            let isFAT =
                boot.count == 512 && boot[510] == 0x55 && boot[511] == 0xAA
                && (String(decoding: boot[54..<62], as: UTF8.self).hasPrefix("FAT")
                    || String(decoding: boot[82..<90], as: UTF8.self).hasPrefix("FAT"))
            guard isFAT else {
                return ISOCheck(
                    name: "gpt", passed: false,
                    detail: "the EFI system partition at sector \(first) holds no FAT file system")
            }
            let size = ByteSize((last - first + 1) * 512)
            return ISOCheck(
                name: "gpt", passed: true,
                detail: "EFI system partition \(index + 1) at sector \(first), \(size), FAT")
        }
        return ISOCheck(
            name: "gpt", passed: false, detail: "the GPT has no EFI system partition")
    }
}

/// CRC-32 (IEEE 802.3, as GPT uses it).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { index in
        (0..<8).reduce(UInt32(index)) { crc, _ in crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1
        }
    }

    static func checksum(_ data: Data) -> UInt32 {
        ~data.reduce(~UInt32(0)) { crc, byte in table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
        }
    }
}

/// The squashfs superblock.
enum Squashfs {
    static let compressors: [UInt16: String] = [
        1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd",
    ]

    static func check(header: Data, fileSize: UInt64, name: String) -> ISOCheck {
        guard header.count >= 96, Array(header.prefix(4)) == Array("hsqs".utf8) else {
            return ISOCheck(
                name: "squashfs", passed: false,
                detail: "\(name) is not a squashfs (no 'hsqs' magic)")
        }
        let major = header.le16(28)
        let blockSize = header.le32(12)
        let bytesUsed = header.le64(40)
        guard major == 4 else {
            return ISOCheck(
                name: "squashfs", passed: false,
                detail: "\(name) is squashfs version \(major), not 4")
        }
        guard bytesUsed <= fileSize else {
            return ISOCheck(
                name: "squashfs", passed: false,
                detail:
                    "\(name) is cut off: the superblock says \(bytesUsed) bytes, the file has \(fileSize)"
            )
        }
        let compressor = compressors[header.le16(20)] ?? "compressor \(header.le16(20))"
        return ISOCheck(
            name: "squashfs", passed: true,
            detail:
                "\(name): squashfs 4, \(compressor), \(ByteSize(UInt64(blockSize))) blocks, \(ByteSize(fileSize))"
        )
    }
}

/// The ISO's files extracted by xorriso (no root, no loop device) into a temp folder that is
/// removed on deinit.
final class ExtractedTree {
    let path: String

    init(iso: String) throws {
        var template = Array(
            (QEMUMachine.temporaryDirectory + "/martlet-verify.XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw MartletError.system("mkdtemp", path: QEMUMachine.temporaryDirectory)
        }
        path = String(cString: made) + "/iso"
        try Command(
            "xorriso", ["-osirrox", "on", "-indev", iso, "-extract", "/", path]
        ).run(hint: "is '\(iso)' an ISO image? xorriso could not read it")
    }

    deinit {
        let parent = (path as NSString).deletingLastPathComponent
        // Extracted folders keep the ISO's read-only modes; make them removable first.
        _ = try? Command("chmod", ["-R", "u+rwX", parent]).runAllowingFailure()
        try? FileManager.default.removeItem(atPath: parent)
    }
}
