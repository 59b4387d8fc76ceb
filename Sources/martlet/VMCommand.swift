import ArgumentParser
import Foundation
import Logging
import MartletCore
import MartletHost

struct VMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm",
        abstract: "Define, start, stop and reach the VMs of this host.",
        discussion: """
            Definitions live in /etc/martlet/vms/NAME.toml; /etc/martlet/README on a host \
            describes every key. A running VM is the systemd unit martlet-vm@NAME.service on a \
            host (logs: journalctl -u martlet-vm@NAME), or a directly spawned \
            'martlet vm run NAME' where systemd is not running.

            A first VM: a disk image imported into the pool "local", a kernel and initramfs \
            copied to the host, a NIC on br0:
              martlet volume import local/web-root debian-12-genericcloud-amd64.qcow2
              martlet vm create web --kernel /var/lib/martlet/kernels/vmlinuz \\
                --initrd /var/lib/martlet/kernels/initrd.img \\
                --cmdline "console=ttyS0 root=/dev/vda1" --disk local/web-root \\
                --nic br0 --memory 1GiB --autostart
              martlet vm start web && martlet vm console web

            A VM that boots its first disk like a PC (SeaBIOS from the seabios package runs \
            the disk's bootloader: GRUB in an MBR, a hybrid ISO, a cloud image); 'martlet vm \
            console' shows the firmware's and the bootloader's text:
              martlet vm create db --boot disk --disk local/db-root --nic br0
              martlet vm show db   # nothing to boot: "stopped (no bootable device)"
            """,
        subcommands: [
            VMCreateCommand.self, VMListCommand.self, VMShowCommand.self, VMStartCommand.self,
            VMStopCommand.self, VMRestartCommand.self, VMDeleteCommand.self, VMConsoleCommand.self,
            VMEditCommand.self, VMRunCommand.self, VMAutostartCommand.self,
        ])
}

