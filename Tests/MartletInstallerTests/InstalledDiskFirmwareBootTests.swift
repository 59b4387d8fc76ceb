import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletInstaller

extension LoopDeviceSuites {
    /// What martlet-installer writes is a disk any PC firmware boots: a GPT disk installed on a
    /// loop device (BIOS boot partition, GRUB, root, swap, a directory pool) started by
    /// martlet-vmm's firmware boot (SeaBIOS, bios-microvm.bin) the way a Martlet host starts a
    /// VM from a disk image. SeaBIOS reads the protective MBR's GRUB, GRUB its core image and
    /// the menu, the kernel the initramfs the install made, and systemd reaches the answer's
    /// first-boot hook, which writes a marker to the serial console. Real mode does not run on
    /// these machines' /dev/kvm, so the VMM runs nested inside QEMU/TCG (NestedKVM).
    @Suite("An installed disk boots under martlet-vmm's firmware", .serialized)
    struct InstalledDiskFirmwareBootTests {
        static let available =
            NestedKVM.available && FileManager.default.fileExists(atPath: NestedKVM.firmware)

        /// Console lines in boot order: when each first shows is printed.
        static let stages = [
            "OUTER-START-VMM", "SeaBIOS (version", "Booting from Hard Disk", "Linux version",
            "MARTLET-FIRST-BOOT on hv1",
        ]

        @Test(
            "a GPT disk installed by martlet-installer boots through SeaBIOS and GRUB to its first-boot hook",
            .enabled(if: available, "needs the kernel of scripts/setup, QEMU, busybox and seabios"),
            .timeLimit(.minutes(30)))
        func installedDiskBoots() throws {
            let work = try TemporaryDirectory()
            let disk = try LoopDisk(size: .gib(8))
            // The hook the answer names, served over HTTP as an answer server would; the
            // installer stores it on the disk, and the first boot runs it before the network.
            let hook = "#!/bin/sh\necho \"MARTLET-FIRST-BOOT on $(hostname)\" > /dev/ttyS0\n"
            let server = try AnswerServer(directory: work.path, answer: hook, certificate: nil)
            let answer = work.write(
                "answer.toml",
                validAnswer(target: disk.path, wipe: true, storage: "directory", swap: "512MiB")
                    + """

                    [first-boot]
                    script = "http://127.0.0.1:\(server.port)/first-boot.sh"
                    at = "before-network"

                    """)
            let (status, _, err) = try installer([
                "install", "--answer", answer, "--source", try testRootfs(), "--log", "\(work.path)/install.log",
            ])
            try #require(status == 0, "the install failed: \(err)")
            try sh("sync", [])

            let outer = URL(fileURLWithPath: "\(work.path)/outer")
            try NestedKVM.installModules(NestedKVM.kvmModules + NestedKVM.diskModules, into: outer)
            try NestedKVM.install("/bin/busybox", into: outer, as: "bin/busybox")
            try NestedKVM.installExecutable(TestPaths.executable("martlet-vmm"), into: outer, as: "martlet-vmm")
            try NestedKVM.install(NestedKVM.firmware, into: outer, as: "bios-microvm.bin")
            let initrd = URL(fileURLWithPath: "\(work.path)/outer.cpio.gz")
            let vcpus = 1
            try NestedKVM.packInitramfs(
                outer, init: NestedKVM.firmwareBootInit(readOnly: false, memoryMiB: 768, vcpus: vcpus, timeout: 1500),
                to: initrd)

            // The loop disk's file, opened by QEMU with snapshot=on: nothing writes to it.
            let log = URL(fileURLWithPath: "\(work.path)/serial.log")
            let run = try NestedKVM.run(
                NestedKVM.outerArguments(initrd: initrd, log: log, disks: [disk.file], cpus: vcpus), log: log,
                stages: Self.stages, until: "MARTLET-FIRST-BOOT on hv1", timeout: 1500)
            let serial = run.serial
            let excerpt = String(serial.suffix(6000))
            print("installed disk under martlet-vmm's firmware (seconds from the outer QEMU's start):")
            for stage in Self.stages { print("  \(stage): \(run.seen[stage].map { "\($0) s" } ?? "not seen")") }

            #expect(!serial.contains("OUTER: "), "the outer system is not ready:\n\(excerpt)")
            #expect(serial.contains("SeaBIOS (version"), "SeaBIOS printed nothing on the serial console:\n\(excerpt)")
            #expect(serial.contains("Booting from Hard Disk"), "SeaBIOS did not boot the installed disk:\n\(excerpt)")
            #expect(serial.contains("Linux version"), "GRUB did not start the installed kernel:\n\(excerpt)")
            #expect(
                serial.contains("MARTLET-FIRST-BOOT on hv1"),
                "the installed system did not reach its first-boot hook:\n\(excerpt)")
        }
    }
}
