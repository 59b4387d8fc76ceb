import MartletSystem
import MartletValidation
import MartletVMM
import MartletVMMProtocol

#if canImport(Glibc)
    import Glibc
#endif

let version = "0.1.0"

let usage = """
    USAGE: martlet-vmm [--config FILE] [options]
           martlet-vmm selftest [--json] [--verbose]
           martlet-vmm check [--json] [--cpuid]
           martlet-vmm control SOCKET COMMAND
           martlet-vmm --version | --help

    Runs one KVM virtual machine: boots a Linux bzImage (or ELF vmlinux) through the 64-bit
    boot protocol, or a BIOS (--firmware) that boots the first disk, with a serial console
    and virtio-mmio devices.

    OPTIONS (override the same fields of --config):
      --config FILE            JSON configuration (see README: vcpus, memory_mib, kernel, ...)
      --kernel PATH            bzImage or ELF vmlinux
      --initrd PATH            initramfs
      --firmware PATH          boot a BIOS image instead of a kernel (SeaBIOS: Debian's
                               /usr/share/seabios/bios-microvm.bin), which boots the first disk
      --cmdline TEXT           kernel command line (default "console=ttyS0")
      --vcpus N                number of vCPUs (1-64, default 1)
      --memory MIB             guest RAM in MiB (default 256)
      --disk PATH[,ro][,id=ID][,queues=N][,cache=writeback|none]
                               add a virtio-blk disk (raw file or block device) with N request
                               queues (default one per vCPU, at most 16); cache=none bypasses
                               the host's page cache (O_DIRECT); repeatable
      --net TAP[,mac=MAC][,queues=N]
                               add a virtio-net device on a tap (created if missing) with N
                               queue pairs (default 1, at most 8; more than 1 needs a tap made
                               with multi_queue); repeatable
      --rng                    add a virtio-rng device
      --serial WHERE           stdout (default; stdin is the console input), none, file:PATH,
                               or socket:PATH (a unix socket: output to the client, input from it)
      --serial-log PATH        also append the serial output to this file
      --on-reboot POLICY       exit (default) or restart, when the guest resets
      --control-socket PATH    serve the JSON control API on this unix socket
      --ap-start MODE          sipi (default, like a PC) or entry (all vCPUs at the entry point)
      --timeout SECONDS        stop the VM after this long (exit code 1)
      --trace-io               log unhandled ports and MMIO pages (once each) and the
                               firmware's debug port (0x402, SeaBIOS's log) on stderr
      --stats                  print exit statistics as JSON on stderr when the VM ends
      --spawned-at NS          CLOCK_MONOTONIC nanoseconds when the spawner started this
                               process (before its jail), reported as spawn_ns by --stats
      --cgroup-joined-fd FD    wait, before creating the VM, until FD yields "1": the
                               spawner has moved this process into its cgroups (the runner's
                               jail); end if it closes without it
      --seccomp MODE           on (default): a syscall outside a thread's allow-list ends the
                               VMM with SIGSYS, naming the syscall on stderr; log: only log it
                               (kernel audit log, dmesg); off: no filters (debugging only)
      -h, --help               show this help
      --version                show the version

    SUBCOMMANDS:
      selftest                 boot the built-in test guest (serial, virtio-blk round trip,
                               power-off); prints PASS/FAIL; exit 0 when it passes
      check                    check that KVM is usable here (device, permission, capabilities);
                               --cpuid also lists KVM_GET_SUPPORTED_CPUID
      control SOCKET COMMAND   send info, state, pause, resume, shutdown or stop to a running
                               VM's control socket and print the JSON reply (exit 1 if not ok)

    EXIT CODES:
      0 guest powered off (or shut down through the control socket), selftest passed
      1 VMM error or guest crash (reason on stderr), selftest failed
      2 bad arguments or configuration
      3 guest reset with on_reboot "exit"
      4 stopped through the control socket ("stop") or by SIGTERM
      5 this host cannot run VMs: /dev/kvm missing, not permitted, or lacking a capability
      6 no bootable device: the firmware found nothing to boot on the disks (--firmware)

    """

func fail(_ message: String, code: VMMExitCode) -> Never {
    let text = "martlet-vmm: \(message)\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
    exit(code.rawValue)
}

func say(_ text: String) {
    _ = (text + "\n").withCString { write(1, $0, strlen($0)) }
}

