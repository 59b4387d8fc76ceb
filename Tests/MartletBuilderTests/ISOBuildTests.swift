import Foundation
import Logging
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// Builds of `profiles/test` through the same pipeline as `profiles/default` (only the
/// compression and the label differ), shared by the boot and reproducibility tests.
/// Needs root, the release binaries (`MARTLET_RELEASE_BIN`, set by `make test`) and the
/// tools of `scripts/setup`.
enum TestBuilds {
    static let packageRoot = TestPaths.packageRoot
    static let epoch = 1_767_225_600
    static let outputRoot = "/var/cache/martlet/test-out"
    /// Serial logs of failed boots are kept here (ignored by git).
    static let artifacts = packageRoot + "/artifacts"

    static var binaries: String { TestPaths.releaseBinaries }

    static func options(output: String, profile: Profile) throws -> BuildOptions {
        BuildOptions(
            profile: profile, outputDirectory: output, binariesDirectory: binaries,
            assetsDirectory: packageRoot + "/iso", sourceDateEpoch: epoch)
    }

    static func build(into output: String) throws -> BuildResult {
        try? FileManager.default.removeItem(atPath: output)
        let profile = try Profile.load(packageRoot + "/profiles/test")
        return try BuildPipeline(try options(output: output, profile: profile))
            .run(logger: Logger(label: "test.build"))
    }

    /// The first build, made once per test run.
    static let first: Result<BuildResult, any Error> = Result { try build(into: outputRoot + "/a") }
}

@Suite(.serialized) struct ISOBuildTests {
    @Test func buildWritesAVerifiedISOWithManifestAndChecksums() throws {
        let result = try TestBuilds.first.get()
        let report = try ISOVerifier(iso: result.iso, expectedLabel: "MARTLET_TEST").verify()
        for check in report.checks {
            #expect(check.passed, "\(check.name): \(check.detail)")
        }
        let sums = try String(contentsOfFile: result.sha256sums, encoding: .utf8)
        #expect(sums == "\(result.isoSHA256)  martlet-test-amd64.iso\n")

        let manifest = try JSONSerialization.jsonObject(
            with: try Data(contentsOf: URL(fileURLWithPath: result.manifest))) as? [String: Any]
        let packages = manifest?["packages"] as? [[String: String]] ?? []
        #expect(packages.contains { $0["name"] == "systemd" })
        #expect(packages.contains { $0["name"] == "linux-image-amd64" })
        let binaries = manifest?["binaries"] as? [String: String] ?? [:]
        #expect(Set(binaries.keys) == ["martlet", "martlet-installer", "martlet-vmm"])
        #expect(binaries.values.allSatisfy { $0.count == 64 })
        #expect((manifest?["iso"] as? [String: String])?["sha256"] == result.isoSHA256)
        // The installed host's generic initramfs is built into the image, not on each target.
        let sizes = manifest?["sizes"] as? [String: Any] ?? [:]
        #expect(((sizes["host-initrd.img"] as? NSNumber)?.intValue ?? 0) > 1_000_000, "\(sizes)")
    }

    @Test func sameInputsGiveABitIdenticalISO() throws {
        let first = try TestBuilds.first.get()
        let second = try TestBuilds.build(into: TestBuilds.outputRoot + "/b")
        #expect(first.isoSHA256 == second.isoSHA256)
        #expect(first.isoSize == second.isoSize)
    }

    @Test func missingBinariesAreReportedBeforeAnyWork() throws {
        let profile = try Profile.load(TestBuilds.packageRoot + "/profiles/test")
        var options = try TestBuilds.options(output: TestBuilds.outputRoot + "/none", profile: profile)
        options.binariesDirectory = "/nonexistent"
        let error = #expect(throws: MartletError.self) {
            try BuildPipeline(options).run(logger: Logger(label: "test"))
        }
        #expect(error?.message.contains("/nonexistent/martlet") == true)
        #expect(!FileManager.default.fileExists(atPath: TestBuilds.outputRoot + "/none"))
    }

    @Test func unknownPackageNamesThePackageAndLeavesNoISO() throws {
        var profile = try Profile.load(TestBuilds.packageRoot + "/profiles/test")
        profile.debian.packages.append("martlet-no-such-package")
        let output = TestBuilds.outputRoot + "/bad-package"
        try? FileManager.default.removeItem(atPath: output)
        let error = #expect(throws: MartletError.self) {
            try BuildPipeline(try TestBuilds.options(output: output, profile: profile))
                .run(logger: Logger(label: "test"))
        }
        #expect(error?.message.contains("'martlet-no-such-package'") == true)
        #expect(error?.message.contains("debian.packages") == true)
        #expect(!FileManager.default.fileExists(atPath: output + "/" + profile.iso.output))
    }
}

