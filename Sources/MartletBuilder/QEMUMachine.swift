import Foundation
import MartletCore
import MartletSystem
import Synchronization

/// How `QEMUMachine` boots an ISO or a disk: firmware, how the ISO is attached, extra disks,
/// networking and where the serial console goes.
public struct QEMUConfiguration: Sendable, Equatable {
    public enum Firmware: String, Sendable, CaseIterable { case bios, uefi }

    /// How the ISO reaches the guest.
    public enum Medium: String, Sendable, CaseIterable {
        /// A CD-ROM drive (El Torito boot).
        case cdrom
        /// A USB stick: the ISO copied to a raw file as `dd` would write it (MBR/GPT boot).
        case usb
    }

    public enum Acceleration: String, Sendable, CaseIterable {
        /// TCG on these machines: their KVM cannot boot stock kernels (DESIGN.md facts).
        case auto
        case kvm
        case tcg
    }

    /// Which device firmware tries first.
    public enum BootTarget: String, Sendable, CaseIterable {
        /// The ISO (CD or USB stick), then the disks.
        case medium
        /// The first extra disk, then the ISO.
        case disk
    }

    public struct Disk: Sendable, Equatable {
        public enum Interface: String, Sendable, CaseIterable { case virtio, nvme, sata }
        public var path: String
        public var interface: Interface

        public init(path: String, interface: Interface = .virtio) {
            self.path = path
            self.interface = interface
        }

        /// Parses the CLI form `FILE[,if=virtio|nvme|sata]`.
        public init(parsing text: String) throws {
            var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(
                String.init)
            let path = parts.removeFirst()
            guard !path.isEmpty else {
                throw MartletError(
                    .invalidInput, "disk '\(text)': the file name is empty",
                    hint: "write FILE or FILE,if=virtio|nvme|sata")
            }
            var interface = Interface.virtio
            for option in parts {
                let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
                guard pair.count == 2, pair[0] == "if", let parsed = Interface(rawValue: pair[1])
                else {
                    throw MartletError(
                        .invalidInput, "disk '\(text)': unknown option '\(option)'",
                        hint: "the only option is if=virtio, if=nvme or if=sata")
                }
                interface = parsed
            }
            self.init(path: path, interface: interface)
        }
    }

    /// The ISO to boot; nil boots only the disks.
    public var iso: String?
    public var firmware: Firmware = .bios
    public var medium: Medium = .cdrom
    /// Extra disks in order; raw or qcow2 (detected by the file's magic).
    public var disks: [Disk] = []
    /// A raw disk image carrying an answer file, attached as a virtio disk with serial
    /// `MARTLET-ANSWER`.
    public var answerDisk: String?
    public var memoryMiB: Int = 1024
    public var cpus: Int = 1
    public var acceleration: Acceleration = .auto
    /// QEMU `-cpu` model; nil means `max` under TCG (it carries SVM/VMX, so the guest can
    /// run nested KVM) and `host` under KVM.
    public var cpuModel: String?
    /// Host port on 127.0.0.1 forwarded to the guest's port 22.
    public var sshPort: Int?
    /// Host port on 127.0.0.1 forwarded to the guest's port 8443 (an installed host's HTTPS API
    /// and web UI, as an admin's browser reaches it).
    public var apiPort: Int?
    /// Guest ports on `guestForwardAddress` forwarded to host ports on 127.0.0.1 (the user
    /// network is restricted: the guest reaches the host only through these). Each connection
    /// runs its own socat.
    public var guestForwards: [GuestForward] = []
    public static let guestForwardAddress = "10.0.2.100"

