import Foundation
import MartletCore
import MartletSystem

/// An outer QEMU/TCG machine (`-cpu max`, kvm-amd loaded) running Debian's stock kernel with
/// a busybox initramfs the test packs, for what these machines' /dev/kvm cannot run directly
/// (real mode, a stock kernel: DESIGN.md, Facts). `scripts/setup` unpacks the kernel and its
/// modules into `kernelDirectory`.
public enum NestedKVM {
    public static let kernelDirectory = "/var/cache/martlet/kernel"
    public static let firmware = "/usr/share/seabios/bios-microvm.bin"

    /// Whether the kernel, QEMU and busybox are here.
    public static let available =
        FileManager.default.fileExists(atPath: "\(kernelDirectory)/vmlinuz")
        && FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-system-x86_64")
        && FileManager.default.isExecutableFile(atPath: "/bin/busybox")

    /// The kernel's module tree (`…/lib/modules/VERSION/kernel`).
    public static func modules() throws -> String {
        let versions = try FileManager.default.contentsOfDirectory(atPath: "\(kernelDirectory)/lib/modules")
        guard let version = versions.sorted().last else {
            throw MartletError(.missingDependency, "no kernel modules under \(kernelDirectory)/lib/modules",
                hint: "run scripts/setup")
        }
        return "\(kernelDirectory)/lib/modules/\(version)/kernel"
    }

    /// What an outer system needs for nested KVM.
    public static let kvmModules = [
        "virt/lib/irqbypass", "drivers/crypto/ccp/ccp", "arch/x86/kvm/kvm", "arch/x86/kvm/kvm-amd",
    ]

    /// Virtio over PCI for the outer machine's drives (`outerArguments(disks:)`).
    public static let diskModules = [
        "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_pci_legacy_dev",
        "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci", "drivers/block/virtio_blk",
    ]

    /// The outer `/init` of a firmware boot: loads `kvmModules` and `diskModules` (installed
    /// by `installModules`), waits for the outer drive /dev/vda, and runs /martlet-vmm with
    /// /bios-microvm.bin and that drive (`,ro` when `readOnly`) as its first disk. The inner
    /// console goes straight to the outer one, so a stall shows how far it got; the VMM's
    /// own messages wait in a file so they cannot split the guest's lines. Prints
    /// `OUTER-MEDIUM: SIZE bytes, read-only 0|1`, `OUTER-START-VMM`, `OUTER-VMM-EXIT CODE`,
    /// and `OUTER: …` for what is missing.
    public static func firmwareBootInit(readOnly: Bool, memoryMiB: Int, vcpus: Int, timeout: Int) -> String {
        let modules = (kvmModules + diskModules).map { URL(fileURLWithPath: $0).lastPathComponent }
        return """
            #!/bin/busybox sh
            /bin/busybox --install -s /bin
            mount -t proc proc /proc
            mount -t sysfs sys /sys
            mount -t devtmpfs dev /dev
            for m in \(modules.joined(separator: " ")); do
                insmod /modules/$m.ko || echo "OUTER: insmod $m failed"
            done
            [ -c /dev/kvm ] || echo "OUTER: no /dev/kvm"
            i=0
            while [ ! -b /dev/vda ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
            [ -b /dev/vda ] || echo "OUTER: no /dev/vda"
            echo "OUTER-MEDIUM: $(blockdev --getsize64 /dev/vda) bytes, read-only $(blockdev --getro /dev/vda)"
            echo OUTER-START-VMM
            /martlet-vmm --firmware /bios-microvm.bin --disk /dev/vda\(readOnly ? ",ro" : "") --memory \(memoryMiB) \
                --vcpus \(vcpus) --serial stdout --timeout \(timeout) </dev/null 2>/vmm.err
            echo "OUTER-VMM-EXIT $?"
            echo OUTER-VMM-STDERR
            head -c 4000 /vmm.err
            poweroff -f

            """
    }

    /// Copies `source` (links resolved) into `root` as `path`.
    public static func install(_ source: String, into root: URL, as path: String) throws {
        let target = root.appendingPathComponent(path)
        try FileManager.default.createDirectory(
            at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            atPath: URL(fileURLWithPath: source).resolvingSymlinksInPath().path, toPath: target.path)
    }

    /// Installs each module (a path below `modules()`, without `.ko`) as `modules/NAME.ko`.
    public static func installModules(_ names: [String], into root: URL) throws {
        let modules = try modules()
        for name in names {
            try install(
                "\(modules)/\(name).ko", into: root,
                as: "modules/\(URL(fileURLWithPath: name).lastPathComponent).ko")
        }
    }

