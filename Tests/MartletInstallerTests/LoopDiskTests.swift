import Foundation
import MartletAnswer
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletInstaller

/// Runs martlet-installer and returns (status, stdout, stderr).
func installer(_ arguments: [String]) throws -> (Int32, String, String) {
    let result = try Command(TestPaths.executable("martlet-installer"), arguments).runAllowingFailure()
    return (result.status, result.stdoutText, result.stderr)
}

/// SHA-256 of the first and last MiB of a device: where partition tables and signatures live.
func fingerprint(_ device: String, size: ByteSize) throws -> String {
    let head = try sh("sh", ["-c", "dd if=\(device) bs=1M count=1 status=none | sha256sum"])
    let tail = try sh(
        "sh",
        [
            "-c",
            "dd if=\(device) bs=1M skip=\(size.bytes / (1 << 20) - 1) count=1 status=none | sha256sum",
        ])
    return head + tail
}

/// Loop devices and LVM are shared by the whole machine: one test at a time.
extension LoopDeviceSuites {
    @Suite("Disks on loop devices", .serialized)
    struct LoopDiskTests {
        /// GPT with an ext4 partition and an LVM PV, written with sfdisk/mkfs/pvcreate.
        @Test("discovery reports GPT, ext4 with its label and the LVM PV of a loop disk")
        func discovery() throws {
            let disk = try LoopDisk.withOldData()
            let found = try DiskDiscovery().disk(path: disk.path)
            #expect(found.transport == "loop")
            #expect(found.size == .gib(8))
            #expect(found.partitionTable == "gpt")
            #expect(found.partitions.map(\.number) == [1, 2])
            #expect(found.partitions.first?.signatures.first?.type == "ext4")
            #expect(found.partitions.first?.signatures.first?.label == "olddata")
            #expect(found.partitions.last?.signatures.map(\.type) == ["LVM2_member"])
            #expect(found.isBootMedium == false)
            #expect(found.hasData)
            let (status, out, _) = try installer(["disks", "--json"])
            #expect(status == 0)
            let listed = try JSONDecoder().decode([Disk].self, from: Data(out.utf8))
            #expect(listed.first { $0.path == disk.path }?.partitions.count == 2)
        }

        @Test(
            "install refuses a disk with data without wipe, refuses it mounted, accepts it with wipe"
        )
        func refusals() throws {
            let disk = try LoopDisk.withOldData()
            let dir = try TemporaryDirectory()
            let before = try fingerprint(disk.path, size: .gib(8))
            let noWipe = dir.write("nowipe.toml", validAnswer(target: disk.path, wipe: false))
            var (status, _, err) = try installer(["install", "--answer", noWipe, "--dry-run"])
            #expect(status == 6)
            #expect(err.contains("is not empty") && err.contains("wipe = true"), "\(err)")

            let wipe = dir.write("wipe.toml", validAnswer(target: disk.path, wipe: true))
            let mountpoint = "\(dir.path)/mnt"
            try FileManager.default.createDirectory(
                atPath: mountpoint, withIntermediateDirectories: true)
            try sh("mount", [disk.partition(1), mountpoint])
            (status, _, err) = try installer(["install", "--answer", wipe, "--source", "/"])
            try sh("umount", [mountpoint])
            #expect(status == 6)
            #expect(err.contains("mounted") && err.contains(mountpoint), "\(err)")

            let out: String
            (status, out, err) = try installer(["install", "--answer", wipe, "--dry-run"])
            #expect(status == 0, "\(err)")
            #expect(out.contains("WIPES") && out.contains("LVM2_member"))
            #expect(out.contains(disk.partition(5)))
            // The dry run also makes the install's preflight checks and says what would stop it.
            (status, _, err) = try installer(["install", "--answer", wipe, "--dry-run", "--source", dir.path + "/no-root"])
            #expect(status == 0, "\(err)")
            #expect(err.contains("an install would stop") && err.contains("'\(dir.path)/no-root' does not exist"), "\(err)")
            #expect(try fingerprint(disk.path, size: .gib(8)) == before)
        }

        @Test(
            "every malformed answer is rejected by validate and by install before a disk is touched"
        )
        func malformedViaCLI() throws {
            let disk = try LoopDisk.withOldData()
            let dir = try TemporaryDirectory()
            let before = try fingerprint(disk.path, size: .gib(8))
            for (index, bad) in malformedAnswers.enumerated() {
                // Broken the same way as in the unit tests, then aimed at the loop disk with wipe on.
                let text = bad.apply(to: validAnswer()).replacingOccurrences(
                    of: "/dev/sdz", with: disk.path
                )
                .replacingOccurrences(of: "wipe = false", with: "wipe = true")
                let file = dir.write("bad\(index).toml", text)
                let (validateStatus, _, validateErr) = try installer(["validate", file])
                #expect(validateStatus == 2, "\(bad.name)")
                #expect(validateErr.contains(bad.key), "\(bad.name): \(validateErr)")
                let (installStatus, _, installErr) = try installer([
                    "install", "--answer", file, "--source", "/",
                ])
                #expect(installStatus == 2, "\(bad.name)")
                #expect(installErr.contains(bad.key), "\(bad.name): \(installErr)")
            }
            #expect(try fingerprint(disk.path, size: .gib(8)) == before)
            let found = try DiskDiscovery().disk(path: disk.path)
            #expect(found.partitions.first?.signatures.first?.label == "olddata")
        }