    public struct GuestForward: Sendable, Equatable {
        public var guestPort: Int
        public var hostPort: Int
        public init(guestPort: Int, hostPort: Int) {
            self.guestPort = guestPort
            self.hostPort = hostPort
        }
    }
    /// Virtio NICs on the user network. More than one share it through a QEMU hub, as the
    /// members of a bond plugged into one switch; their MACs are `nicMACs`.
    public var nics: Int = 1
    /// The NICs' MACs: 52:54:00:12:34:56 (QEMU's default for the first), then counting up.
    public var nicMACs: [String] { Self.nicMACs(count: nics) }
    public static func nicMACs(count: Int) -> [String] {
        (0..<count).map { String(format: "52:54:00:12:34:%02x", 0x56 + $0) }
    }
    /// Serial console log; a file in the machine's private temp folder when nil.
    public var serialLog: String?
    /// No console: serial only to the log, no display, stdin closed. When false, the serial
    /// console (multiplexed with the QEMU monitor, Ctrl-A X quits) is on this terminal.
    public var headless: Bool = true
    /// Exit instead of rebooting (a guest's reboot ends the run).
    public var noReboot: Bool = false
    public var boot: BootTarget = .medium
    /// OVMF images for `uefi`.
    public var ovmfCode: String = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    public var ovmfVars: String = "/usr/share/OVMF/OVMF_VARS_4M.fd"

    public init(
        iso: String? = nil, firmware: Firmware = .bios, medium: Medium = .cdrom,
        disks: [Disk] = [], answerDisk: String? = nil, memoryMiB: Int = 1024,
        acceleration: Acceleration = .auto, sshPort: Int? = nil, serialLog: String? = nil,
        headless: Bool = true, noReboot: Bool = false, boot: BootTarget = .medium, cpus: Int = 1
    ) {
        self.cpus = cpus
        self.iso = iso
        self.firmware = firmware
        self.medium = medium
        self.disks = disks
        self.answerDisk = answerDisk
        self.memoryMiB = memoryMiB
        self.acceleration = acceleration
        self.sshPort = sshPort
        self.serialLog = serialLog
        self.headless = headless
        self.noReboot = noReboot
        self.boot = boot
    }

    /// The accelerator actually used: `auto` means TCG here.
    public var effectiveAcceleration: Acceleration { acceleration == .auto ? .tcg : acceleration }

    /// Checks the configuration against the files it names, before anything starts.
    public func validate() throws {
        guard iso != nil || !disks.isEmpty else {
            throw MartletError(
                .invalidInput, "nothing to boot: give an ISO or at least one disk")
        }
        guard (128...65536).contains(memoryMiB) else {
            throw MartletError(
                .invalidInput, "memory \(memoryMiB) MiB is out of range",
                hint: "give between 128 and 65536 MiB")
        }
        guard (1...64).contains(cpus) else {
            throw MartletError(.invalidInput, "cpus \(cpus) is out of range (1–64)")
        }
        guard (1...8).contains(nics) else {
            throw MartletError(.invalidInput, "nics \(nics) is out of range (1–8)")
        }
        if let sshPort, !(1...65535).contains(sshPort) {
            throw MartletError(.invalidInput, "ssh port \(sshPort) is not a TCP port (1–65535)")
        }
        for forward in guestForwards where !(1...65535).contains(forward.guestPort) || !(1...65535).contains(forward.hostPort) {
            throw MartletError(
                .invalidInput, "guest forward \(forward.guestPort) → \(forward.hostPort) is not between TCP ports (1–65535)")
        }
        if boot == .disk && disks.isEmpty {
            throw MartletError(
                .invalidInput, "boot from disk asked for, but no disk is attached",
                hint: "add --disk FILE")
        }
        var files: [(String, String)] = disks.map { ("disk", $0.path) }
        if let iso { files.insert(("ISO", iso), at: 0) }
        if let answerDisk { files.append(("answer disk", answerDisk)) }
        if firmware == .uefi { files += [("OVMF code", ovmfCode), ("OVMF vars", ovmfVars)] }
        for (what, path) in files {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory),
                !isDirectory.boolValue
            else {
                let hint =
                    what.hasPrefix("OVMF")
                    ? "install it with: apt-get install ovmf" : "check the path"
                throw MartletError(.notFound, "\(what) '\(path)' does not exist", hint: hint)
            }
        }
        if effectiveAcceleration == .kvm && access("/dev/kvm", R_OK | W_OK) != 0 {
            throw MartletError(
                .missingDependency, "KVM acceleration asked for, but /dev/kvm is not usable",
                hint: "use --accel tcg")
        }
    }
}