/// The live ISO boots in QEMU four ways — BIOS and UEFI, as a CD and as a USB stick
/// written like `dd` — to the `MARTLET-LIVE-READY` marker on the serial port.
@Suite(.serialized) struct ISOBootTests {
    @Test(arguments: [
        (QEMUConfiguration.Firmware.bios, QEMUConfiguration.Medium.cdrom),
        (.bios, .usb), (.uefi, .cdrom), (.uefi, .usb),
    ])
    func bootsToLiveReady(firmware: QEMUConfiguration.Firmware, medium: QEMUConfiguration.Medium)
        throws
    {
        let result = try TestBuilds.first.get()
        try FileManager.default.createDirectory(
            atPath: TestBuilds.artifacts, withIntermediateDirectories: true)
        let log = TestBuilds.artifacts + "/boot-\(firmware.rawValue)-\(medium.rawValue).log"
        let machine = try QEMUMachine(
            QEMUConfiguration(
                iso: result.iso, firmware: firmware, medium: medium, memoryMiB: 2048,
                serialLog: log))
        try machine.start()
        defer { machine.stop() }
        // A safety net, not a speed check: under `make test` this TCG boot shares two cores with
        // the other suites' QEMUs, and one verification run saw it take more than 420 s.
        try machine.waitFor("MARTLET-LIVE-READY 0.1.0", timeout: .seconds(900))
        // The live root is the overlay of the live layer over the host root: the installer's
        // source is visible at /run/martlet/host-root (checked by the installer tests).
        try? FileManager.default.removeItem(atPath: log)
    }
}

/// When the medium is missing, the live initramfs says so and opens a rescue shell
/// instead of hanging. Booted straight from the ISO's kernel and initramfs, with no medium.
@Suite struct LiveInitramfsRescueTests {
    @Test func missingMediumGivesAClearMessageAndARescueShell() throws {
        let result = try TestBuilds.first.get()
        let work = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-rescue-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        try Command(
            "xorriso",
            ["-osirrox", "on", "-indev", result.iso, "-extract", "/boot/vmlinuz", work + "/vmlinuz",
             "-extract", "/boot/initrd.img", work + "/initrd.img"]
        ).run()
        let log = work + "/serial.log"
        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: try Tool.resolve("qemu-system-x86_64"))
        qemu.arguments = [
            "-accel", "tcg", "-m", "1024", "-display", "none", "-monitor", "none", "-no-reboot",
            "-nic", "none", "-serial", "file:\(log)", "-kernel", work + "/vmlinuz",
            "-initrd", work + "/initrd.img",
            "-append", "console=ttyS0 martlet.label=MARTLET_NOWHERE martlet.wait=3",
        ]
        qemu.standardOutput = FileHandle.nullDevice
        qemu.standardError = FileHandle.nullDevice
        try qemu.run()
        defer {
            // The test runner ignores SIGTERM and its children inherit that: only SIGKILL works.
            kill(qemu.processIdentifier, SIGKILL)
            qemu.waitUntilExit()
        }
        let deadline = Date().addingTimeInterval(240)
        var output = ""
        while Date() < deadline, qemu.isRunning {
            output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if output.contains("dropping to a rescue shell") { break }
            Thread.sleep(forTimeInterval: 1)
        }
        #expect(output.contains("boot medium with label 'MARTLET_NOWHERE' not found after 3s"))
        #expect(output.contains("dropping to a rescue shell"))
        #expect(qemu.isRunning, "QEMU ended instead of waiting in the rescue shell")
    }
}