        @Test("a failing step stops the install naming the step and the command, and unmounts")
        func failingStep() throws {
            // A tree that passes the preflight but has no chpasswd: 'configure' must fail.
            let dir = try TemporaryDirectory()
            let source = "\(dir.path)/source"
            for sub in ["etc", "boot", "usr/sbin", "usr/share/zoneinfo/Europe", "usr/share/X11/xkb/rules"] {
                try FileManager.default.createDirectory(
                    atPath: "\(source)/\(sub)", withIntermediateDirectories: true)
            }
            // A tz database as the preflight reads it: UTC marks it, Europe/Paris is the zone.
            dir.write("source/usr/share/zoneinfo/Europe/Paris", "TZif")
            dir.write("source/usr/share/zoneinfo/UTC", "TZif")
            dir.write("source/usr/share/X11/xkb/rules/base.lst", "! layout\n  de  German\n")
            dir.write("source/usr/sbin/grub-install", "")
            dir.write("source/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
            let disk = try LoopDisk(size: .gib(8))
            let answer = dir.write(
                "a.toml",
                validAnswer(target: disk.path, wipe: true, storage: "directory"))
            let log = "\(dir.path)/install.log"
            let (status, _, err) = try installer([
                "install", "--answer", answer, "--source", source, "--log", log,
            ])
            #expect(status == 1)
            #expect(err.contains("install step 'configure' failed"), "\(err)")
            #expect(err.contains("chpasswd"), "\(err)")
            let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
            #expect(!mountinfo.contains(disk.path + "p"), "left mounted")
            let logText = try String(contentsOfFile: log, encoding: .utf8)
            #expect(logText.contains("stage configure failed"))
            #expect(logText.contains("stage copy started"))
        }

        @Test("a disk holding a MARTLET ISO9660 image is the boot medium and is refused")
        func bootMedium() throws {
            let dir = try TemporaryDirectory()
            try FileManager.default.createDirectory(
                atPath: "\(dir.path)/tree", withIntermediateDirectories: true)
            dir.write("tree/hello", "martlet")
            let disk = try LoopDisk(size: .gib(6))
            try sh(
                "xorriso",
                [
                    "-as", "mkisofs", "-quiet", "-V", "MARTLET_TEST", "-o", disk.path,
                    "\(dir.path)/tree",
                ])
            let found = try DiskDiscovery().disk(path: disk.path)
            #expect(found.isBootMedium)
            let answer = dir.write("a.toml", validAnswer(target: disk.path, wipe: true))
            let (status, _, err) = try installer(["install", "--answer", answer, "--dry-run"])
            #expect(status == 6)
            #expect(err.contains("boot medium"), "\(err)")
        }
    }
}

extension LoopDeviceSuites {
    @Suite("Answer file delivery", .serialized)
    struct AnswerDeliveryTests {
        @Test("martlet.answer= names a file on the boot medium")
        func onMedium() throws {
            let dir = try TemporaryDirectory()
            try FileManager.default.createDirectory(
                atPath: "\(dir.path)/medium/auto", withIntermediateDirectories: true)
            dir.write("medium/auto/a.toml", validAnswer())
            let cmdline = dir.write(
                "cmdline", "BOOT_IMAGE=/live/vmlinuz martlet.answer=/auto/a.toml quiet\n")
            let path = try AnswerLocator.fromKernelCommandLine(
                cmdline: cmdline, medium: "\(dir.path)/medium", workDirectory: "\(dir.path)/run")
            #expect(path == "\(dir.path)/medium/auto/a.toml")
            let missing = dir.write("cmdline2", "martlet.answer=/nothing.toml\n")
            #expect(throws: MartletError.self) {
                try AnswerLocator.fromKernelCommandLine(
                    cmdline: missing, medium: "\(dir.path)/medium", workDirectory: "\(dir.path)/run"
                )
            }
        }

        @Test("label:MARTLET-ANSWER reads answer.toml from the filesystem with that label")
        func byLabel() throws {
            let dir = try TemporaryDirectory()
            let stick = try LoopDisk(size: .mib(64))
            let label = "MA\(UUID().uuidString.prefix(8))"
            try sh("mkfs.ext4", ["-q", "-L", label, stick.path])
            try FileManager.default.createDirectory(
                atPath: "\(dir.path)/stick", withIntermediateDirectories: true)
            try sh("mount", [stick.path, "\(dir.path)/stick"])
            dir.write("stick/answer.toml", validAnswer(target: "/dev/sdq"))
            try sh("umount", ["\(dir.path)/stick"])
            let cmdline = dir.write("cmdline", "quiet martlet.answer=label:\(label)\n")
            let path = try AnswerLocator.fromKernelCommandLine(
                cmdline: cmdline, workDirectory: "\(dir.path)/run")
            #expect(try AnswerFile.load(path: path).disk.target == .path("/dev/sdq"))
        }

        @Test("an http URL is sent the machine's facts and answers")
        func overHTTP() throws {
            let dir = try TemporaryDirectory()
            let server = try AnswerServer(
                directory: dir.path, answer: validAnswer(target: "/dev/sdr"), certificate: nil)
            let cmdline = dir.write(
                "cmdline", "martlet.answer=http://127.0.0.1:\(server.port)/answer.toml\n")
            let path = try AnswerLocator.fromKernelCommandLine(
                cmdline: cmdline, workDirectory: "\(dir.path)/run")
            let sent = try JSONDecoder().decode(
                MachineInventory.self, from: Data(contentsOf: URL(fileURLWithPath: server.received)))
            #expect(sent.nics == NICDiscovery().nics().map { .init(name: $0.name, mac: $0.mac) })
            #expect(try AnswerFile.load(path: path).disk.target == .path("/dev/sdr"))
        }
    }
}