let startNanoseconds = ChildProcess.monotonicNanoseconds()
StartupTrace.mark("main", at: startNanoseconds)
let arguments = Array(CommandLine.arguments.dropFirst())

func selftest(_ arguments: [String]) -> Never {
    var json = false
    var verbose = false
    for argument in arguments {
        switch argument {
        case "--json": json = true
        case "--verbose", "-v": verbose = true
        case "-h", "--help":
            say("USAGE: martlet-vmm selftest [--json] [--verbose]\n\nBoots the built-in 64-bit test guest: serial output, a virtio-blk round trip on a temporary file, power-off.")
            exit(0)
        default: fail("selftest: unknown argument '\(argument)'; see 'martlet-vmm selftest --help'", code: .badConfig)
        }
    }
    do {
        let report = try Selftest.run()
        if json {
            say(JSON.object([
                ("passed", .bool(report.passed)),
                ("exit", .string(report.exit)),
                ("milliseconds", .number(report.milliseconds.rounded())),
                ("checks", .array(report.checks.map { .object([("name", .string($0.name)), ("passed", .bool($0.passed))]) })),
                ("serial", .string(report.serial)),
            ]).text)
        } else {
            if verbose { say(report.serial) }
            for check in report.checks { say("\(check.passed ? "ok  " : "FAIL") \(check.name)") }
            say("\(report.passed ? "PASS" : "FAIL") martlet-vmm selftest (\(Int(report.milliseconds)) ms)")
        }
        exit((report.passed ? VMMExitCode.powerOff : .failed).rawValue)
    } catch {
        fail("selftest: \(error)", code: .failed)
    }
}

func check(_ arguments: [String]) -> Never {
    let json = arguments.contains("--json")
    do {
        let system = try KVMSystem()
        let cpuid = try system.supportedCPUID()
        if arguments.contains("--cpuid") {
            func hex(_ value: UInt32) -> String {
                let digits = String(value, radix: 16)
                return String(repeating: "0", count: 8 - digits.count) + digits
            }
            for entry in cpuid {
                say("cpuid \(hex(entry.function)).\(entry.index): eax=\(hex(entry.eax)) ebx=\(hex(entry.ebx)) ecx=\(hex(entry.ecx)) edx=\(hex(entry.edx))")
            }
        }
        if json {
            say(JSON.object([("ok", .bool(true)), ("cpuid_entries", .number(Double(cpuid.count)))]).text)
        } else {
            say("ok: /dev/kvm is usable (API 12, irqchip, PIT2, \(cpuid.count) CPUID entries)")
        }
        exit(0)
    } catch {
        if json { say(JSON.object([("ok", .bool(false)), ("error", .string("\(error)"))]).text) }
        fail("\(error)", code: .failed)
    }
}

func controlClient(_ arguments: [String]) -> Never {
    guard arguments.count == 2 else { fail("control: usage: martlet-vmm control SOCKET COMMAND", code: .badConfig) }
    do {
        guard let request = ControlRequest(rawValue: arguments[1]) else {
            let names = ControlRequest.allCases.map(\.rawValue).joined(separator: ", ")
            fail("control: unknown command '\(arguments[1])'; use \(names)", code: .failed)
        }
        let reply = try ControlClient.send(request, to: arguments[0])
        say(reply.json.text)
        exit(reply.ok ? VMMExitCode.powerOff.rawValue : VMMExitCode.failed.rawValue)
    } catch {
        fail("control: \(error)", code: .failed)
    }
}

switch arguments.first {
case "selftest": selftest(Array(arguments.dropFirst()))
case "control": controlClient(Array(arguments.dropFirst()))
case "check": check(Array(arguments.dropFirst()))
case "--version":
    say("martlet-vmm \(version)")
    exit(0)
case "-h", "--help", "help":
    say(usage)
    exit(0)
default: break
}

var config = VMConfig()
var timeout: Double?
var printStats = false
/// When the spawner started this process (CLOCK_MONOTONIC ns): `spawn_ns` in the statistics.
var spawnedAt: UInt64?
/// The descriptor on which the spawner confirms the move into the VM's cgroups.
var cgroupJoinedFD: Int32?
var overrides: [(inout VMConfig) throws -> Void] = []

func value(_ flag: String, _ index: inout Int) -> String {
    index += 1
    guard index < arguments.count else { fail("\(flag) needs a value; see --help", code: .badConfig) }
    return arguments[index]
}