struct VMCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Define a new VM (refused when the name is taken).",
        discussion: """
            Writes /etc/martlet/vms/NAME.toml and prints the definition, with the MACs it \
            generated (stable: from the VM's name and the NIC's index). Nothing starts until \
            'martlet vm start NAME'.
            """)

    @Argument(help: "The VM's name (a-z, 0-9, '-', '_').")
    var name: String

    @Option(help: "Virtual CPUs (1-64).")
    var vcpus = 1

    @Option(help: "Guest memory, e.g. 512MiB or 2GiB.")
    var memory = ByteSize.mib(256)

    @Option(
        help: ArgumentHelp(
            "How the VM starts: kernel (the VMM loads --kernel directly) or disk (the firmware boots the first --disk).",
            valueName: "kernel|disk"))
    var boot = VMDefinition.BootMode.kernel.rawValue

    @Option(
        help: ArgumentHelp(
            "Kernel (--boot kernel, required there): an absolute path or POOL/VOLUME.",
            valueName: "SOURCE"))
    var kernel: String?

    @Option(
        help: ArgumentHelp(
            "Initramfs (--boot kernel): an absolute path or POOL/VOLUME.", valueName: "SOURCE"))
    var initrd: String?

    @Option(help: "Kernel command line (--boot kernel).")
    var cmdline = VMDefinition.Boot.defaultCmdline

    @Option(
        help: ArgumentHelp(
            "BIOS image (--boot disk); default \(VMDefinition.defaultFirmware) (Debian package seabios).",
            valueName: "PATH"))
    var firmware: String?

    @Option(
        name: .customLong("disk"),
        help: ArgumentHelp("Attach an existing volume; repeatable.", valueName: "POOL/VOLUME[,ro]"))
    var disks: [String] = []

    @Option(
        name: .customLong("new-disk"),
        help: ArgumentHelp(
            "Create a volume and attach it; repeatable.", valueName: "POOL/VOLUME:SIZE"))
    var newDisks: [String] = []

    @Option(
        name: .customLong("nic"),
        help: ArgumentHelp(
            "A NIC on a bridge, MAC generated unless given, with N virtio-net queue pairs (default 1, at most 8); repeatable.",
            valueName: "BRIDGE[,mac=MAC][,queues=N]"))
    var nics: [String] = []

    @Flag(help: "Start the VM when the host boots.")
    var autostart = false

    @Option(help: "What a crash does: restart or stop.")
    var onCrash = "restart"

    @Flag(
        name: .customLong("no-jail"),
        help: "Start the VMM without its jail (namespaces, a root of its own, cgroup limits); writes jail = false. Debugging only.")
    var noJail = false

    @OptionGroup var cloudInit: CloudInitOptions

    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "vm create", json: options.json,
            { host -> VMStatus in
                func source(_ text: String, _ flag: String) throws -> VMDefinition.FileSource {
                    guard let source = VMDefinition.FileSource(parsing: text) else {
                        throw MartletError(
                            .invalidInput,
                            "--\(flag): '\(text)' is neither an absolute path nor POOL/VOLUME")
                    }
                    return source
                }
                guard let mode = VMDefinition.BootMode(rawValue: boot) else {
                    throw MartletError(.invalidInput, "--boot: '\(boot)' is not kernel or disk")
                }
                guard let policy = VMDefinition.CrashPolicy(rawValue: onCrash) else {
                    throw MartletError(
                        .invalidInput, "--on-crash: '\(onCrash)' is not restart or stop")
                }
                var attached: [VMDefinition.Disk] = []
                for text in disks {
                    let parts = text.split(separator: ",").map(String.init)
                    let reference = try VMHost.volumeReference(parts.first ?? "")
                    attached.append(
                        .init(
                            pool: reference.pool, volume: reference.volume,
                            readOnly: parts.dropFirst().contains("ro")))
                }
                var newVolumes: [VMHost.NewVolume] = []
                for text in newDisks {
                    guard let colon = text.lastIndex(of: ":"),
                        let size = ByteSize(parsing: String(text[text.index(after: colon)...]))
                    else {
                        throw MartletError(
                            .invalidInput, "--new-disk: '\(text)' is not POOL/VOLUME:SIZE",
                            hint: "e.g. local/\(name)-root:8GiB")
                    }
                    let reference = try VMHost.volumeReference(String(text[..<colon]))
                    newVolumes.append(
                        .init(pool: reference.pool, volume: reference.volume, size: size))
                    attached.append(.init(pool: reference.pool, volume: reference.volume))
                }
                let interfaces = try nics.enumerated().map { index, text -> VMDefinition.NIC in
                    let parts = text.split(separator: ",").map(String.init)
                    var mac = VMDefinition.generatedMAC(vm: name, index: index)
                    var queues: Int?
                    for option in parts.dropFirst() {
                        if option.hasPrefix("mac=") {
                            mac = String(option.dropFirst(4)).lowercased()
                        } else if option.hasPrefix("queues="), let count = Int(option.dropFirst(7)) {
                            queues = count
                        } else {
                            throw MartletError(
                                .invalidInput,
                                "--nic: unknown option '\(option)'; use BRIDGE[,mac=MAC][,queues=N]")
                        }
                    }
                    return VMDefinition.NIC(bridge: parts.first ?? "br0", mac: mac, queues: queues)
                }
                let definition = VMDefinition(
                    name: name, vcpus: vcpus, memory: memory,
                    boot: .init(
                        mode: mode, kernel: try kernel.map { try source($0, "kernel") },
                        initrd: try initrd.map { try source($0, "initrd") }, cmdline: cmdline,
                        firmware: firmware),
                    disks: attached, nics: interfaces, autostart: autostart, onCrash: policy,
                    cloudInit: try cloudInit.table(), jail: !noJail)
                return try host.create(definition, newVolumes: newVolumes)
            }, text: { "created VM '\($0.name)' (\(host(path: $0)))" })
    }

    func host(path status: VMStatus) -> String { VMHost().paths.definition(status.name) }
}

struct VMListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the VMs and their state.")
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "vm list", json: options.json, { try $0.statuses() },
            text: { statuses in
                table(
                    ["NAME", "STATE", "VCPUS", "MEMORY", "DISKS", "NICS", "AUTOSTART"],
                    statuses.map {
                        [
                            $0.name, $0.state.rawValue, "\($0.definition.vcpus)",
                            $0.definition.memory.description,
                            "\($0.definition.disks.count)", "\($0.definition.nics.count)",
                            $0.definition.autostart ? "yes" : "no",
                        ]
                    })
            })
    }
}

struct VMShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Show a VM's definition and state.")
    @Argument var name: String
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "vm show", json: options.json, { try $0.status(name) },
            text: { status in
                "state: \(status.state.rawValue)\(status.pid.map { " (runner pid \($0))" } ?? "")"
                    + (status.problem.map { " (\($0))" } ?? "") + "\n"
                    + "boot: \(bootSummary(status.definition.boot))\n" + status.definition.toml
            })
    }
}

