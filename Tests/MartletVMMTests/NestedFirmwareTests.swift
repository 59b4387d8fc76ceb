import Foundation
import MartletSystem
import MartletTestSupport
import MartletVMMProtocol
import Testing

@testable import MartletVMM

/// Firmware boot for real: SeaBIOS (Debian's bios-microvm.bin) in martlet-vmm boots an MBR
/// disk image the test builds with real tools — an ext2 partition holding Debian's kernel and
/// a busybox initramfs, GRUB for i386-pc written with grub-mkimage and dd — through GRUB to the
/// initramfs' /init. Real mode does not run on these machines' /dev/kvm, so like
/// NestedLinuxTests this runs inside QEMU/TCG with nested KVM. The same image is first booted
/// by QEMU's own microvm with the same firmware, so a broken image fails there, not in the VMM.
/// Before it, the same nested VMM boots an empty disk and must report "no bootable device".
@Suite(.serialized)
struct NestedFirmwareTests {
    static let firmware = NestedKVM.firmware
    static let available =
        NestedKVM.available && FileManager.default.fileExists(atPath: firmware)
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/grub-mkimage")
        && FileManager.default.fileExists(atPath: "/usr/lib/grub/i386-pc/boot.img")

    /// scripts/make-grub-disk: an MBR disk with GRUB (grub-mkimage + dd), an ext2 partition
    /// with Debian's kernel and a busybox initramfs that prints MARTLET-FIRMWARE-INIT.
    static func buildDisk(in work: URL) throws -> URL {
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let script = TestSupport.repository.appendingPathComponent("scripts/make-grub-disk").path
        let result = try TestSupport.run("/bin/sh", [script, work.path, NestedKVM.kernelDirectory], timeout: 180)
        guard result.status == 0 else { throw VMMError(.io, "\(script) failed: \(result.output)") }
        return work.appendingPathComponent("disk.img")
    }

    static let outerInit = """
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mount -t proc proc /proc
        mount -t sysfs sys /sys
        mount -t devtmpfs dev /dev
        for m in irqbypass ccp kvm kvm-amd; do insmod /modules/$m.ko || echo "OUTER: insmod $m failed"; done
        [ -c /dev/kvm ] || echo "OUTER: no /dev/kvm"
        # A disk with nothing bootable first: SeaBIOS says so, and the VMM ends with exit code 6
        # instead of letting SeaBIOS retry every 60 s.
        echo OUTER-START-EMPTY
        /martlet-vmm --firmware /bios-microvm.bin --disk /empty.img --memory 64 \\
            --serial stdout --timeout 120 </dev/null 2>/empty.err
        echo "OUTER-EMPTY-EXIT $?"
        echo OUTER-EMPTY-STDERR
        head -c 1000 /empty.err
        echo OUTER-START-VMM
        # The inner console goes straight to the outer one, so a stall shows how far it got;
        # the VMM's own messages wait in a file so they cannot split the guest's lines.
        /martlet-vmm --firmware /bios-microvm.bin --disk /disk.img --memory 256 --vcpus \(NestedLinuxTests.innerVCPUs) \\
            --serial stdout --timeout 420 </dev/null 2>/vmm.err
        echo "OUTER-VMM-EXIT $?"
        echo OUTER-VMM-STDERR
        head -c 4000 /vmm.err
        poweroff -f

        """

