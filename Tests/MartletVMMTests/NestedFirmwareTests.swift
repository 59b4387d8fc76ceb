import Foundation
import Testing

@testable import MartletVMM

/// Firmware boot for real: SeaBIOS (Debian's bios-microvm.bin) in martlet-vmm boots an MBR
/// disk image the test builds with real tools — an ext2 partition holding Debian's kernel and
/// a busybox initramfs, GRUB for i386-pc written with grub-mkimage and dd — through GRUB to the
/// initramfs' /init. Real mode does not run on these machines' /dev/kvm, so like
/// NestedLinuxTests this runs inside QEMU/TCG with nested KVM. The same image is first booted
/// by QEMU's own microvm with the same firmware, so a broken image fails there, not in the VMM.
@Suite(.serialized)
struct NestedFirmwareTests {
    static let firmware = "/usr/share/seabios/bios-microvm.bin"
    static let available =
        NestedLinuxTests.available && FileManager.default.fileExists(atPath: firmware)
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/grub-mkimage")
        && FileManager.default.fileExists(atPath: "/usr/lib/grub/i386-pc/boot.img")

    /// Builds WORK/disk.img from the kernel directory: MBR with one bootable ext2 partition at
    /// 1 MiB, GRUB's boot.img in the MBR's code area and its core.img in the gap after it.
    /// GRUB prints through the BIOS console, so its text reaches the serial port only through
    /// SeaBIOS's serial console (fw_cfg etc/sercon-port).
    static let makeDisk = #"""
        set -eu
        work=$1; kdir=$2
        mods=$kdir/lib/modules/$(ls "$kdir/lib/modules" | sort | tail -n 1)/kernel
        mkdir -p "$work/initrd/bin" "$work/initrd/modules" "$work/initrd/proc" "$work/initrd/sys" "$work/initrd/dev" "$work/root/boot/grub"
        cp /bin/busybox "$work/initrd/bin/busybox"
        for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio drivers/block/virtio_blk; do
            cp "$mods/$m.ko" "$work/initrd/modules/"
        done
        cat > "$work/initrd/init" <<'INIT'
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mount -t proc proc /proc
        mount -t sysfs sys /sys
        mount -t devtmpfs dev /dev
        echo MARTLET-FIRMWARE-INIT
        echo "FW-INNER-CPUS: $(cat /sys/devices/system/cpu/online)"
        for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /modules/$m.ko || echo "FW-INNER: insmod $m failed"; done
        i=0
        while [ ! -b /dev/vda1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
        if [ -b /dev/vda1 ]; then echo "FW-INNER-DISK: vda1 of $(cat /sys/block/vda/size) sectors"; else echo "FW-INNER-DISK: none"; fi
        echo MARTLET-FIRMWARE-DONE
        poweroff -f
        INIT
        chmod 755 "$work/initrd/init"
        (cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/root/boot/initrd.gz"
        cp "$(readlink -f "$kdir/vmlinuz")" "$work/root/boot/vmlinuz"
        cat > "$work/root/boot/grub/grub.cfg" <<'CFG'
        set timeout=0
        echo MARTLET-GRUB-MENU
        menuentry "Debian kernel, Martlet firmware test" {
            echo MARTLET-GRUB-LINUX
            linux /boot/vmlinuz console=ttyS0 panic=-1 loglevel=4
            initrd /boot/initrd.gz
        }
        CFG
        size=$(( $(du -sm "$work/root" | cut -f1) + 8 ))
        mkfs.ext2 -q -F -L martletfw -d "$work/root" "$work/part.img" ${size}M
        truncate -s $(( (size + 1) * 1024 * 1024 )) "$work/disk.img"
        echo "start=2048, type=83, bootable" | sfdisk -q --label dos "$work/disk.img"
        dd if="$work/part.img" of="$work/disk.img" bs=1M seek=1 conv=notrunc status=none
        rm "$work/part.img"
        grub-mkimage -O i386-pc -o "$work/core.img" -p "(hd0,msdos1)/boot/grub" biosdisk part_msdos ext2 normal linux echo configfile
        [ "$(stat -c %s "$work/core.img")" -lt $(( 2047 * 512 )) ] || { echo "core.img does not fit before the partition"; exit 1; }
        dd if=/usr/lib/grub/i386-pc/boot.img of="$work/disk.img" bs=440 count=1 conv=notrunc status=none
        dd if="$work/core.img" of="$work/disk.img" bs=512 seek=1 conv=notrunc status=none
        """#

    static func buildDisk(in work: URL) throws -> URL {
        let script = work.appendingPathComponent("make-disk.sh")
        try makeDisk.write(to: script, atomically: true, encoding: .utf8)
        let result = try TestSupport.run("/bin/sh", [script.path, work.path, NestedLinuxTests.kernelDirectory], timeout: 180)
        guard result.status == 0 else { throw VMMError(.io, "building the GRUB disk image failed: \(result.output)") }
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
        echo OUTER-START-VMM
        /martlet-vmm --firmware /bios-microvm.bin --disk /disk.img --memory 256 --vcpus 2 \\
            --serial file:/inner.log --timeout 240 2>/vmm.err
        echo "OUTER-VMM-EXIT $?"
        cat /inner.log
        echo OUTER-VMM-STDERR
        head -c 4000 /vmm.err
        poweroff -f

        """

    @Test(.enabled(if: available), .timeLimit(.minutes(10)))
    func seaBIOSBootsGRUBAndDebianKernelFromAnMBRDisk() throws {
        let work = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: work) }
        let disk = try Self.buildDisk(in: work.appendingPathComponent("image"))

        // The image, proven by QEMU microvm with the same firmware (TCG, no nesting).
        let sercon = work.appendingPathComponent("sercon-port")
        try Data([0xF8, 0x03]).write(to: sercon)
        let qemuLog = work.appendingPathComponent("qemu-microvm.log")
        let reference = try TestSupport.run("/usr/bin/qemu-system-x86_64", [
            "-M", "microvm,acpi=on", "-accel", "tcg", "-m", "256", "-bios", Self.firmware,
            "-drive", "id=disk,file=\(disk.path),format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=disk",
            "-fw_cfg", "name=etc/sercon-port,file=\(sercon.path)",
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none", "-serial", "file:\(qemuLog.path)",
        ], timeout: 300)
        let referenceSerial = (try? String(contentsOf: qemuLog, encoding: .utf8)) ?? ""
        try #require(referenceSerial.contains("MARTLET-FIRMWARE-DONE"), "QEMU microvm itself did not boot the disk image (exit \(reference.status)):\n\(referenceSerial.suffix(3000))")

        let version = try FileManager.default.contentsOfDirectory(atPath: "\(NestedLinuxTests.kernelDirectory)/lib/modules").sorted().last!
        let modules = "\(NestedLinuxTests.kernelDirectory)/lib/modules/\(version)/kernel"
        let vmm = try NestedLinuxTests.releaseBinary()
        let outer = work.appendingPathComponent("outer")
        try NestedLinuxTests.install("/bin/busybox", into: outer, as: "bin/busybox")
        for module in ["virt/lib/irqbypass", "drivers/crypto/ccp/ccp", "arch/x86/kvm/kvm", "arch/x86/kvm/kvm-amd"] {
            try NestedLinuxTests.install("\(modules)/\(module).ko", into: outer, as: "modules/\(URL(fileURLWithPath: module).lastPathComponent).ko")
        }
        try NestedLinuxTests.install(vmm, into: outer, as: "martlet-vmm")
        let ldd = try TestSupport.run("/usr/bin/ldd", [vmm])
        for line in ldd.output.split(separator: "\n") {
            guard let path = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first(where: { $0.hasPrefix("/") }).map(String.init) else { continue }
            try? NestedLinuxTests.install(path, into: outer, as: String(path.dropFirst()))
        }
        try NestedLinuxTests.install(Self.firmware, into: outer, as: "bios-microvm.bin")
        try NestedLinuxTests.install(disk.path, into: outer, as: "disk.img")
        for directory in ["proc", "sys", "dev", "tmp"] { try FileManager.default.createDirectory(at: outer.appendingPathComponent(directory), withIntermediateDirectories: true) }
        try Self.outerInit.write(to: outer.appendingPathComponent("init"), atomically: true, encoding: .utf8)
        chmod(outer.appendingPathComponent("init").path, 0o755)
        let outerInitrd = work.appendingPathComponent("outer.cpio.gz")
        try NestedLinuxTests.packCPIO(outer, to: outerInitrd)

        let log = work.appendingPathComponent("serial.log")
        let start = Date()
        let qemu = try TestSupport.run("/usr/bin/qemu-system-x86_64", [
            "-accel", "tcg", "-cpu", "max", "-m", "3072", "-smp", "1",
            "-kernel", "\(NestedLinuxTests.kernelDirectory)/vmlinuz", "-initrd", outerInitrd.path,
            "-append", "console=ttyS0 panic=-1 quiet",
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
            "-serial", "file:\(log.path)",
        ], timeout: 330)
        let seconds = Date().timeIntervalSince(start)
        let serial = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        let excerpt = String(serial.suffix(6000))
        print("nested firmware boot: QEMU exited \(qemu.status) after \(Int(seconds)) s")
        for line in serial.split(separator: "\n") where line.contains("FW-INNER") || line.contains("OUTER-") || line.contains("MARTLET-") {
            print("  \(line)")
        }

        #expect(serial.contains("OUTER-START-VMM"), "the outer system did not start martlet-vmm:\n\(excerpt)")
        #expect(!serial.contains("OUTER: no /dev/kvm"), "kvm-amd did not load in the outer QEMU:\n\(excerpt)")
        #expect(serial.contains("SeaBIOS (version"), "SeaBIOS printed nothing on the serial console (etc/sercon-port):\n\(excerpt)")
        #expect(serial.contains("Booting from Hard Disk"), "SeaBIOS did not boot the virtio-blk disk:\n\(excerpt)")
        #expect(serial.contains("MARTLET-GRUB-MENU"), "GRUB did not run its configuration:\n\(excerpt)")
        #expect(serial.contains("MARTLET-GRUB-LINUX"), "GRUB did not reach the Linux entry:\n\(excerpt)")
        #expect(serial.contains("MARTLET-FIRMWARE-INIT"), "Debian's kernel loaded by GRUB did not reach /init:\n\(excerpt)")
        #expect(serial.contains("FW-INNER-CPUS: 0-1"), "the inner guest did not bring up both vCPUs:\n\(excerpt)")
        #expect(serial.contains("FW-INNER-DISK: vda1"), "the kernel did not find the virtio-mmio disk in the ACPI tables SeaBIOS loaded:\n\(excerpt)")
        #expect(serial.contains("OUTER-VMM-EXIT 0"), "martlet-vmm did not end with the guest's power-off:\n\(excerpt)")
    }
}
