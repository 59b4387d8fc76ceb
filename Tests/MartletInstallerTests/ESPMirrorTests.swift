import Foundation
import MartletCore
import Testing

@testable import MartletInstaller

/// The ESPs of a mirror, as FAT images in plain files: mtools and mkfs.vfat need neither a
/// loop device nor the kernel's vfat, so this runs on the build machine.
@Suite("ESP mirror")
struct ESPMirrorTests {
    /// Two 64-MiB ESP images formatted as the installer formats a mirror's.
    private func formattedPair(_ mirror: ESPMirror, in directory: TemporaryDirectory) throws
        -> (String, String)
    {
        let images = ["\(directory.path)/esp-a.img", "\(directory.path)/esp-b.img"]
        for image in images {
            #expect(FileManager.default.createFile(atPath: image, contents: nil))
            #expect(truncate(image, 64 << 20) == 0)
            try sh("mkfs.vfat", mirror.formatArguments(image))
        }
        return (images[0], images[1])
    }

    /// Every file of a FAT image, by path, with its bytes (copied out with mtools).
    private func files(of image: String, in directory: TemporaryDirectory) throws -> [String: Data] {
        let out = "\(directory.path)/out-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: false)
        try sh("mcopy", ["-s", "-n", "-Q", "-i", image, "::/*", out + "/"])
        var result: [String: Data] = [:]
        let walker = FileManager.default.enumerator(atPath: out)!
        while let relative = walker.nextObject() as? String {
            var isDirectory: ObjCBool = false
            FileManager.default.fileExists(atPath: "\(out)/\(relative)", isDirectory: &isDirectory)
            if !isDirectory.boolValue {
                result[relative] = FileManager.default.contents(atPath: "\(out)/\(relative)")
            }
        }
        return result
    }

    private func volumeUUID(_ image: String) throws -> String {
        try sh("blkid", ["-p", "-s", "UUID", "-o", "value", image])
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("the first ESP's files land on the second, both carry the same volume serial")
    func copiesFilesAndKeepsTheSerial() throws {
        let directory = try TemporaryDirectory()
        let mirror = ESPMirror(serial: "1A2B3C4D")
        let (source, destination) = try formattedPair(mirror, in: directory)
        // What grub-install leaves on an ESP: nested directories, a binary image, a font.
        let staged = "\(directory.path)/staged"
        try FileManager.default.createDirectory(
            atPath: "\(staged)/EFI/BOOT", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(
            atPath: "\(staged)/EFI/debian/fonts", withIntermediateDirectories: true)
        var random = SystemRandomNumberGenerator()
        let image = Data((0..<700_000).map { _ in UInt8.random(in: 0...255, using: &random) })
        #expect(FileManager.default.createFile(atPath: "\(staged)/EFI/BOOT/BOOTX64.EFI", contents: image))
        #expect(FileManager.default.createFile(
            atPath: "\(staged)/EFI/debian/grub.cfg", contents: Data("search --fs-uuid\n".utf8)))
        #expect(FileManager.default.createFile(
            atPath: "\(staged)/EFI/debian/fonts/unicode.pf2", contents: Data(repeating: 7, count: 5000)))
        try sh("mcopy", ["-s", "-Q", "-i", source, "\(staged)/EFI", "::/"])

        let scratch = "\(directory.path)/scratch"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: false)
        try ESPMirror.copyFiles(from: source, to: destination, scratch: scratch) { try sh($0, $1) }

        let copied = try files(of: destination, in: directory)
        #expect(copied.keys.sorted() == ["EFI/BOOT/BOOTX64.EFI", "EFI/debian/fonts/unicode.pf2", "EFI/debian/grub.cfg"])
        #expect(copied == (try files(of: source, in: directory)))
        #expect(copied["EFI/BOOT/BOOTX64.EFI"] == image)
        #expect(try volumeUUID(source) == "1A2B-3C4D")
        #expect(try volumeUUID(destination) == "1A2B-3C4D")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty)
    }

    @Test("an empty first ESP (GRUB missing) is an error, and the mirror's ESP stays empty")
    func emptySourceFails() throws {
        let directory = try TemporaryDirectory()
        let (source, destination) = try formattedPair(ESPMirror(), in: directory)
        let scratch = "\(directory.path)/scratch"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: false)
        #expect(throws: (any Error).self) {
            try ESPMirror.copyFiles(from: source, to: destination, scratch: scratch) { try sh($0, $1) }
        }
        #expect(throws: (any Error).self) { try files(of: destination, in: directory) }
    }

    @Test("serials are 8 hex digits, as mkfs.vfat -i takes them, and differ between installs")
    func serials() {
        let serials = (0..<8).map { _ in ESPMirror.randomSerial() }
        for serial in serials {
            #expect(serial.count == 8 && serial.allSatisfy(\.isHexDigit), "\(serial)")
        }
        #expect(Set(serials).count > 1)
    }
}
