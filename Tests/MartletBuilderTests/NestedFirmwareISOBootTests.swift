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
/// It prints when each stage first showed on the console, in seconds from the outer start.
/// On demand only (MARTLET_NESTED_MEDIA=1): the first run took 1537 s, 1445 s of it from GRUB
/// to MARTLET-LIVE-READY (systemd under nested KVM inside TCG, machine load ≈ 9 on 2 cores),
/// far beyond what `make test` can add.
@Suite struct NestedFirmwareISOBootTests {
    static let kernelDirectory = "/var/cache/martlet/kernel"
    static let firmware = "/usr/share/seabios/bios-microvm.bin"
    static let available =
        FileManager.default.fileExists(atPath: kernelDirectory + "/vmlinuz")
        && FileManager.default.fileExists(atPath: firmware)
        && FileManager.default.isExecutableFile(atPath: "/bin/busybox")
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64")
    static let wanted = ProcessInfo.processInfo.environment["MARTLET_NESTED_MEDIA"] == "1"

    /// The outer system's modules: KVM for the nested VM, virtio over PCI for the ISO drive.
    static let outerModules = [
        "virt/lib/irqbypass", "drivers/crypto/ccp/ccp", "arch/x86/kvm/kvm", "arch/x86/kvm/kvm-amd",
        "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_pci_legacy_dev",
        "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci", "drivers/block/virtio_blk",
    ]

    /// The inner VM gets 1536 MiB: the live system mounts its squashfs layers from the medium
    /// and keeps only the overlay's upper layer in RAM, but systemd and the page cache of a
    /// 2-vCPU boot need room (ISOBootTests give QEMU 2048).
    static let outerInit = """
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mount -t proc proc /proc
        mount -t sysfs sys /sys
        mount -t devtmpfs dev /dev
        for m in irqbypass ccp kvm kvm-amd virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
            insmod /modules/$m.ko || echo "OUTER: insmod $m failed"
        done
        [ -c /dev/kvm ] || echo "OUTER: no /dev/kvm"
        i=0
        while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
        echo "OUTER-MEDIUM: $(blockdev --getsize64 /dev/vda) bytes, read-only $(blockdev --getro /dev/vda)"
        echo OUTER-START-VMM
        # The inner console goes straight to the outer one, so a stall shows how far it got;
        # the VMM's own messages wait in a file so they cannot split the guest's lines.
        /martlet-vmm --firmware /bios-microvm.bin --disk /dev/vda,ro --memory 1536 --vcpus 2 \\
            --serial stdout --timeout 1700 </dev/null 2>/vmm.err
        echo "OUTER-VMM-EXIT $?"
        echo OUTER-VMM-STDERR
        head -c 4000 /vmm.err
        poweroff -f

        """

    /// The console lines that mark each stage, in boot order, with the name printed for it.
    static let stages: [(name: String, marker: String)] = [
        ("martlet-vmm started", "OUTER-START-VMM"),
        ("SeaBIOS banner", "SeaBIOS (version"),
        ("SeaBIOS boots the disk", "Booting from Hard Disk"),
        ("GRUB menu", "Install Martlet 0.1.0"),
        ("GRUB loads the kernel", "Loading Martlet 0.1.0 ..."),
        ("MARTLET-LIVE-READY", "MARTLET-LIVE-READY 0.1.0"),
    ]

    static func install(_ source: String, into root: String, as path: String) throws {
        let target = root + "/" + path
        try FileManager.default.createDirectory(
            atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            atPath: URL(fileURLWithPath: source).resolvingSymlinksInPath().path, toPath: target)
    }

