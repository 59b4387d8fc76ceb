import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// The files of a small hybrid ISO (GRUB for BIOS and UEFI from grub-mkrescue, a real
/// squashfs at /live/martlet.squashfs, a /SHA256SUMS over every file) that tests change and
/// master again with xorriso.
final class VerifiableISO {
    let scratch: ScratchDirectory
    /// The ISO's file tree.
    let tree: String

    init() throws {
        let scratch = try ScratchDirectory("martlet-verify-test")
        self.scratch = scratch
        try scratch.write("rootfs/etc/hostname", "martlet\n")
        let first = try GrubTestISO.make(in: scratch, marker: "VERIFY", name: "first.iso") { tree in
            try FileManager.default.createDirectory(
                atPath: tree + "/live", withIntermediateDirectories: true)
            for image in SquashfsStage.images {
                try Command(
                    "mksquashfs",
                    [
                        scratch.file("rootfs"), tree + "/live/" + image, "-comp", "zstd",
                        "-noappend", "-quiet",
                    ]
                ).run()
            }
        }
        tree = scratch.file("iso")
        try Command("xorriso", ["-osirrox", "on", "-indev", first, "-extract", "/", tree])
            .run()
        try Command("chmod", ["-R", "u+rwX", tree]).run()
        try FileManager.default.removeItem(atPath: tree + "/boot.catalog")
        try writeSums()
    }

    /// Writes /SHA256SUMS over every file of the tree but those in `except` (`./path`s).
    func writeSums(except: Set<String> = []) throws {
        let excluded = except.flatMap { ["!", "-path", $0] }
        try Command(
            "sh",
            [
                "-c",
                "cd \"$1\" && shift && rm -f SHA256SUMS && find . -type f \"$@\" -print0 | sort -z | xargs -0 sha256sum > ../SHA256SUMS.tmp && mv ../SHA256SUMS.tmp SHA256SUMS",
                "sh", tree,
            ] + excluded
        ).run()
    }

    /// Masters the tree with the build's own xorriso arguments (`ISOStage.xorrisoArguments`)
    /// and leaves what the ISO stage leaves out of /SHA256SUMS (`ISOStage.unlistedFiles`),
    /// so a change there that `martlet verify` does not follow fails here.
    func masterLikeBuild() throws -> String {
        let efi = scratch.file("efi.img")
        try FileManager.default.moveItem(atPath: tree + "/efi.img", toPath: efi)
        try FileManager.default.copyItem(
            atPath: tree + "/boot/grub/i386-pc/eltorito.img", toPath: tree + "/boot/grub/bios.img")
        try writeSums(except: ISOStage.unlistedFiles)
        let iso = scratch.file("build.iso")
        try Command(
            "xorriso",
            ISOStage.xorrisoArguments(
                output: iso, label: "MARTLET_TEST", publisher: "Martlet", application: "Martlet test",
                efiImage: efi, tree: tree)
        ).run()
        return iso
    }

    /// Masters the tree into a hybrid ISO like grub-mkrescue does (minus its HFS+ extras).
    func master(_ name: String = "test.iso", label: String = "MARTLET_TEST", efi: Bool = true)
        throws -> String
    {
        let iso = scratch.file(name)
        var arguments = [
            "-as", "mkisofs", "-o", iso, "-V", label, "-r",
            "-b", "boot/grub/i386-pc/eltorito.img", "-no-emul-boot", "-boot-load-size", "4",
            "-boot-info-table", "--grub2-boot-info",
            "--grub2-mbr", "/usr/lib/grub/i386-pc/boot_hybrid.img",
        ]
        if efi {
            arguments += ["--efi-boot", "efi.img", "-efi-boot-part", "--efi-boot-image"]
        }
        arguments += ["--protective-msdos-label", tree]
        try Command("xorriso", arguments).run()
        return iso
    }

