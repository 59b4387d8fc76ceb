import Foundation
import Logging
import MartletAnswer
import MartletCore

/// Executes an `InstallPlan`: wipe, partition, format, copy, configure, bootloader,
/// initramfs. Each stage reports begin/update/end to a `ProgressSink`; a failure names the
/// stage and carries the failing command's output, and everything mounted is unmounted.
/// `run()` is meant to be called once, from one thread (a front end's worker thread).
public final class Installer {
    public let plan: InstallPlan
    let progress: any ProgressSink
    let logger: Logger
    /// The live system's install log, copied onto the target at the end.
    let logFile: String?
    /// Where the target's root filesystem is mounted during the install.
    public private(set) var targetRoot = ""
    private var mounts: [String] = []

    public static let stageNames = [
        "wipe", "partition", "format", "mount", "copy", "configure", "network", "storage",
        "bootloader", "initramfs", "finish",
    ]

    public init(
        plan: InstallPlan, progress: any ProgressSink = SilentProgress(),
        logger: Logger = Logger(label: "martlet.installer"), logFile: String? = nil
    ) {
        self.plan = plan
        self.progress = progress
        self.logger = logger
        self.logFile = logFile
    }

    /// Checks what the plan needs from this machine and the source tree; writes nothing.
    public static func preflight(_ plan: InstallPlan) throws {
        try Privilege.requireRoot(for: "installing onto a disk")
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: plan.source, isDirectory: &isDirectory),
            isDirectory.boolValue
        else {
            throw MartletError(
                .notFound, "the source root filesystem '\(plan.source)' does not exist",
                hint:
                    "pass --source DIR, or boot the Martlet live system (it mounts it at \(InstallPlan.defaultSource))"
            )
        }
        for required in ["etc", "usr", "boot"]
        where !FileManager.default.fileExists(atPath: "\(plan.source)/\(required)") {
            throw MartletError(
                .invalidInput,
                "'\(plan.source)' does not look like a root filesystem: no /\(required)")
        }
        let catalog = HostCatalog(root: plan.source)
        if let problem = catalog.timezoneProblem(plan.answer.global.timezone) {
            throw MartletError(
                .invalidInput, "global.timezone: \(problem)",
                hint: "use a name from \(catalog.zoneinfo), e.g. \"UTC\" or \"Europe/Paris\"")
        }
        // A layout the image lacks would leave the console on the kernel's default keymap.
        if catalog.hasKeyboardLayouts, let problem = catalog.keyboardProblem(plan.answer.global.keyboard) {
            throw MartletError(
                .invalidInput, "global.keyboard: \(problem)",
                hint: "use a layout listed in \(catalog.keyboardRules), e.g. \"us\" or \"de\"")
        }
        var tools = [
            "wipefs", "mkfs.vfat", "mkfs.ext4", "mount", "umount", "chroot", "sync", "blkid",
        ]
        if plan.answer.disk.swapSize != nil { tools.append("mkswap") }
        if plan.pools.contains(where: { $0.type == .lvmThin }) {
            tools += ["pvcreate", "vgcreate", "lvcreate"]
        }
        if plan.answer.disk.filesystem == .xfs
            && plan.pools.contains(where: { $0.type == .directory })
        {
            tools.append("mkfs.xfs")
        }
        if !kernelSupports("vfat") { tools.append("mcopy") }
        if plan.raid != nil { tools += ["mdadm", "dd"] }
        try Tool.require(tools)
        if plan.raid != nil && !mdAvailable() {
            throw MartletError(
                .missingDependency,
                "disk.raid: this kernel has no md driver (no /proc/mdstat after modprobe raid1)",
                hint: "boot a kernel with md RAID (CONFIG_MD_RAID1), or install on one disk with target = \"...\"")
        }
        if plan.pools.contains(where: { $0.type == .lvmThin }) && !deviceMapperAvailable() {
            throw MartletError(
                .missingDependency,
                "storage.type: \"lvm-thin\" needs the kernel's device-mapper, and /dev/mapper/control is missing",
                hint:
                    "load dm_mod and dm_thin_pool (modprobe), or use [storage] type = \"directory\""
            )
        }
        if !FileManager.default.fileExists(atPath: "\(plan.source)/usr/sbin/grub-install") {
            throw MartletError(
                .missingDependency, "the host root filesystem '\(plan.source)' has no grub-install",
                hint:
                    "the host image needs the package grub2-common (with grub-pc-bin and grub-efi-amd64-bin)"
            )
        }
    }

    /// Whether the kernel has md with the RAID1 personality (loading the modules when needed).
    static func mdAvailable() -> Bool {
        _ = try? Command("modprobe", ["-q", "raid1"]).runAllowingFailure()
        return FileManager.default.fileExists(atPath: "/proc/mdstat")
    }

    /// Whether the kernel's device-mapper has the thin-pool target (loading the modules when
    /// needed). /dev/mapper/control alone proves nothing: LVM creates the node itself.
    static func deviceMapperAvailable() -> Bool {
        _ = try? Command("modprobe", ["-q", "dm_thin_pool"]).runAllowingFailure()
        guard let targets = try? Command("dmsetup", ["targets"]).runAllowingFailure(),
            targets.status == 0
        else { return false }
        return targets.stdoutText.split(separator: "\n").contains { $0.hasPrefix("thin-pool") }
    }

    /// Runs every stage; on failure unmounts what it mounted and rethrows naming the stage.
    public func run() throws {
        try Self.preflight(plan)
        // Read (or fetched) before any disk is written: a missing script stops nothing half-way.
        firstBootScript = try plan.answer.firstBoot.map { try FirstBootHook.script($0) }
        let stages: [(String, () throws -> Void)] = [
            ("wipe", wipe), ("partition", partition), ("format", format), ("mount", mountTarget),
            ("copy", copySystem), ("configure", configure), ("network", writeNetwork),
            ("storage", writeStorage), ("bootloader", installBootloader),
            ("initramfs", keepInitramfs), ("finish", finish),
        ]
        let started = Date()
        for (index, (name, body)) in stages.enumerated() {
            let reporter = StageReporter(
                sink: progress, stage: name, index: index + 1, count: stages.count)
            reporter.begin()
            logger.info("stage \(name) started")
            do {
                currentReporter = reporter
                try body()
            } catch {
                logger.error("stage \(name) failed: \(error)")
                unmountAll()
                let inner = error as? MartletError
                throw MartletError(
                    inner?.code ?? .failed,
                    "install step '\(name)' failed: \(inner?.message ?? "\(error)")",
                    hint: inner?.hint ?? "the install log has every command run",
                    cause: inner?.cause)
            }
            reporter.end()
            logger.info("stage \(name) finished in \(String(format: "%.1f", reporter.elapsed)) s")
        }
        logger.info("install finished in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }

    private var currentReporter: StageReporter?
    private var firstBootScript: Data?

    private func run(_ executable: String, _ arguments: [String], input: Data? = nil) throws {
        logger.info("run: \(executable) \(arguments.joined(separator: " "))")
        try Command(executable, arguments).run(input: input, logger: logger)
    }

    private func runOutput(_ executable: String, _ arguments: [String]) throws -> String {
        try Command(executable, arguments).run(logger: logger).stdoutText
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func chroot(_ arguments: [String], input: Data? = nil) throws {
        try run("chroot", [targetRoot] + arguments, input: input)
    }

    private var allDisks: [Disk] { plan.targets + plan.extraDisks }

    // MARK: - wipe

    private func wipe() throws {
        for disk in allDisks {
            let devices = disk.partitions.map(\.path) + [disk.path]
            // Deactivate old volume groups first, or the kernel keeps holding the partitions.
            var groups = Set<String>()
            for device in devices where FileManager.default.fileExists(atPath: device) {
                let result = try? Command(
                    "pvs", ["--noheadings", "-o", "vg_name", device]
                ).runAllowingFailure()
                if let name = result?.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines),
                    !name.isEmpty
                {
                    groups.insert(name)
                }
            }
            // Without device-mapper nothing can be active, and vgchange would only fail.
            if Self.deviceMapperAvailable() {
                for group in groups.sorted() { try run("vgchange", ["-an", group]) }
            }
            for device in devices where FileManager.default.fileExists(atPath: device) {
                try run("wipefs", ["--all", "--force", device])
            }
            currentReporter?.note("wiped \(disk.path)")
        }
    }

    // MARK: - partition

    private func partition() throws {
        // A mirror's disks get the same table (the layout of the smallest of them).
        for disk in plan.targets { try GPTWriter.write(plan.layout, to: disk.path) }
        for (index, disk) in plan.extraDisks.enumerated() {
            let end = (disk.size.bytes / PartitionLayout.alignment - 1) * PartitionLayout.alignment
            let content =
                plan.pools[index + 1].type == .lvmThin
                ? "lvm" : plan.answer.disk.filesystem.rawValue
            let layout = PartitionLayout(
                diskSize: disk.size,
                entries: [
                    .init(
                        number: 1, role: .storage, name: "storage",
                        start: PartitionLayout.alignment,
                        size: ByteSize(end - PartitionLayout.alignment),
                        typeGUID: content == "lvm"
                            ? PartitionLayout.GUID.lvm : PartitionLayout.GUID.linuxData,
                        content: content)
                ])
            try GPTWriter.write(layout, to: disk.path)
        }
        _ = try? Command("udevadm", ["settle", "--timeout=10"]).runAllowingFailure()
        for disk in plan.targets {
            for entry in plan.layout.entries { try waitForDevice(disk.partitionPath(entry.number)) }
        }
        for disk in plan.extraDisks { try waitForDevice(disk.partitionPath(1)) }
        if let raid = plan.raid { try createArrays(raid) }
    }

    /// The md arrays over the new partitions. Old signatures on a member (an earlier install
    /// with the same layout leaves its md superblocks exactly where the new partitions start)
    /// are wiped first, so mdadm neither asks nor reuses them.
    private func createArrays(_ raid: InstallPlan.Raid) throws {
        for array in raid.arrays {
            for member in array.members { try run("wipefs", ["--all", "--force", member]) }
            try run("mdadm", InstallPlan.mdadmCreateArguments(array, level: raid.level))
            try waitForDevice(array.device)
            currentReporter?.note(
                "\(raid.level.rawValue) \(array.device) (\(array.role.rawValue)) over "
                    + array.members.joined(separator: ", "))
        }
    }

    private func waitForDevice(_ path: String) throws {
        for attempt in 0..<100 {
            if FileManager.default.fileExists(atPath: path) { return }
            // Some kernels ignore a whole-table re-read on loop devices: add partitions one by one.
            if attempt == 10 {
                let disk = allDisks.first { path.hasPrefix($0.path) }?.path ?? plan.target.path
                _ = try? Command("partx", ["--update", disk]).runAllowingFailure()
            }
            usleep(100_000)
        }
        throw MartletError(.failed, "the partition \(path) did not appear after partitioning")
    }

    // MARK: - format

    /// The device holding a role: an md array with RAID, else the target's partition (the
    /// ESP and BIOS boot partition are always the target's; mirrors get copies).
    private func device(_ role: PartitionLayout.Role) -> String { plan.device(role)! }

    private func format() throws {
        // Every disk's ESP now, with one serial; GRUB fills the first, finish() copies it.
        for esp in plan.espDevices { try run("mkfs.vfat", espMirror.formatArguments(esp)) }
        try run("mkfs.ext4", ["-q", "-F", "-L", "martlet-root", device(.root)])
        if plan.layout.entry(.swap) != nil {
            try run("mkswap", ["-L", "martlet-swap", device(.swap)])
        }
        for pool in plan.pools {
            switch pool.type {
            case .lvmThin:
                let group = pool.volumeGroup!
                try run("pvcreate", ["-ff", "-y", pool.device])
                try run("vgcreate", ["-y", group, pool.device])
                // Leave room for the thin pool's metadata and its spare.
                try run(
                    "lvcreate",
                    ["-y", "--type", "thin-pool", "-l", "95%FREE", "-n", pool.thinPool!, group])
            case .directory:
                if pool.filesystem == "xfs" {
                    try run("mkfs.xfs", ["-q", "-f", "-L", "pool-\(pool.name)", pool.device])
                } else {
                    try run("mkfs.ext4", ["-q", "-F", "-L", "pool-\(pool.name)", pool.device])
                }
            }
            currentReporter?.note("storage pool \(pool.name) on \(pool.device)")
        }
    }

    // MARK: - mount

    private func mountTarget() throws {
        targetRoot = try Self.temporaryDirectory("/tmp/martlet-target")
        try mount(device(.root), at: targetRoot)
        try FileManager.default.createDirectory(
            atPath: "\(targetRoot)/boot/efi", withIntermediateDirectories: true)
        if Self.kernelSupports("vfat") {
            try mount(device(.esp), at: "\(targetRoot)/boot/efi")
        } else {
            espStaged = true
            currentReporter?.note(
                "this kernel cannot mount vfat: the ESP is filled with mtools after GRUB")
        }
    }

    /// The ESP's files are staged in the target's /boot/efi and copied with mtools, for
    /// kernels without vfat.
    private var espStaged = false

    static func kernelSupports(_ filesystem: String) -> Bool {
        func listed() -> Bool {
            let text = (try? String(contentsOfFile: "/proc/filesystems", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").contains {
                $0.split(separator: "\t").last == Substring(filesystem)
            }
        }
        if listed() { return true }
        _ = try? Command("modprobe", ["-q", filesystem]).runAllowingFailure()
        return listed()
    }

    private func copyStagedESP() throws {
        let staged = "\(targetRoot)/boot/efi"
        for item in try FileManager.default.contentsOfDirectory(atPath: staged).sorted() {
            try run("mcopy", ["-s", "-o", "-Q", "-i", device(.esp), "\(staged)/\(item)", "::/"])
            try FileManager.default.removeItem(atPath: "\(staged)/\(item)")
        }
    }

    /// A new directory `prefix.XXXXXX` from mkdtemp(3).
    static func temporaryDirectory(_ prefix: String) throws -> String {
        var template = Array("\(prefix).XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { buffer in
            mkdtemp(buffer.baseAddress!).map { String(cString: $0) }
        }
        guard let created else { throw MartletError.system("mkdtemp", path: prefix) }
        return created
    }

    private func mount(_ source: String, at path: String, options: [String] = []) throws {
        try run("mount", options + [source, path])
        mounts.append(path)
    }

    private func unmountAll() {
        for path in mounts.reversed() {
            if (try? Command("umount", [path]).run(logger: logger)) == nil {
                _ = try? Command("umount", ["-l", path]).runAllowingFailure()
            }
        }
        mounts.removeAll()
        if !targetRoot.isEmpty { try? FileManager.default.removeItem(atPath: targetRoot) }
    }

    // MARK: - copy

    private func copySystem() throws {
        let total = try SystemCopy.measure(plan.source)
        currentReporter?.note("\(total.files) files, \(ByteSize(total.bytes))")
        let reporter = currentReporter
        let copied = try SystemCopy.copy(from: plan.source, to: targetRoot) { done in
            reporter?.update(
                completed: done.bytes, total: total.bytes, unit: "bytes",
                message: "\(done.files)/\(total.files) files")
        }
        // "Copied" means on the disk: flush the target filesystem inside this stage.
        try run("sync", ["--file-system", targetRoot])
        logger.info("copied \(copied.files) files, \(copied.bytes) bytes")
    }

    // MARK: - configure

    private func write(_ relative: String, _ text: String, mode: Int = 0o644) throws {
        let path = "\(targetRoot)/\(relative)"
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) != nil {
            try FileManager.default.removeItem(atPath: path)
        }
        guard
            FileManager.default.createFile(
                atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
        else {
            throw MartletError.system("open", path: path)
        }
        logger.info("wrote \(relative)")
    }

    private func uuid(_ device: String) throws -> String {
        try runOutput("blkid", ["-p", "-s", "UUID", "-o", "value", device])
    }

    private func configure() throws {
        let global = plan.answer.global
        var fstab = "# /etc/fstab: written by martlet-installer; filesystems by UUID.\n"
        fstab += "UUID=\(try uuid(device(.root)))\t/\text4\terrors=remount-ro\t0\t1\n"
        // The ESP is needed only when GRUB is updated, so a late or missing one must not stop
        // the boot: without `nofail` a slow udev (seen under TCG, the by-uuid link after the
        // 90-s device timeout) sends the host to emergency mode with no network to repair it.
        fstab += "UUID=\(try uuid(device(.esp)))\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2\n"
        if plan.layout.entry(.swap) != nil {
            fstab += "UUID=\(try uuid(device(.swap)))\tnone\tswap\tsw\t0\t0\n"
        }
        for pool in plan.pools where pool.type == .directory {
            fstab +=
                "UUID=\(try uuid(pool.device))\t\(pool.path!)\t\(pool.filesystem!)\tdefaults\t0\t2\n"
            try FileManager.default.createDirectory(
                atPath: targetRoot + pool.path!, withIntermediateDirectories: true)
        }
        try write("etc/fstab", fstab)
        if plan.raid != nil { try writeMdadmConf() }

        let short = global.hostname.split(separator: ".").first.map(String.init) ?? global.hostname
        try write("etc/hostname", short + "\n")
        let names = global.hostname == short ? short : "\(global.hostname) \(short)"
        try write(
            "etc/hosts",
            "127.0.0.1\tlocalhost\n127.0.1.1\t\(names)\n\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                + "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")

        switch global.rootPassword {
        case .plain(let password): try chroot(["chpasswd"], input: Data("root:\(password)\n".utf8))
        case .hashed(let hash): try chroot(["chpasswd", "-e"], input: Data("root:\(hash)\n".utf8))
        case nil: logger.info("no root password: login by SSH key only")
        }
        if !global.rootSSHKeys.isEmpty {
            try FileManager.default.createDirectory(
                atPath: "\(targetRoot)/root/.ssh", withIntermediateDirectories: true,
                attributes: [.posixPermissions: 0o700])
            try write(
                "root/.ssh/authorized_keys", global.rootSSHKeys.joined(separator: "\n") + "\n",
                mode: 0o600)
        }

        let localtime = "\(targetRoot)/etc/localtime"
        try? FileManager.default.removeItem(atPath: localtime)
        try FileManager.default.createSymbolicLink(
            atPath: localtime, withDestinationPath: "/usr/share/zoneinfo/\(global.timezone)")
        try write("etc/timezone", global.timezone + "\n")

        let keyboard = global.keyboard.split(separator: ":", maxSplits: 1).map(String.init)
        try write(
            "etc/default/keyboard",
            "# written by martlet-installer\nXKBMODEL=\"pc105\"\nXKBLAYOUT=\"\(keyboard[0])\"\n"
                + "XKBVARIANT=\"\(keyboard.count > 1 ? keyboard[1] : "")\"\nXKBOPTIONS=\"\"\nBACKSPACE=\"guess\"\n"
        )

        // An empty machine-id makes systemd create a fresh one on first boot.
        try write("etc/machine-id", "", mode: 0o444)
        try? FileManager.default.removeItem(atPath: "\(targetRoot)/var/lib/dbus/machine-id")

        if let firstBoot = plan.answer.firstBoot, let firstBootScript {
            try FirstBootHook.install(script: firstBootScript, at: firstBoot.at, into: targetRoot)
            logger.info("first-boot hook \(firstBoot.script) installed, runs at \(firstBoot.at.rawValue)")
        }
    }

    /// The arrays as `mdadm --detail --brief` describes them, for the installed host's
    /// mdadm (monitoring, assembly after boot). The generic initramfs does not need it: it
    /// assembles by scanning.
    private func writeMdadmConf() throws {
        var conf =
            "# /etc/mdadm/mdadm.conf: written by martlet-installer\n"
            + "# arrays were created with homehost 'any': any host assembles them under their names\n"
            + "HOMEHOST <ignore>\nMAILADDR root\n"
        for array in plan.raid?.arrays ?? [] {
            conf += try runOutput("mdadm", ["--detail", "--brief", array.device]) + "\n"
        }
        try write("etc/mdadm/mdadm.conf", conf)
    }

    // MARK: - network

    private func writeNetwork() throws {
        let files = NetworkConfiguration(answer: plan.answer.network, ports: plan.ports).files
        for (name, text) in files { try write("etc/systemd/network/\(name)", text) }
        let wants = "\(targetRoot)/etc/systemd/system/multi-user.target.wants"
        try FileManager.default.createDirectory(atPath: wants, withIntermediateDirectories: true)
        let unit = "/lib/systemd/system/systemd-networkd.service"
        if FileManager.default.fileExists(atPath: targetRoot + unit),
            !FileManager.default.fileExists(atPath: "\(wants)/systemd-networkd.service")
        {
            try FileManager.default.createSymbolicLink(
                atPath: "\(wants)/systemd-networkd.service", withDestinationPath: unit)
        }
    }

    // MARK: - storage

    private func writeStorage() throws {
        try write(
            "etc/martlet/storage.toml",
            StorageConfiguration(pools: plan.pools.map(\.configuration)).toml)
    }

    // MARK: - bootloader

    private func bindSystemDirectories() throws {
        for directory in ["dev", "proc", "sys", "run"] {
            let path = "\(targetRoot)/\(directory)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            try mount("/\(directory)", at: path, options: ["--bind"])
        }
        if FileManager.default.fileExists(atPath: "/sys/firmware/efi/efivars") {
            try mount(
                "efivarfs", at: "\(targetRoot)/sys/firmware/efi/efivars",
                options: ["-t", "efivarfs"])
        }
    }

    private func installBootloader() throws {
        try bindSystemDirectories()
        for arguments in plan.grubInstallArguments {
            try chroot(arguments)
            currentReporter?.note("GRUB (BIOS) on \(arguments.last!)")
        }
        let rootUUID = try uuid(device(.root))
        try installEFIImages(rootUUID: rootUUID)
        if espStaged { try copyStagedESP() }
        let version = try kernelVersion()
        try write(
            "boot/grub/grub.cfg",
            BootConfiguration.grubConfig(
                rootUUID: rootUUID, kernelVersion: version, raid: plan.raid != nil))
        try write(
            "etc/default/grub.d/martlet.cfg",
            "GRUB_CMDLINE_LINUX=\"\(BootConfiguration.kernelArguments)\"\nGRUB_TERMINAL=\"console serial\"\n"
                + "GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\n")
    }

    /// The version of the newest kernel in the copied system: the one GRUB boots.
    private func kernelVersion() throws -> String {
        let kernels =
            ((try? FileManager.default.contentsOfDirectory(atPath: "\(targetRoot)/boot")) ?? [])
            .filter { $0.hasPrefix("vmlinuz-") }.sorted()
        guard let kernel = kernels.last else {
            throw MartletError(.failed, "no kernel (/boot/vmlinuz-*) in the copied system")
        }
        return String(kernel.dropFirst("vmlinuz-".count))
    }

    /// GRUB for UEFI, built with grub-mkimage the way `grub-install --no-nvram` does it (an
    /// image that finds the root filesystem by UUID and loads its modules from /boot/grub),
    /// written both as EFI/martlet/grubx64.efi and at the removable path EFI/BOOT/BOOTX64.EFI.
    /// No NVRAM boot entry is written: the removable path boots on any firmware, and the
    /// firmware of the target machine is not the live system's to change.
    private func installEFIImages(rootUUID: String) throws {
        let modules = "\(targetRoot)/usr/lib/grub/x86_64-efi"
        guard FileManager.default.fileExists(atPath: modules) else {
            throw MartletError(
                .missingDependency, "the host root filesystem has no /usr/lib/grub/x86_64-efi",
                hint: "the host image needs grub-efi-amd64-bin")
        }
        let grubDir = "\(targetRoot)/boot/grub/x86_64-efi"
        try? FileManager.default.removeItem(atPath: grubDir)
        try FileManager.default.createDirectory(atPath: grubDir, withIntermediateDirectories: true)
        for file in try FileManager.default.contentsOfDirectory(atPath: modules)
        where file.hasSuffix(".mod") || file.hasSuffix(".lst") {
            try FileManager.default.copyItem(
                atPath: "\(modules)/\(file)", toPath: "\(grubDir)/\(file)")
        }
        try write(
            "boot/grub/x86_64-efi/load.cfg",
            "search.fs_uuid \(rootUUID) root\nset prefix=($root)'/boot/grub'\n")
        for (directory, name) in [("EFI/martlet", "grubx64.efi"), ("EFI/BOOT", "BOOTX64.EFI")] {
            try FileManager.default.createDirectory(
                atPath: "\(targetRoot)/boot/efi/\(directory)", withIntermediateDirectories: true)
            try chroot([
                "grub-mkimage", "--format=x86_64-efi", "--directory=/usr/lib/grub/x86_64-efi",
                "--config=/boot/grub/x86_64-efi/load.cfg", "--prefix=",
                "--output=/boot/efi/\(directory)/\(name)",
                "part_gpt", "part_msdos", "ext2", "fat", "search_fs_uuid",
            ] + (plan.raid != nil ? ["mdraid1x"] : []))
        }
    }

    // MARK: - initramfs

    /// The host image carries a generic initramfs, built once when the image was built (every
    /// storage controller, md RAID, LVM, ext4; root found by UUID), and the copy put it on the
    /// target: keeping it saves minutes, most of an install under emulation. Only an image
    /// without one (a custom profile that trims it) gets one generated on the target.
    private func keepInitramfs() throws {
        let version = try kernelVersion()
        let initrd = "\(targetRoot)/boot/initrd.img-\(version)"
        let size =
            ((try? FileManager.default.attributesOfItem(atPath: initrd))?[.size] as? NSNumber)?
            .uint64Value ?? 0
        if size > 0 {
            currentReporter?.note("kept the host image's generic initramfs (\(ByteSize(size)))")
            logger.info("kept /boot/initrd.img-\(version) from the host image (\(size) bytes)")
            return
        }
        currentReporter?.note(
            "the host image has no /boot/initrd.img-\(version): generating one on the target")
        try chroot(["update-initramfs", "-c", "-k", version])
    }

    // MARK: - finish

    private func finish() throws {
        if let logFile, FileManager.default.fileExists(atPath: logFile) {
            try FileManager.default.createDirectory(
                atPath: "\(targetRoot)/var/log/martlet", withIntermediateDirectories: true)
            let destination = "\(targetRoot)/var/log/martlet/install.log"
            try? FileManager.default.removeItem(atPath: destination)
            try FileManager.default.copyItem(atPath: logFile, toPath: destination)
        }
        try run("sync", [])
        let mounted = mounts
        mounts.removeAll()
        for path in mounted.reversed() { try run("umount", [path]) }
        try? FileManager.default.removeItem(atPath: targetRoot)
        for pool in plan.pools where pool.type == .lvmThin && Self.deviceMapperAvailable() {
            try run("vgchange", ["-an", pool.volumeGroup!])
        }
        try copyESP()
        for array in plan.raid?.arrays ?? [] { try run("mdadm", ["--stop", array.device]) }
        try run("sync", [])
    }

    /// The first disk's ESP files onto every mirror's ESP (formatted with the same serial):
    /// the firmware finds GRUB on whichever disk is left, and fstab's UUID= mounts
    /// /boot/efi from either. Runs once the ESP is unmounted.
    private func copyESP() throws {
        let esps = plan.espDevices
        guard let source = esps.first, esps.count > 1 else { return }
        let scratch = try Self.temporaryDirectory("/tmp/martlet-esp")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        for destination in esps.dropFirst() {
            try ESPMirror.copyFiles(from: source, to: destination, scratch: scratch) {
                try run($0, $1)
            }
            currentReporter?.note("ESP files copied to \(destination)")
        }
    }

    /// The volume serial every ESP of this install gets.
    private let espMirror = ESPMirror()

    /// Reboots or powers off as the answer asks (`none` returns).
    public static func conclude(_ mode: AnswerFile.RebootMode) throws {
        switch mode {
        case .none: return
        case .reboot: try Command("systemctl", ["reboot"]).run()
        case .poweroff: try Command("systemctl", ["poweroff"]).run()
        }
    }
}