    /// Installs the executable at `source` into `root` as `path`, with the shared libraries
    /// `ldd` names (the release binaries link the Swift runtime statically, glibc dynamically).
    public static func installExecutable(_ source: String, into root: URL, as path: String) throws {
        try install(source, into: root, as: path)
        let ldd = try Command("/usr/bin/ldd", [source]).run().stdoutText
        for line in ldd.split(separator: "\n") {
            guard
                let library = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                    .first(where: { $0.hasPrefix("/") }).map(String.init)
            else { continue }
            try? install(library, into: root, as: String(library.dropFirst()))
        }
    }

    /// Writes `script` as `root`/init (busybox sh), with the mount points it uses, and packs
    /// `root` as a gzip'd newc cpio archive at `output`.
    public static func packInitramfs(_ root: URL, init script: String, to output: URL) throws {
        for directory in ["proc", "sys", "dev", "tmp"] {
            try FileManager.default.createDirectory(
                at: root.appendingPathComponent(directory), withIntermediateDirectories: true)
        }
        let initPath = root.appendingPathComponent("init")
        try script.write(to: initPath, atomically: true, encoding: .utf8)
        guard chmod(initPath.path, 0o755) == 0 else { throw MartletError.system("chmod", path: initPath.path) }
        try packCPIO(root, to: output)
    }

    /// Packs `directory` as a gzip'd newc cpio archive at `output`.
    public static func packCPIO(_ directory: URL, to output: URL) throws {
        try Command(
            "/bin/sh",
            ["-c", "cd '\(directory.path)' && find . | cpio -o -H newc --quiet | gzip -1 > '\(output.path)'"]
        ).run()
    }

    /// QEMU's arguments for the outer machine: Debian's kernel and `initrd`, the console in
    /// `log`, and `disks` as virtio-blk-pci drives, read-only or opened with `snapshot=on`
    /// (the outer guest's writes go to a temporary overlay, never to the file).
    /// `cpus` should be at least the inner VM's vCPUs: on fewer, an inner vCPU spinning on a
    /// lock waits for the outer's scheduler to run the one holding it. The live ISO's boot took
    /// 1 537 s with 2 inner vCPUs on 1 and 205 s with 1 on 1; NestedLinuxTests' 2 MiB upload
    /// took 5.7 s on 1 outer vCPU and 1.7 s on 2.
    public static func outerArguments(
        initrd: URL, log: URL, disks: [String] = [], readOnly: Bool = false, cpus: Int = 1
    ) -> [String] {
        var arguments = [
            "-accel", "tcg", "-cpu", "max", "-m", "3072", "-smp", String(cpus),
            "-kernel", "\(kernelDirectory)/vmlinuz", "-initrd", initrd.path,
            "-append", "console=ttyS0 panic=-1 quiet",
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
            "-serial", "file:\(log.path)",
        ]
        for (index, disk) in disks.enumerated() {
            arguments += [
                "-drive",
                "id=disk\(index),file=\(disk),format=raw,if=none,\(readOnly ? "readonly=on" : "snapshot=on")",
                "-device", "virtio-blk-pci,drive=disk\(index)",
            ]
        }
        return arguments
    }

    /// A run of the outer machine: its console, how long it ran, and when each of the
    /// `stages` markers first showed (seconds from the start; a marker never seen is absent).
    public struct Run: Sendable {
        public var serial: String
        public var seconds: Int
        public var seen: [String: Int]
    }

    /// Console lines after which a boot goes no further: the run ends there, not at its
    /// time limit.
    public static let deadEnds = [
        "Kernel panic", "Target filesystem doesn't have requested", "Gave up waiting for root",
        "OUTER-VMM-EXIT",
    ]

    /// Runs QEMU with `arguments` until its console log `log` holds `until` or one of
    /// `deadEnds`, QEMU ends, or `timeout` seconds pass; then kills it.
    public static func run(
        _ arguments: [String], log: URL, stages: [String] = [], until marker: String, timeout: Double
    ) throws -> Run {
        let start = ChildProcess.monotonicSeconds()
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        let pid = try ChildProcess.spawn(
            ["/usr/bin/qemu-system-x86_64"] + arguments, stdin: null.raw, stdout: null.raw,
            stderr: null.raw)
        defer {
            // SIGKILL: QEMU busy in TCG does not act on SIGTERM for minutes (seen here).
            if ChildProcess.termination(pid) == nil { kill(pid, SIGKILL) }
            _ = ChildProcess.wait(pid)
        }
        func text() -> String {
            FileManager.default.contents(atPath: log.path).map { String(decoding: $0, as: UTF8.self) } ?? ""
        }
        var seen: [String: Int] = [:]
        _ = Poll.until(timeout: timeout, interval: 1) {
            let serial = text()
            for stage in stages where seen[stage] == nil && serial.contains(stage) {
                seen[stage] = Int(ChildProcess.monotonicSeconds() - start)
            }
            return serial.contains(marker) || deadEnds.contains { serial.contains($0) }
                || ChildProcess.termination(pid) != nil
        }
        return Run(serial: text(), seconds: Int(ChildProcess.monotonicSeconds() - start), seen: seen)
    }
}