    func verify(_ iso: String, label: String? = nil) throws -> ISOVerificationReport {
        try ISOVerifier(iso: iso, expectedLabel: label).verify()
    }
}

@Suite("martlet verify")
struct VerifyISOTests {
    @Test("a complete hybrid ISO passes every check")
    func passes() throws {
        let fixture = try VerifiableISO()
        let iso = try fixture.master()
        try Command(
            "sh",
            ["-c", "cd \"$1\" && sha256sum test.iso > SHA256SUMS", "sh", fixture.scratch.path]
        ).run()
        let report = try fixture.verify(iso, label: "MARTLET_TEST")
        #expect(report.passed, "\(report.checks.filter { !$0.passed })")
        #expect(
            report.checks.map(\.name) == [
                "el-torito", "mbr", "gpt", "label", "squashfs", "sha256sums", "iso-sha256",
            ])
        #expect(report.check("el-torito")?.detail.contains("BIOS") == true)
        #expect(report.check("el-torito")?.detail.contains("EFI") == true)
        #expect(report.check("squashfs")?.detail.contains("zstd") == true)
        #expect(report.failure == nil)
        // xorriso writes the boot info table into the BIOS boot image; that one file cannot match.
        #expect(
            report.check("sha256sums")?.detail.contains(
                "not compared: /boot/grub/i386-pc/eltorito.img") == true)
        let json = try JSONEncoder().encode(report)
        #expect(String(decoding: json, as: UTF8.self).contains("\"passed\":true"))
    }

    @Test("the build's layout passes: appended ESP, catalog in /boot, BIOS image not listed")
    func buildLayout() throws {
        let fixture = try VerifiableISO()
        let report = try fixture.verify(try fixture.masterLikeBuild(), label: "MARTLET_TEST")
        #expect(report.passed, "\(report.checks.filter { !$0.passed })")
        #expect(
            report.check("sha256sums")?.detail.contains("not compared: /boot/grub/bios.img") == true
        )
        #expect(report.check("gpt")?.detail.contains("EFI system partition 2") == true)
    }

    @Test("a changed file fails sha256sums, naming the file")
    func corruptedFile() throws {
        let fixture = try VerifiableISO()
        try "tampered\n".write(
            toFile: fixture.tree + "/boot/grub/grub.cfg", atomically: true, encoding: .utf8)
        let report = try fixture.verify(try fixture.master())
        let check = try #require(report.check("sha256sums"))
        #expect(!check.passed)
        #expect(check.detail.contains("/boot/grub/grub.cfg does not match"))
        #expect(report.checks.filter { !$0.passed }.map(\.name) == ["sha256sums"])
        #expect(report.failure?.code == .verificationFailed)
        #expect(report.failure?.message.contains("sha256sums") == true)
    }

    @Test("a wrong hash, a malformed line or an unlisted file in SHA256SUMS fails")
    func corruptedSums() throws {
        let fixture = try VerifiableISO()
        let sumsPath = fixture.tree + "/SHA256SUMS"
        let sums = try String(contentsOfFile: sumsPath, encoding: .utf8)
        let line = try #require(
            sums.split(separator: "\n").first { $0.hasSuffix("./live/martlet.squashfs") })
        let flipped = (line.first == "0" ? "1" : "0") + line.dropFirst()
        try sums.replacingOccurrences(of: line, with: flipped).write(
            toFile: sumsPath, atomically: true, encoding: .utf8)
        var check = try #require(
            try fixture.verify(try fixture.master("a.iso")).check("sha256sums"))
        #expect(!check.passed)
        #expect(check.detail.contains("/live/martlet.squashfs does not match"))

        try (sums + "not a checksum line\n").write(
            toFile: sumsPath, atomically: true, encoding: .utf8)
        check = try #require(try fixture.verify(try fixture.master("b.iso")).check("sha256sums"))
        #expect(!check.passed)
        #expect(check.detail.contains("line \(sums.split(separator: "\n").count + 1) is not"))

        try sums.write(toFile: sumsPath, atomically: true, encoding: .utf8)
        try "extra\n".write(toFile: fixture.tree + "/extra.txt", atomically: true, encoding: .utf8)
        check = try #require(try fixture.verify(try fixture.master("c.iso")).check("sha256sums"))
        #expect(!check.passed)
        #expect(check.detail.contains("/extra.txt is on the ISO but not listed"))
    }

    @Test("a missing or fake squashfs fails the squashfs check")
    func squashfs() throws {
        let fixture = try VerifiableISO()
        let squashfs = fixture.tree + "/live/martlet.squashfs"
        try FileManager.default.removeItem(atPath: squashfs)
        var report = try fixture.verify(try fixture.master("a.iso"))
        #expect(report.check("squashfs")?.passed == false)
        #expect(
            report.check("squashfs")?.detail.contains("/live/martlet.squashfs is not on the ISO")
                == true)
        #expect(
            report.check("sha256sums")?.detail.contains(
                "/live/martlet.squashfs is listed but not on the ISO") == true)

        try Data(repeating: 0x41, count: 4096).write(to: URL(fileURLWithPath: squashfs))
        try fixture.writeSums()
        report = try fixture.verify(try fixture.master("b.iso"))
        #expect(report.check("squashfs")?.passed == false)
        #expect(report.check("squashfs")?.detail.contains("not a squashfs") == true)
        #expect(report.check("sha256sums")?.passed == true)
    }

    @Test("no EFI boot entry, a wrong label and a wrong ISO hash are each reported")
    func bootAndLabel() throws {
        let fixture = try VerifiableISO()
        let iso = try fixture.master(efi: false)
        try Command(
            "sh",
            [
                "-c", "cd \"$1\" && echo \"$(printf '0%.0s' $(seq 64))  test.iso\" > SHA256SUMS",
                "sh", fixture.scratch.path,
            ]
        ).run()
        let report = try fixture.verify(iso, label: "OTHER_LABEL")
        #expect(report.check("el-torito")?.passed == false)
        #expect(
            report.check("el-torito")?.detail.contains("no bootable EFI (platform 0xEF) entry")
                == true)
        #expect(report.check("gpt")?.passed == false)
        #expect(
            report.check("label")?.detail
                == "volume label is 'MARTLET_TEST', expected 'OTHER_LABEL'")
        #expect(report.check("iso-sha256")?.passed == false)
        #expect(report.check("mbr")?.passed == true)
    }

    @Test("a plain data ISO has no boot records or partition tables")
    func plainISO() throws {
        let scratch = try ScratchDirectory()
        try scratch.write("tree/a.txt", "a\n")
        let iso = scratch.file("plain.iso")
        try Command(
            "xorriso", ["-as", "mkisofs", "-o", iso, "-V", "PLAIN", scratch.file("tree")]
        ).run()
        let report = try ISOVerifier(iso: iso).verify()
        #expect(
            report.checks.filter { !$0.passed }.map(\.name) == [
                "el-torito", "mbr", "gpt", "squashfs", "sha256sums",
            ])
        #expect(report.check("el-torito")?.detail.contains("no El Torito boot record") == true)
    }

    @Test("a file that is not an ISO, or no file, is an error")
    func notAnISO() throws {
        let scratch = try ScratchDirectory()
        let missing = #expect(throws: MartletError.self) {
            try ISOVerifier(iso: scratch.file("none.iso")).verify()
        }
        #expect(missing?.code == .notFound)
        let junk = try scratch.write("junk.iso", Data(repeating: 0, count: 1 << 20))
        let error = #expect(throws: MartletError.self) { try ISOVerifier(iso: junk).verify() }
        #expect(error?.message.contains("is not an ISO 9660 image") == true)
    }

    @Test("CRC-32 matches the standard check value")
    func crc() {
        #expect(CRC32.checksum(Data("123456789".utf8)) == 0xCBF4_3926)
    }
}