    @Test(
        .enabled(if: wanted, "about 25 minutes of nested TCG: run with MARTLET_NESTED_MEDIA=1"),
        .enabled(if: available, "needs /var/cache/martlet/kernel, seabios' bios-microvm.bin, busybox and QEMU"),
        .timeLimit(.minutes(40)))
    func liveISOBootsToLiveReadyInMartletVMM() throws {
        let result = try TestBuilds.first.get()
        let work = FileManager.default.temporaryDirectory
            .appendingPathComponent("martlet-nested-iso-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }

        let version = try FileManager.default.contentsOfDirectory(atPath: Self.kernelDirectory + "/lib/modules").sorted().last!
        let modules = "\(Self.kernelDirectory)/lib/modules/\(version)/kernel"
        let outer = work + "/outer"
        try Self.install("/bin/busybox", into: outer, as: "bin/busybox")
        for module in Self.outerModules {
            try Self.install("\(modules)/\(module).ko", into: outer, as: "modules/\((module as NSString).lastPathComponent).ko")
        }
        // The release martlet-vmm links the Swift runtime statically and glibc dynamically.
        let vmm = TestPaths.executable("martlet-vmm")
        try Self.install(vmm, into: outer, as: "martlet-vmm")
        for line in try Command("ldd", [vmm]).run().stdoutText.split(separator: "\n") {
            guard let library = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first(where: { $0.hasPrefix("/") }) else { continue }
            try? Self.install(String(library), into: outer, as: String(library.dropFirst()))
        }
        try Self.install(Self.firmware, into: outer, as: "bios-microvm.bin")
        for directory in ["proc", "sys", "dev", "tmp"] {
            try FileManager.default.createDirectory(atPath: outer + "/" + directory, withIntermediateDirectories: true)
        }
        try Self.outerInit.write(toFile: outer + "/init", atomically: false, encoding: .utf8)
        chmod(outer + "/init", 0o755)
        let initrd = work + "/outer.cpio.gz"
        try Command("/bin/sh", ["-c", "cd '\(outer)' && find . | cpio -o -H newc --quiet | gzip -1 > '\(initrd)'"]).run()

        let log = work + "/serial.log"
        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-system-x86_64")
        qemu.arguments = [
            "-accel", "tcg", "-cpu", "max", "-m", "3072", "-smp", "1",
            "-kernel", Self.kernelDirectory + "/vmlinuz", "-initrd", initrd,
            "-append", "console=ttyS0 panic=-1 quiet",
            "-drive", "file=\(result.iso),format=raw,if=virtio,readonly=on",
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none", "-serial", "file:\(log)",
        ]
        qemu.standardOutput = FileHandle.nullDevice
        qemu.standardError = FileHandle.nullDevice
        let start = Date()
        try qemu.run()
        defer {
            // QEMU busy in TCG does not act on SIGTERM for minutes, and the test runner's
            // children ignore it anyway: only SIGKILL works.
            if qemu.isRunning { kill(qemu.processIdentifier, SIGKILL) }
            qemu.waitUntilExit()
        }
        // When each stage first shows on the console; the wait ends at the live system's
        // marker, when QEMU ends, or after 30 minutes (then the expectations below fail).
        var seen: [String: Int] = [:]
        var serial = ""
        let deadline = start.addingTimeInterval(1800)
        while Date() < deadline {
            serial = (try? String(contentsOfFile: log, encoding: .utf8)) ?? serial
            for stage in Self.stages where seen[stage.name] == nil && serial.contains(stage.marker) {
                seen[stage.name] = Int(Date().timeIntervalSince(start))
            }
            if seen["MARTLET-LIVE-READY"] != nil || !qemu.isRunning { break }
            Thread.sleep(forTimeInterval: 1)
        }
        serial = (try? String(contentsOfFile: log, encoding: .utf8)) ?? serial
        print("nested live ISO boot in martlet-vmm (seconds from the outer QEMU's start):")
        for stage in Self.stages {
            print("  \(stage.name): \(seen[stage.name].map { "\($0) s" } ?? "not seen")")
        }
        for line in serial.split(separator: "\n") where line.contains("OUTER-") {
            print("  \(line)")
        }

        let excerpt = String(serial.suffix(6000))
        #expect(!serial.contains("OUTER: no /dev/kvm"), "kvm-amd did not load in the outer QEMU:\n\(excerpt)")
        #expect(serial.contains("OUTER-MEDIUM: \(result.isoSize) bytes, read-only 1"), "the outer system did not see the ISO as a read-only /dev/vda:\n\(excerpt)")
        #expect(serial.contains("OUTER-START-VMM"), "the outer system did not start martlet-vmm:\n\(excerpt)")
        #expect(serial.contains("SeaBIOS (version"), "SeaBIOS printed nothing on the serial console:\n\(excerpt)")
        #expect(serial.contains("Booting from Hard Disk"), "SeaBIOS did not boot the ISO's MBR from the virtio-blk disk:\n\(excerpt)")
        #expect(serial.contains("Install Martlet 0.1.0"), "GRUB did not show the ISO's boot menu:\n\(excerpt)")
        #expect(serial.contains("Loading Martlet 0.1.0 ..."), "GRUB did not start the default entry (no timer ticks?):\n\(excerpt)")
        #expect(serial.contains("MARTLET-LIVE-READY 0.1.0"), "the live system did not reach MARTLET-LIVE-READY in martlet-vmm:\n\(excerpt)")
    }
}