/// "kernel /var/lib/…/vmlinuz" or "disk, firmware /usr/share/seabios/bios-microvm.bin".
func bootSummary(_ boot: VMDefinition.Boot) -> String {
    switch boot.mode {
    case .kernel: "kernel \(boot.kernel?.description ?? "(none)")"
    case .disk: "disk, firmware \(boot.firmwarePath)"
    }
}

struct VMStartCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start", abstract: "Start a stopped VM.")
    @Argument var name: String
    @Option(help: "Seconds to wait for the VMM to come up.") var timeout: Double = 15
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "vm start", json: options.json, { try $0.start(name, timeout: timeout) },
            text: {
                "started VM '\($0.name)' (runner pid \($0.pid.map(String.init) ?? "?"))"
            })
    }
}

struct VMStopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Stop a running VM (power button first with --grace).")
    @Argument var name: String
    @Option(
        help: "Seconds the guest gets to power off after the ACPI power button; 0 stops it at once."
    )
    var grace: Double = 0
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "vm stop", json: options.json, { try $0.stop(name, grace: grace) },
            text: {
                "stopped VM '\($0.name)'"
            })
    }
}

struct VMRestartCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restart", abstract: "Stop a VM (if running) and start it again.")
    @Argument var name: String
    @Option(help: "Seconds the guest gets to power off before it is stopped hard.") var grace:
        Double = 0
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "vm restart", json: options.json,
            { host -> VMStatus in
                if try host.isRunning(name) { _ = try host.stop(name, grace: grace) }
                return try host.start(name)
            }, text: { "restarted VM '\($0.name)'" })
    }
}

struct VMDeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a stopped VM (refused while it runs).")
    @Argument var name: String
    @Flag(help: "Also delete its disk volumes (those no other VM uses).") var volumes = false
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "vm delete", json: options.json,
            { host -> Done in
                try host.delete(name, volumes: volumes)
                return Done(message: "deleted VM '\(name)'")
            }, text: { $0.message })
    }
}

struct VMEditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edit",
        abstract:
            "Edit a stopped VM's definition in $EDITOR; the result is checked before it is saved.")
    @Argument var name: String
    @Option(
        help: ArgumentHelp(
            "Take the new definition from FILE instead of an editor ('-' for stdin).",
            valueName: "FILE"))
    var from: String?
    @OptionGroup var options: HostOptions

    func run() throws {
        try runHostCommand(
            "vm edit", json: options.json,
            { host -> VMDefinition in
                let current = try String(
                    contentsOfFile: host.paths.definition(name), encoding: .utf8)
                let text: String
                if let from {
                    let data =
                        from == "-"
                        ? FileHandle.standardInput.readDataToEndOfFile()
                        : FileManager.default.contents(atPath: from)
                    guard let data else { throw MartletError(.notFound, "cannot read '\(from)'") }
                    text = String(decoding: data, as: UTF8.self)
                } else {
                    let scratch = NSTemporaryDirectory() + "martlet-vm-\(name)-\(getpid()).toml"
                    try current.write(toFile: scratch, atomically: true, encoding: .utf8)
                    defer { unlink(scratch) }
                    let editor = ProcessInfo.processInfo.environment["EDITOR"] ?? "vi"
                    let status = system("\(editor) '\(scratch)'")
                    guard status == 0 else {
                        throw MartletError(
                            .failed,
                            "the editor '\(editor)' exited with status \(status); nothing changed")
                    }
                    text = try String(contentsOfFile: scratch, encoding: .utf8)
                }
                return try host.replace(name: name, toml: text)
            }, text: { "saved VM '\($0.name)'" })
    }
}

struct VMRunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a VM in the foreground (what martlet-vm@NAME.service executes).",
        shouldDisplay: false)
    @Argument var name: String

    func run() throws {
        MartletLogging.bootstrap(level: .info)
        let runner = VMRunner(
            host: VMHost(), name: name, logger: Logger(label: "martlet.vm.\(name)"))
        do {
            let status = try runner.run()
            if status != 0 { throw ExitCode(status) }
        } catch let error as MartletError {
            FileHandle.standardError.write(Data("martlet vm run: \(error.description)\n".utf8))
            throw ExitCode(error.code.exitStatus)
        }
    }
}

struct VMAutostartCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "autostart",
        abstract:
            "Start every VM with autostart = true (run at boot by martlet-vms-autostart.service).")
    @OptionGroup var options: HostOptions

    func run() throws {
        MartletLogging.bootstrap(level: .info)
        let logger = Logger(label: "martlet.autostart")
        try runHostCommand(
            "vm autostart", json: options.json, { $0.autostart(logger: logger) },
            text: { results in
                results.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(
                    separator: "\n")
            })
    }
}