/// One QEMU virtual machine booting an ISO (BIOS or UEFI, as CD or USB stick) and/or disks.
///
/// QEMU runs in its own process, started by `start()`; `deinit` kills it and removes the
/// temporary copies (USB stick image, UEFI variables). QEMU is also started with a
/// parent-death signal, so it dies with this process even if `deinit` never runs.
public final class QEMUMachine: Sendable {
    public let configuration: QEMUConfiguration
    /// Private folder for the USB stick copy, the OVMF variables and QEMU's own output.
    public let workDirectory: String
    /// Where the guest's serial console is written.
    public let serialLogPath: String
    /// QEMU's stdout and stderr when headless.
    public let qemuLogPath: String
    /// The human monitor (HMP) socket when headless; `monitor(_:)` talks to it.
    public let monitorSocketPath: String

    /// The QEMU process once started, shared with the thread that waits for it.
    private let state = ConditionLock(ProcessState())

    /// Validates `configuration` and prepares a private work folder; starts nothing yet.
    public init(_ configuration: QEMUConfiguration) throws {
        try configuration.validate()
        self.configuration = configuration
        var template = Array((Self.temporaryDirectory + "/martlet-qemu.XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw MartletError.system("mkdtemp", path: Self.temporaryDirectory)
        }
        workDirectory = String(cString: made)
        serialLogPath = configuration.serialLog ?? workDirectory + "/serial.log"
        qemuLogPath = workDirectory + "/qemu.log"
        monitorSocketPath = workDirectory + "/monitor.sock"
    }

    deinit { shutdown() }

    /// Stops QEMU and removes the private copies (USB stick image, UEFI variables, QEMU's
    /// output); a serial log given in the configuration stays. What deinit does, for callers
    /// that exit without deinit running (a signal handler).
    public func shutdown() {
        stop()
        try? FileManager.default.removeItem(atPath: workDirectory)
    }

    /// Whether QEMU has been started and has not exited.
    public var isRunning: Bool { state.withLock { $0.pid != nil && $0.exitStatus == nil } }

    /// The QEMU process id once started.
    public var pid: pid_t? { state.withLock { $0.pid } }

    /// QEMU's exit status once it has exited.
    public var exitStatus: Int32? { state.withLock { $0.exitStatus } }

    /// Everything the guest wrote to the serial console so far.
    public var serialOutput: String {
        (try? String(contentsOfFile: serialLogPath, encoding: .utf8))
            ?? FileManager.default.contents(atPath: serialLogPath).map {
                String(decoding: $0, as: UTF8.self)
            } ?? ""
    }

    /// QEMU's arguments for this configuration; the USB stick and UEFI variables they name
    /// are the private copies `start()` makes in `workDirectory`.
    public func arguments() -> [String] {
        let config = configuration
        var args = ["-name", "martlet", "-machine", "q35", "-m", String(config.memoryMiB)]
        args += ["-smp", String(config.cpus)]
        switch config.effectiveAcceleration {
        case .kvm: args += ["-accel", "kvm", "-cpu", config.cpuModel ?? "host"]
        case .tcg, .auto: args += ["-accel", "tcg", "-cpu", config.cpuModel ?? "max"]
        }
        if config.firmware == .uefi {
            args += [
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=\(Self.escape(config.ovmfCode))",
                "-drive", "if=pflash,format=raw,unit=1,file=\(Self.escape(varsPath))",
            ]
        }
        let mediumIndex = config.boot == .medium ? 1 : 2
        var diskIndex = config.boot == .disk ? 1 : 3
        var sataPort = 0
        if let iso = config.iso {
            switch config.medium {
            case .cdrom:
                args += [
                    "-drive",
                    "if=none,id=medium,media=cdrom,format=raw,readonly=on,file=\(Self.escape(iso))",
                    "-device", "ide-cd,drive=medium,bus=ide.\(sataPort),bootindex=\(mediumIndex)",
                ]
                sataPort += 1
            case .usb:
                args += [
                    "-device", "qemu-xhci,id=xhci",
                    "-drive", "if=none,id=medium,format=raw,file=\(Self.escape(usbStickPath))",
                    "-device", "usb-storage,bus=xhci.0,drive=medium,bootindex=\(mediumIndex)",
                ]
            }
        }
        for (index, disk) in config.disks.enumerated() {
            let id = "disk\(index)"
            let format = Self.imageFormat(disk.path)
            args += ["-drive", "if=none,id=\(id),format=\(format),file=\(Self.escape(disk.path))"]
            let bootIndex = ",bootindex=\(diskIndex)"
            diskIndex += 1
            switch disk.interface {
            case .virtio:
                args += ["-device", "virtio-blk-pci,drive=\(id)\(bootIndex)"]
            case .nvme:
                args += ["-device", "nvme,drive=\(id),serial=martlet\(index)\(bootIndex)"]
            case .sata:
                args += ["-device", "ide-hd,drive=\(id),bus=ide.\(sataPort)\(bootIndex)"]
                sataPort += 1
            }
        }
        if let answer = config.answerDisk {
            args += [
                "-drive", "if=none,id=answer,format=raw,file=\(Self.escape(answer))",
                "-device", "virtio-blk-pci,drive=answer,serial=MARTLET-ANSWER",
            ]
        }
        var forwards = ""
        if let port = config.sshPort { forwards += ",hostfwd=tcp:127.0.0.1:\(port)-:22" }
        if let port = config.apiPort { forwards += ",hostfwd=tcp:127.0.0.1:\(port)-:8443" }
        for forward in config.guestForwards {
            forwards += ",guestfwd=tcp:\(QEMUConfiguration.guestForwardAddress):\(forward.guestPort)"
                + "-cmd:socat - TCP:127.0.0.1:\(forward.hostPort)"
        }
        if config.nics <= 1 {
            args += ["-nic", "user,restrict=on,model=virtio-net-pci" + forwards]
        } else {
            let user = "user,restrict=on" + forwards
            // One user network on hub 0, and a hub port per NIC: every NIC sees every frame,
            // like ports of one switch. The NIC ids (nic0, nic1, …) name them for the
            // monitor's set_link.
            args += ["-netdev", user + ",id=uplink", "-netdev", "hubport,id=uplinkport,hubid=0,netdev=uplink"]
            for (index, mac) in config.nicMACs.enumerated() {
                args += [
                    "-netdev", "hubport,id=port\(index),hubid=0",
                    "-device", "virtio-net-pci,id=nic\(index),netdev=port\(index),mac=\(mac)",
                ]
            }
        }
        let log = Self.escape(serialLogPath)
        if config.headless {
            args += [
                "-display", "none",
                "-monitor", "unix:\(Self.escape(monitorSocketPath)),server=on,wait=off",
                "-chardev", "file,id=serial0,path=\(log)", "-serial", "chardev:serial0",
            ]
        } else {
            args += [
                "-chardev", "stdio,id=serial0,mux=on,signal=off,logfile=\(log)",
                "-serial", "chardev:serial0", "-mon", "chardev=serial0",
            ]
            if ProcessInfo.processInfo.environment["DISPLAY"] == nil {
                args += ["-display", "none"]
            }
        }
        if config.noReboot { args.append("-no-reboot") }
        return args
    }

    private var usbStickPath: String { workDirectory + "/usb-stick.img" }
    private var varsPath: String { workDirectory + "/OVMF_VARS.fd" }

    /// Makes the private copies and starts QEMU. Returns once the process runs.
    public func start() throws {
        guard pid == nil else {
            throw MartletError(.failed, "this QEMU machine was already started")
        }
        let qemu = try Tool.resolve("qemu-system-x86_64")
        let fm = FileManager.default
        if configuration.firmware == .uefi {
            try copy(configuration.ovmfVars, to: varsPath, what: "OVMF variables")
        }
        if let iso = configuration.iso, configuration.medium == .usb {
            try copy(iso, to: usbStickPath, what: "ISO (as a USB stick)")
        }
        if configuration.serialLog != nil {
            let directory = (serialLogPath as NSString).deletingLastPathComponent
            try? fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        // The chardev appends; start every run with an empty log.
        guard fm.createFile(atPath: serialLogPath, contents: nil) else {
            throw MartletError(
                .failed, "cannot create the serial log '\(serialLogPath)'",
                hint: "check that its folder is writable")
        }

        // setpriv sets a parent-death signal and execs QEMU: if this process dies without
        // running deinit (a crash, SIGKILL), the kernel kills QEMU too. The signal is tied to
        // the thread that spawns, so the spawn happens on the waiter thread that lives exactly
        // as long as QEMU.
        let deathSignal = Tool.find("setpriv").map { [$0, "--pdeathsig", "KILL", "--"] } ?? []
        let argv = deathSignal + [qemu] + arguments()
        let headless = configuration.headless
        let outputPath = qemuLogPath
        let spawned = state
        let ready = DispatchSemaphore(value: 0)
        let spawnError = SpawnResult()
        let thread = Thread {
            let result = Self.spawn(argv, outputPath: headless ? outputPath : nil)
            switch result {
            case .failure(let error):
                spawnError.error.withLock { $0 = error }
                ready.signal()
            case .success(let pid):
                spawned.withLock { $0.pid = pid }
                ready.signal()
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                let exit = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
                spawned.withLock { $0.exitStatus = exit }
            }
        }
        thread.name = "martlet-qemu-waiter"
        thread.start()
        ready.wait()
        if let error = spawnError.error.withLock({ $0 }) { throw error }
    }

    /// Waits until `text` appears on the serial console (anywhere in its output since start,
    /// so text that came before the call counts). Throws when QEMU exits first or when
    /// `timeout` passes; the error carries the last 30 lines of the serial log.
    public func waitFor(_ text: String, timeout: Duration) throws {
        guard pid != nil else {
            throw MartletError(.failed, "waiting for '\(text)': QEMU was never started")
        }
        let needle = Data(text.utf8)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var searchFrom = 0
        while true {
            // Read the status first: text written just before exit is still found below.
            let exited = exitStatus
            if let handle = FileHandle(forReadingAtPath: serialLogPath) {
                // Only the new bytes, plus enough overlap for a text split across two reads.
                try? handle.seek(toOffset: UInt64(searchFrom))
                let data = (try? handle.readToEnd()) ?? Data()
                try? handle.close()
                if data.range(of: needle) != nil { return }
                searchFrom = max(searchFrom, searchFrom + data.count - needle.count + 1)
            }
            if let exited {
                throw failure(
                    "QEMU exited with status \(exited) before '\(text)' appeared on the serial console"
                )
            }
            if ContinuousClock.now >= deadline {
                throw failure(
                    "'\(text)' did not appear on the serial console within \(Self.seconds(timeout))"
                )
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// Waits until QEMU exits and returns its exit status; throws after `timeout`.
    @discardableResult
    public func waitForExit(timeout: Duration) throws -> Int32 {
        guard pid != nil else {
            throw MartletError(.failed, "waiting for QEMU to exit: it was never started")
        }
        let seconds =
            Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        if let status = waitForExitStatus(seconds) {
            return status
        }
        throw failure("QEMU did not exit within \(Self.seconds(timeout))")
    }

    /// Stops QEMU: SIGTERM, then SIGKILL after 3 s. Safe to call more than once.
    public func stop() {
        guard let pid, exitStatus == nil else { return }
        kill(pid, SIGTERM)
        if waitForExitStatus(3) == nil {
            kill(pid, SIGKILL)
            _ = waitForExitStatus(10)
        }
    }

    /// QEMU's exit status, waiting for it up to `seconds`; nil when it is still running.
    private func waitForExitStatus(_ seconds: Double) -> Int32? {
        state.wait(until: { $0.exitStatus != nil }, timeout: seconds) { state, _ in state.exitStatus }
    }

    /// The last `count` lines of the serial log.
    public func serialTail(_ count: Int = 30) -> String {
        serialOutput.split(separator: "\n", omittingEmptySubsequences: false).suffix(count)
            .joined(separator: "\n")
    }

    private func failure(_ message: String) -> MartletError {
        var cause = "last lines of the serial console (\(serialLogPath)):\n" + serialTail(30)
        if let qemuOutput = FileManager.default.contents(atPath: qemuLogPath), !qemuOutput.isEmpty {
            cause += "\nQEMU said:\n" + String(decoding: qemuOutput, as: UTF8.self)
        }
        return MartletError(.failed, message, cause: cause)
    }

    private func copy(_ source: String, to destination: String, what: String) throws {
        try? FileManager.default.removeItem(atPath: destination)
        do {
            try FileManager.default.copyItem(atPath: source, toPath: destination)
        } catch {
            throw MartletError(
                .failed, "could not copy the \(what) '\(source)' to '\(destination)'",
                hint: "check free space in \(Self.temporaryDirectory)", cause: "\(error)")
        }
    }

    /// `$TMPDIR` (or /tmp) without a trailing slash.
    public static var temporaryDirectory: String {
        let path = NSTemporaryDirectory()
        return path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    }

    /// `qcow2` when the file starts with QEMU's qcow magic, else `raw`.
    static func imageFormat(_ path: String) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "raw" }
        defer { try? handle.close() }
        let magic = (try? handle.read(upToCount: 4)) ?? Data()
        return magic == Data([0x51, 0x46, 0x49, 0xFB]) ? "qcow2" : "raw"
    }

    /// QEMU option values separate with commas; a comma inside a value is written twice.
    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: ",", with: ",,")
    }

    static func seconds(_ duration: Duration) -> String {
        "\(duration.components.seconds) s"
    }

    /// Starts QEMU through the one process layer: stdin from /dev/null and stdout+stderr into
    /// `outputPath` (headless), or the terminal inherited (interactive). The child starts with
    /// default signal dispositions and an empty mask, so SIGTERM from stop() reaches it.
    private static func spawn(_ argv: [String], outputPath: String?) -> Result<pid_t, MartletError>
    {
        do {
            guard let outputPath else {
                return .success(try ChildProcess.spawn(argv, stdin: 0, stdout: 1, stderr: 2))
            }
            let null = try FileDescriptor.open("/dev/null", O_RDONLY)
            let output = try FileDescriptor.open(
                outputPath, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
            return .success(
                try ChildProcess.spawn(argv, stdin: null.raw, stdout: output.raw, stderr: output.raw))
        } catch let error as SystemError {
            return .failure(MartletError(error))
        } catch {
            return .failure(MartletError(.failed, "cannot start '\(argv[0])': \(error)"))
        }
    }
}

/// The pid and exit status of the QEMU process.
private struct ProcessState {
    var pid: pid_t?
    var exitStatus: Int32?
}

/// A spawn failure, handed from the waiter thread to `start()`.
private final class SpawnResult: Sendable {
    let error = Mutex<MartletError?>(nil)
}