func number(_ flag: String, _ text: String) -> Int {
    // Digits only: Int() would also take "+5" and "-0".
    guard !text.isEmpty, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }), let value = Int(text)
    else { fail("\(flag): '\(text)' is not a number", code: .badConfig) }
    return value
}

var index = 0
var configPath: String?
while index < arguments.count {
    let flag = arguments[index]
    switch flag {
    case "--config": configPath = value(flag, &index)
    case "--kernel": let v = value(flag, &index); overrides.append { $0.kernel = v }
    case "--initrd": let v = value(flag, &index); overrides.append { $0.initrd = v }
    case "--firmware": let v = value(flag, &index); overrides.append { $0.firmware = v }
    case "--trace-io": overrides.append { $0.traceIO = true }
    case "--cmdline": let v = value(flag, &index); overrides.append { $0.cmdline = v }
    case "--vcpus": let v = number(flag, value(flag, &index)); overrides.append { $0.vcpus = v }
    case "--memory": let v = number(flag, value(flag, &index)); overrides.append { $0.memoryMiB = v }
    case "--rng": overrides.append { $0.rng = true }
    case "--stats": printStats = true
    case "--spawned-at": spawnedAt = UInt64(number(flag, value(flag, &index)))
    case "--cgroup-joined-fd": cgroupJoinedFD = Int32(number(flag, value(flag, &index)))
    case "--seccomp":
        let v = value(flag, &index)
        guard let mode = VMConfig.SeccompMode(rawValue: v) else { fail("--seccomp: '\(v)' is not on, off or log", code: .badConfig) }
        overrides.append { $0.seccomp = mode }
    case "--control-socket": let v = value(flag, &index); overrides.append { $0.controlSocket = v }
    case "--serial":
        let v = value(flag, &index)
        overrides.append { $0.serial = try SerialOutput(parsing: v, field: "--serial") }
    case "--serial-log": let v = value(flag, &index); overrides.append { $0.serialLog = v }
    case "--on-reboot":
        let v = value(flag, &index)
        guard let policy = VMConfig.RebootPolicy(rawValue: v) else { fail("--on-reboot: '\(v)' is not exit or restart", code: .badConfig) }
        overrides.append { $0.onReboot = policy }
    case "--ap-start":
        let v = value(flag, &index)
        guard let mode = VMConfig.APStart(rawValue: v) else { fail("--ap-start: '\(v)' is not sipi or entry", code: .badConfig) }
        overrides.append { $0.apStart = mode }
    case "--timeout":
        let v = value(flag, &index)
        guard let seconds = Double(v), seconds > 0 else { fail("--timeout: '\(v)' is not a positive number of seconds", code: .badConfig) }
        timeout = seconds
    case "--net":
        let parts = value(flag, &index).split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        var nic = VMConfig.NIC(tap: parts[0])
        for option in parts.dropFirst() {
            if option.hasPrefix("mac=") {
                nic.mac = String(option.dropFirst(4))
            } else if option.hasPrefix("queues="), let queues = Int(option.dropFirst(7)) {
                nic.queues = queues
            } else {
                fail("--net: unknown option '\(option)'; use TAP[,mac=MAC][,queues=N]", code: .badConfig)
            }
        }
        overrides.append { $0.nics.append(nic) }
    case "--disk":
        let parts = value(flag, &index).split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        var disk = VMConfig.Disk(path: parts[0])
        for option in parts.dropFirst() {
            if option == "ro" {
                disk.readOnly = true
            } else if option.hasPrefix("id=") {
                disk.id = String(option.dropFirst(3))
            } else if option.hasPrefix("queues="), let queues = Int(option.dropFirst(7)) {
                disk.queues = queues
            } else if option.hasPrefix("cache="), let cache = VMConfig.Disk.Cache(rawValue: String(option.dropFirst(6))) {
                disk.cache = cache
            } else {
                fail("--disk: unknown option '\(option)'; use PATH[,ro][,id=ID][,queues=N][,cache=writeback|none]", code: .badConfig)
            }
        }
        overrides.append { $0.disks.append(disk) }
    default:
        fail("unknown argument '\(flag)'; see 'martlet-vmm --help'", code: .badConfig)
    }
    index += 1
}

do {
    if let configPath {
        let bytes = try FilePath.readConfig(configPath, field: "--config")
        config = try VMConfig(json: String(decoding: bytes, as: UTF8.self), source: configPath)
    }
    for override in overrides { try override(&config) }
    try config.validate()
    try config.checkFiles()
} catch {
    fail("\(error)", code: .badConfig)
}
StartupTrace.mark("config")