    @Test(.enabled(if: available), .timeLimit(.minutes(30)))
    func seaBIOSBootsGRUBAndDebianKernelFromAnMBRDisk() throws {
        let work = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: work) }
        let disk = try Self.buildDisk(in: work.appendingPathComponent("image"))

        // The image, proven by QEMU microvm with the same firmware (TCG, no nesting) up to the
        // kernel GRUB loads from it; the kernel's own slow start under TCG is not waited for.
        let sercon = work.appendingPathComponent("sercon-port")
        try Data([0xF8, 0x03]).write(to: sercon)
        let qemuLog = work.appendingPathComponent("qemu-microvm.log")
        let referenceSerial = try NestedKVM.run([
            "-M", "microvm,acpi=on", "-accel", "tcg", "-m", "256", "-bios", Self.firmware,
            "-drive", "id=disk,file=\(disk.path),format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=disk",
            "-fw_cfg", "name=etc/sercon-port,file=\(sercon.path)",
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none", "-serial", "file:\(qemuLog.path)",
        ], log: qemuLog, until: "Linux version", timeout: 240).serial
        try #require(referenceSerial.contains("MARTLET-GRUB-LINUX") && referenceSerial.contains("Linux version"), "QEMU microvm itself did not boot the disk image's GRUB into its kernel:\n\(referenceSerial.suffix(3000))")

        let vmm = try NestedLinuxTests.releaseBinary()
        let outer = work.appendingPathComponent("outer")
        try NestedKVM.install("/bin/busybox", into: outer, as: "bin/busybox")
        try NestedKVM.installModules(NestedKVM.kvmModules, into: outer)
        try NestedKVM.installExecutable(vmm, into: outer, as: "martlet-vmm")
        try NestedKVM.install(Self.firmware, into: outer, as: "bios-microvm.bin")
        try NestedKVM.install(disk.path, into: outer, as: "disk.img")
        try Data(count: 1 << 20).write(to: outer.appendingPathComponent("empty.img"))
        for directory in ["proc", "sys", "dev", "tmp"] { try FileManager.default.createDirectory(at: outer.appendingPathComponent(directory), withIntermediateDirectories: true) }
        try Self.outerInit.write(to: outer.appendingPathComponent("init"), atomically: true, encoding: .utf8)
        chmod(outer.appendingPathComponent("init").path, 0o755)
        let outerInitrd = work.appendingPathComponent("outer.cpio.gz")
        try NestedKVM.packCPIO(outer, to: outerInitrd)

        var (status, seconds, serial, death) = try NestedLinuxTests.bootOuter(initrd: outerInitrd, log: work.appendingPathComponent("serial.log"), timeout: 540)
        if let first = death {
            // Not this test's subject (NestedLinuxTests.outerDeath): one more boot, said so.
            print("nested firmware boot: the outer kernel died after \(seconds) s (\(first)); a fault of QEMU's TCG, booting it once more")
            (status, seconds, serial, death) = try NestedLinuxTests.bootOuter(initrd: outerInitrd, log: work.appendingPathComponent("serial-2.log"), timeout: 540)
        }
        let excerpt = String(serial.suffix(6000))
        print("nested firmware boot: QEMU exited \(status) after \(seconds) s")
        #expect(death == nil, "the outer kernel died on the second boot as well (\(death ?? "")):\n\(excerpt)")
        for line in serial.split(separator: "\n") where line.contains("FW-INNER") || line.contains("OUTER-") || line.contains("MARTLET-") {
            print("  \(line)")
        }

        // The empty disk: SeaBIOS's message on the console, the VMM's exit code and reason.
        let empty = serial.components(separatedBy: "OUTER-START-EMPTY").last?.components(separatedBy: "OUTER-START-VMM").first ?? ""
        #expect(empty.contains("No bootable device."), "SeaBIOS did not report the empty disk:\n\(String(empty.suffix(3000)))")
        #expect(empty.contains("OUTER-EMPTY-EXIT \(VMMExitCode.noBootableDevice.rawValue)"), "martlet-vmm did not end with 'no bootable device':\n\(String(empty.suffix(3000)))")
        #expect(empty.contains("martlet-vmm: no bootable device"), "martlet-vmm did not say why it ended:\n\(String(empty.suffix(3000)))")
        #expect(serial.contains("OUTER-START-VMM"), "the outer system did not start martlet-vmm:\n\(excerpt)")
        #expect(!serial.contains("OUTER: no /dev/kvm"), "kvm-amd did not load in the outer QEMU:\n\(excerpt)")
        #expect(serial.contains("SeaBIOS (version"), "SeaBIOS printed nothing on the serial console (etc/sercon-port):\n\(excerpt)")
        #expect(serial.contains("Booting from Hard Disk"), "SeaBIOS did not boot the virtio-blk disk:\n\(excerpt)")
        #expect(serial.contains("MARTLET-GRUB-MENU"), "GRUB did not run its configuration:\n\(excerpt)")
        // GRUB's own line for the entry, then the kernel it loaded. Not "MARTLET-GRUB-LINUX":
        // its last character, printed just before GRUB hands over to the kernel, goes missing
        // under martlet-vmm (not under QEMU) — SeaBIOS's serial console writes lazily, and what
        // should flush it here is still to be found.
        // The menu's 2 s timeout runs on the BIOS tick count: the entry starts only if the
        // PIT's IRQ0 reaches SeaBIOS (through the PIC and LINT0, which SeaBIOS sets to ExtINT).
        #expect(serial.contains("Booting `Debian kernel, Martlet firmware test'"), "GRUB did not start its menu entry (a menu that never times out: no timer ticks in real mode?):\n\(excerpt)")
        #expect(serial.contains("Linux version"), "GRUB did not start the kernel:\n\(excerpt)")
        #expect(serial.contains("MARTLET-FIRMWARE-INIT"), "Debian's kernel loaded by GRUB did not reach /init:\n\(excerpt)")
        #expect(serial.contains("FW-INNER-CPUS: 0-1"), "the inner guest did not bring up both vCPUs:\n\(excerpt)")
        #expect(serial.contains("FW-INNER-DISK: vda1"), "the kernel did not find the virtio-mmio disk in the ACPI tables SeaBIOS loaded:\n\(excerpt)")
        #expect(serial.contains("OUTER-VMM-EXIT 0"), "martlet-vmm did not end with the guest's power-off:\n\(excerpt)")
    }
}
