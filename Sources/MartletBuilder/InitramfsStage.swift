import Foundation
import MartletCore

/// The live system's initramfs: busybox, the storage and filesystem modules needed to
/// find the boot medium, and `/init` from `iso/initramfs/init`. It finds the medium by
/// its volume label on CD, USB and virtual media, stacks the live layer and the host
/// root under a tmpfs overlay and hands over to systemd.
struct InitramfsStage: BuildStage {
    let name = "initramfs"

    /// Modules (with their dependencies) for every medium Martlet boots from: CD/DVD
    /// (ATA, AHCI, SCSI), USB sticks (xHCI/EHCI/OHCI/UHCI, usb-storage, UAS), virtual
    /// media (virtio over PCI, and over MMIO as martlet-vmm and QEMU microvm announce it in
    /// ACPI; NVMe, VMware/Hyper-V SCSI), and the filesystems of the live stack.
    static let modules = [
        "loop", "squashfs", "overlay", "isofs", "cdrom", "sr_mod", "sd_mod",
        "ahci", "ata_piix", "ata_generic", "pata_acpi", "usb_storage", "uas",
        "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd", "virtio_pci", "virtio_mmio",
        "virtio_blk", "virtio_scsi", "nvme", "vmw_pvscsi", "hv_storvsc", "mptspi", "megaraid_sas",
        "mpt3sas", "hpsa", "aacraid", "smartpqi", "nls_utf8", "vfat",
    ]

    func run(_ context: BuildContext, _ reporter: StageReporter) throws {
        let tree = context.initramfsTree
        let fm = FileManager.default
        for folder in ["bin", "dev", "proc", "sys", "run", "newroot", "lib/modules"] {
            try fm.createDirectory(atPath: tree + "/" + folder, withIntermediateDirectories: true)
        }
        // busybox-static from the profile's own root filesystem: same Debian, same version.
        let busybox = context.rootfs + "/bin/busybox"
        guard fm.fileExists(atPath: busybox),
            try context.run("readelf", ["-d", busybox]).stdoutText.contains("NEEDED") == false
        else {
            throw MartletError(
                .invalidInput,
                "\(context.profile.path): the live initramfs needs a static busybox in the root filesystem",
                hint: "add \"busybox-static\" to [debian] packages")
        }
        try fm.copyItem(atPath: busybox, toPath: tree + "/bin/busybox")

        let copied = try copyModules(context)
        reporter.note("\(copied) kernel modules")

        let template = try String(
            contentsOfFile: context.assets + "/initramfs/init", encoding: .utf8)
        let script = template
            .replacingOccurrences(of: "@LABEL@", with: context.profile.iso.label)
            .replacingOccurrences(of: "@VERSION@", with: context.profile.version)
            .replacingOccurrences(of: "@MODULES@", with: Self.modules.joined(separator: " "))
        try script.write(toFile: tree + "/init", atomically: false, encoding: .utf8)
        chmod(tree + "/init", 0o755)

        let boot = context.isoTree + "/boot"
        try fm.createDirectory(atPath: boot, withIntermediateDirectories: true)
        try CPIOWriter.write(tree: tree, to: boot + "/initrd.img", epoch: context.epoch)
        try fm.copyItem(
            atPath: context.rootfs + "/boot/vmlinuz-\(context.kernelVersion)",
            toPath: boot + "/vmlinuz")
        context.sizes["initrd.img"] = fileSize(boot + "/initrd.img")
        context.sizes["vmlinuz"] = fileSize(boot + "/vmlinuz")
    }

    /// Copies the wanted modules and everything they depend on (from modules.dep), then
    /// runs depmod so busybox's modprobe resolves them at boot.
    private func copyModules(_ context: BuildContext) throws -> Int {
        let version = context.kernelVersion
        let source = context.rootfs + "/lib/modules/\(version)"
        let target = context.initramfsTree + "/lib/modules/\(version)"
        let dependencies = try ModuleDependencies(
            modulesDep: try String(contentsOfFile: source + "/modules.dep", encoding: .utf8))
        let paths = dependencies.closure(of: Self.modules)
        for path in paths {
            let destination = target + "/" + path
            try FileManager.default.createDirectory(
                atPath: (destination as NSString).deletingLastPathComponent,
                withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: source + "/" + path, toPath: destination)
        }
        for file in ["modules.order", "modules.builtin", "modules.builtin.modinfo"]
        where FileManager.default.fileExists(atPath: source + "/" + file) {
            try FileManager.default.copyItem(atPath: source + "/" + file, toPath: target + "/" + file)
        }
        try context.run("depmod", ["-b", context.initramfsTree, version])
        return paths.count
    }
}

/// The module graph of `modules.dep`: `kernel/a/b.ko: kernel/c.ko kernel/d.ko`.
struct ModuleDependencies {
    /// Module name (with `-` written `_`) → its path and the paths it depends on.
    var modules: [String: (path: String, dependencies: [String])] = [:]

    init(modulesDep: String) throws {
        for line in modulesDep.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let path = String(line[..<colon])
            let dependencies = line[line.index(after: colon)...].split(separator: " ").map(String.init)
            modules[Self.name(ofPath: path)] = (path, dependencies)
        }
    }

    static func name(ofPath path: String) -> String {
        var base = (path as NSString).lastPathComponent
        for suffix in [".xz", ".zst", ".gz"] where base.hasSuffix(suffix) {
            base.removeLast(suffix.count)
        }
        if base.hasSuffix(".ko") { base.removeLast(3) }
        return base.replacingOccurrences(of: "-", with: "_")
    }

    /// Paths of `names` and of everything they need; names not found (built in, or
    /// trimmed) are skipped.
    func closure(of names: [String]) -> [String] {
        var byPath: [String: [String]] = [:]
        for (_, entry) in modules { byPath[entry.path] = entry.dependencies }
        var seen: Set<String> = []
        var stack = names.compactMap { modules[$0.replacingOccurrences(of: "-", with: "_")]?.path }
        while let path = stack.popLast() {
            guard seen.insert(path).inserted else { continue }
            stack.append(contentsOf: byPath[path] ?? [])
        }
        return seen.sorted()
    }
}