// Before the first thread: every thread leaves SIGTERM to the one that stops the VM with it.
StopSignal.block()

// Before any file, device or KVM resource is opened: from here on the process is filtered.
do {
    try Jail.forbidNewPrivileges()
    try Seccomp.installProcessFilter(mode: config.seccomp, restartable: config.onReboot == .restart)
} catch {
    fail("\(error)", code: .failed)
}
StartupTrace.mark("process-filter")

// Everything the VM allocates (guest RAM, KVM's objects, the kernel image's buffer) is charged
// to the VM's cgroups: wait until the spawner has moved this process there.
if let fd = cgroupJoinedFD {
    var word: UInt8 = 0
    var count: Int
    repeat { count = read(fd, &word, 1) } while count < 0 && errno == EINTR
    guard count == 1, word == UInt8(ascii: "1") else {
        let reason = count < 0 ? String(cString: strerror(errno)) : "closed without confirming"
        fail("--cgroup-joined-fd \(fd): \(reason): the spawner could not move this VMM into its cgroups", code: .failed)
    }
    close(fd)
    StartupTrace.mark("cgroup-joined")
}

let machine: Machine
do {
    machine = try Machine(config: config)
} catch let error as VMMError where error.code == .config {
    fail("\(error)", code: .badConfig)
} catch let error as VMMError
    where [.kvmUnavailable, .kvmPermission, .kvmCapability].contains(error.code)
{
    // Not this VM's fault: no VM can run here until the host is fixed, so a supervisor
    // must not retry it.
    fail("\(error)", code: .hostCannotRunVMs)
} catch {
    fail("\(error)", code: .failed)
}
StartupTrace.mark("machine")

// The VM's files, taps and KVM handles are open: no capability is needed any more.
do {
    try Jail.lockDown(config: config)
} catch {
    machine.closeSockets()
    fail("\(error)", code: .failed)
}
StartupTrace.mark("lockdown")

if config.serial == .stdout {
    do {
        try machine.attachConsoleInput(fd: 0)
    } catch {
        fail("\(error)", code: .failed)
    }
}

var server: ControlServer?
if let socketPath = config.controlSocket {
    do {
        server = try ControlServer(path: socketPath, machine: machine)
        try server?.start()
    } catch {
        // A start that fails leaves no socket behind: the serial socket is gone too.
        machine.closeSockets()
        server?.close()
        fail("\(error)", code: .badConfig)
    }
}

let result: Machine.Exit
StartupTrace.mark("control")
do {
    try StopSignal.watch(machine)
    result = try machine.run(timeout: timeout)
} catch {
    fail("\(error)", code: .failed)
}
server?.close()

if printStats {
    let text = JSON.object([
        ("exit", .string("\(result)")),
        ("start_ns", .number(Double(startNanoseconds))),
        ("spawn_ns", .number(Double(spawnedAt ?? startNanoseconds))),
        ("first_exit_ns", .number(Double(machine.firstExitNanoseconds))),
        ("end_ns", .number(Double(ChildProcess.monotonicNanoseconds()))),
        ("port_io_exits", .number(Double(machine.portIOExits))),
        ("devices", .array(machine.deviceCounters.map { $0.json })),
    ]).text + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
}

switch result {
case .powerOff:
    exit(VMMExitCode.powerOff.rawValue)
case .stopped:
    exit(VMMExitCode.stopped.rawValue)
case .reset:
    if config.onReboot == .restart {
        // A fresh process is the cleanest reset: every device and vCPU starts anew.
        // The re-executed VMM is in its cgroups already and has no word to wait for.
        var kept: [String] = []
        var position = 0
        let all = CommandLine.arguments
        while position < all.count {
            if all[position] == "--cgroup-joined-fd" {
                position += 2
                continue
            }
            kept.append(all[position])
            position += 1
        }
        var argv: [UnsafeMutablePointer<CChar>?] = kept.map { strdup($0) } + [nil]
        execv("/proc/self/exe", &argv)
        fail("restart after guest reset failed: execv: \(String(cString: strerror(errno)))", code: .failed)
    }
    fail("guest requested a reset (on_reboot: exit)", code: .reset)
case .crashed(let reason):
    fail("guest stopped: \(reason)", code: .failed)
case .noBootableDevice:
    fail("no bootable device: the firmware found no boot sector on any disk; attach a bootable image as the first disk", code: .noBootableDevice)
}
