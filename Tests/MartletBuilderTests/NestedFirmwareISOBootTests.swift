import Foundation
import MartletCore
import MartletTestSupport
import Testing

/// "Martlet installs itself inside a Martlet VM": martlet-vmm with SeaBIOS (`--firmware`,
/// Debian's bios-microvm.bin) boots the test profile's live ISO attached read-only as its
/// first virtio-blk disk — through the hybrid ISO's MBR, as from a USB stick — to the GRUB
/// menu, the live kernel, and `MARTLET-LIVE-READY` on the serial port. Real mode does not run
/// on these machines' /dev/kvm, so, as in MartletVMMTests' NestedFirmwareTests, an outer
/// QEMU/TCG with nested KVM (kvm-amd under `-cpu max`) runs the static release martlet-vmm.
/// The ISO is not packed into the outer initramfs: the outer QEMU gets it as a read-only
/// virtio-blk-pci drive, and that block device (/dev/vda there) is the VMM's `--disk …,ro`.
/// It prints when each stage first showed on the console, in seconds from the outer start:
/// MARTLET-LIVE-READY at 136 s, the whole test 155 s with the ISO build (205 s before the
/// live layer masked martlet-vms-autostart, which waited for a network this VM does not have).
/// The inner VM has one vCPU, as the outer QEMU has. With two on the outer's one the same
/// boot took 1537 s: a vCPU that spins on a lock waits while the outer runs the other, which
/// holds it.
@Suite struct NestedFirmwareISOBootTests {
    static let available = NestedKVM.available && FileManager.default.fileExists(atPath: NestedKVM.firmware)

    /// The console lines that mark each stage, in boot order, with the name printed for it.
    static let stages: [(name: String, marker: String)] = [
        ("martlet-vmm started", "OUTER-START-VMM"),
        ("SeaBIOS banner", "SeaBIOS (version"),
        ("SeaBIOS boots the disk", "Booting from Hard Disk"),
        ("GRUB menu", "Install Martlet 0.1.0"),
        ("GRUB loads the kernel", "Loading Martlet 0.1.0 ..."),
        ("MARTLET-LIVE-READY", "MARTLET-LIVE-READY 0.1.0"),
    ]

    @Test(
        .enabled(if: available, "needs /var/cache/martlet/kernel, seabios' bios-microvm.bin, busybox and QEMU"),
        .timeLimit(.minutes(20)))
    func liveISOBootsToLiveReadyInMartletVMM() throws {
        let result = try TestBuilds.first.get()
        let work = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-nested-iso-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }

        let outer = work.appendingPathComponent("outer")
        try NestedKVM.installModules(NestedKVM.kvmModules + NestedKVM.diskModules, into: outer)
        try NestedKVM.install("/bin/busybox", into: outer, as: "bin/busybox")
        try NestedKVM.installExecutable(TestPaths.executable("martlet-vmm"), into: outer, as: "martlet-vmm")
        try NestedKVM.install(NestedKVM.firmware, into: outer, as: "bios-microvm.bin")
        // The inner VM gets 1536 MiB: the live system mounts its squashfs layers from the
        // medium and keeps only the overlay's upper layer in RAM, but systemd and the page
        // cache of the boot need room (ISOBootTests give QEMU 2048).
        let initrd = work.appendingPathComponent("outer.cpio.gz")
        let vcpus = 1
        try NestedKVM.packInitramfs(
            outer, init: NestedKVM.firmwareBootInit(readOnly: true, memoryMiB: 1536, vcpus: vcpus, timeout: 840),
            to: initrd)

        // The wait ends at the live system's marker, when QEMU ends, or after 15 minutes (then
        // the expectations below fail).
        let log = work.appendingPathComponent("serial.log")
        let run = try NestedKVM.run(
            NestedKVM.outerArguments(initrd: initrd, log: log, disks: [result.iso], readOnly: true, cpus: vcpus), log: log,
            stages: Self.stages.map(\.marker), until: "MARTLET-LIVE-READY 0.1.0", timeout: 900)
        let serial = run.serial
        print("nested live ISO boot in martlet-vmm (seconds from the outer QEMU's start):")
        for stage in Self.stages {
            print("  \(stage.name): \(run.seen[stage.marker].map { "\($0) s" } ?? "not seen")")
        }
        for line in serial.split(whereSeparator: \.isNewline) where line.contains("OUTER-") {
            print("  \(line)")
        }

        let excerpt = String(serial.suffix(6000))
        #expect(!serial.contains("OUTER: "), "the outer system is not ready (kvm-amd, the ISO drive):\n\(excerpt)")
        #expect(serial.contains("OUTER-MEDIUM: \(result.isoSize) bytes, read-only 1"), "the outer system did not see the ISO as a read-only /dev/vda:\n\(excerpt)")
        #expect(serial.contains("OUTER-START-VMM"), "the outer system did not start martlet-vmm:\n\(excerpt)")
        #expect(serial.contains("SeaBIOS (version"), "SeaBIOS printed nothing on the serial console:\n\(excerpt)")
        #expect(serial.contains("Booting from Hard Disk"), "SeaBIOS did not boot the ISO's MBR from the virtio-blk disk:\n\(excerpt)")
        #expect(serial.contains("Install Martlet 0.1.0"), "GRUB did not show the ISO's boot menu:\n\(excerpt)")
        #expect(serial.contains("Loading Martlet 0.1.0 ..."), "GRUB did not start the default entry (no timer ticks?):\n\(excerpt)")
        #expect(serial.contains("MARTLET-LIVE-READY 0.1.0"), "the live system did not reach MARTLET-LIVE-READY in martlet-vmm:\n\(excerpt)")
    }
}