/// `martlet answer embed`: the copy carries the answer, boots the unattended entry by
/// default and still passes `martlet verify`.
@Suite struct AnswerEmbeddingTests {
    @Test func embeddedCopyVerifiesAndDefaultsToUnattended() throws {
        let result = try TestBuilds.first.get()
        let work = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-embed-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let answer = "[global]\nhostname = \"hv9\"\n# embedded by the test\n"
        try answer.write(toFile: work + "/answer.toml", atomically: false, encoding: .utf8)
        try AnswerEmbedding(iso: result.iso, answer: work + "/answer.toml", output: work + "/new.iso").run()

        let report = try ISOVerifier(iso: work + "/new.iso", expectedLabel: "MARTLET_TEST").verify()
        for check in report.checks { #expect(check.passed, "\(check.name): \(check.detail)") }
        try Command(
            "xorriso",
            ["-osirrox", "on", "-indev", work + "/new.iso", "-extract", "/boot/grub/grub.cfg", work + "/grub.cfg",
             "-extract", AnswerEmbedding.answerPath, work + "/embedded.toml"]
        ).run()
        #expect(try String(contentsOfFile: work + "/embedded.toml", encoding: .utf8) == answer)
        let menu = try String(contentsOfFile: work + "/grub.cfg", encoding: .utf8)
        #expect(menu.contains("set default=unattended\n"))
        #expect(menu.contains("martlet.answer=/martlet/answer.toml "))
        #expect(menu.contains("(answer file /martlet/answer.toml)"))
        #expect(!menu.contains("label:MARTLET-ANSWER"))
    }

    @Test func menuWithoutAnUnattendedEntryIsRefused() {
        #expect(throws: MartletError.self) { try AnswerEmbedding.rewriteMenu("set default=install\n") }
    }

    static let menu = """
        set default=install
        menuentry "Unattended install (answer file label:MARTLET-ANSWER)" --id unattended {
            linux /boot/vmlinuz martlet.label=X martlet.answer=label:MARTLET-ANSWER quiet console=tty0
        }
        """

    @Test("an answer server goes onto the unattended entry's kernel line with its pinned fingerprint; a second embedding replaces both")
    func serverOnTheKernelLine() throws {
        let fingerprint = String(repeating: "AB:", count: 31) + "AB"
        let url = "https://10.0.2.2:8443/answer?site=paris"
        let menu = try AnswerEmbedding.rewriteMenu(Self.menu, for: .server(url: url, fingerprint: fingerprint))
        let pin = String(repeating: "ab", count: 32)
        #expect(menu.contains("set default=unattended\n"))
        #expect(menu.contains("martlet.answer=\(url) martlet.answer-fingerprint=\(pin) quiet console=tty0"), "\(menu)")
        #expect(menu.contains("menuentry \"Unattended install (answer from \(url))\" --id unattended {"))
        let again = try AnswerEmbedding.rewriteMenu(menu, for: .server(url: "http://answers.example.org/a", fingerprint: nil))
        #expect(again.contains("martlet.answer=http://answers.example.org/a quiet"), "\(again)")
        #expect(!again.contains("fingerprint") && !again.contains("10.0.2.2"))
        let file = try AnswerEmbedding.rewriteMenu(menu)
        #expect(file.contains("martlet.answer=/martlet/answer.toml quiet") && !file.contains("fingerprint"))
    }

    @Test("answer URLs the installer or the boot menu cannot use, and bad fingerprints, are refused by value")
    func serverRefusals() {
        let pin = String(repeating: "ab", count: 32)
        for (url, fingerprint, message) in [
            ("ftp://host/answer", nil, "is not http:// or https://"),
            ("https:///answer", nil, "names no server"),
            ("https://host/a;reboot", nil, "holds ';'"),
            ("https://host/a b", nil, "holds ' '"),
            ("https://host/$root", nil, "holds '$'"),
            ("https://host/answer", "abcd", "'abcd' is not a SHA-256 fingerprint"),
            ("http://host/answer", pin, "a fingerprint pins an https server"),
        ] as [(String, String?, String)] {
            let error = #expect(throws: MartletError.self) {
                try AnswerEmbedding.check(.server(url: url, fingerprint: fingerprint))
            }
            #expect(error?.message.contains(message) == true, "\(url): \(error?.message ?? "nil")")
        }
        #expect(throws: Never.self) { try AnswerEmbedding.check(.server(url: "https://host:8443/answer", fingerprint: pin)) }
    }
}
