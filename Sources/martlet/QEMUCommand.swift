import ArgumentParser
import Foundation
import MartletBuilder
import MartletCore
import Synchronization

extension QEMUConfiguration.Acceleration: ExpressibleByArgument {}
extension QEMUConfiguration.BootTarget: ExpressibleByArgument {}

struct QEMUCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qemu",
        abstract: "Boot an ISO (and/or disks) in QEMU for a quick look or a scripted check.",
        discussion: """
            The ISO is attached as a CD (default) or, with --usb, as a USB stick: a private \
            copy written as dd would, on an xHCI controller. BIOS is SeaBIOS; --uefi uses OVMF \
            (/usr/share/OVMF/OVMF_CODE_4M.fd read-only and a private copy of the variables). \
            Networking is QEMU's user mode with restrict=on: the guest reaches nothing, and \
            only --ssh-port forwards 127.0.0.1:PORT to its port 22.

            Interactive (default): the serial console is on this terminal (Ctrl-A X quits \
            QEMU, Ctrl-A C its monitor), and is also written to --serial-log. \
            --headless: no console; the serial output is copied to stdout until QEMU exits. \
            --expect TEXT: headless, waits until TEXT appears on the serial console, then \
            stops QEMU and exits 0; exits 1 with the last lines of the console when QEMU \
            exits first or --timeout passes.

            Acceleration: auto means TCG on these machines (their KVM cannot boot stock \
            kernels); --accel kvm only when the host's KVM can.
            """)

    @Argument(help: "The ISO to boot (optional when --disk is given).")
    var iso: String?

    @Flag(help: "Boot with UEFI (OVMF) instead of BIOS (SeaBIOS).")
    var uefi = false

    @Flag(help: "Attach the ISO as a USB stick (a raw copy) instead of a CD.")
    var usb = false

    @Option(
        name: .customLong("disk"),
        help: ArgumentHelp(
            "Extra disk, raw or qcow2; repeatable. Interface virtio (default), nvme or sata.",
            valueName: "FILE[,if=virtio|nvme|sata]"))
    var disks: [String] = []

    @Option(
        help: ArgumentHelp(
            "Raw disk holding an answer file (virtio, serial MARTLET-ANSWER).", valueName: "FILE"))
    var answerDisk: String?

    @Option(help: ArgumentHelp("Guest memory in MiB.", valueName: "MiB"))
    var memory: Int = 2048

    @Option(help: "Virtual CPUs.")
    var cpus: Int = 1

    @Option(help: "Boot the ISO first (medium) or the first --disk first (disk).")
    var boot: QEMUConfiguration.BootTarget = .medium

    @Option(
        help: ArgumentHelp(
            "Forward 127.0.0.1:PORT on this host to the guest's port 22.", valueName: "PORT"))
    var sshPort: Int?

    @Option(
        help: ArgumentHelp("Write the serial console to FILE (kept afterwards).", valueName: "FILE")
    )
    var serialLog: String?

    @Option(
        help: ArgumentHelp(
            "Wait for TEXT on the serial console, then stop (implies --headless).",
            valueName: "TEXT"))
    var expect: String?

    @Option(
        help: ArgumentHelp(
            "Seconds to wait for --expect, or for QEMU to exit when headless.", valueName: "SEC"))
    var timeout: Int = 300

    @Flag(help: "No console and no display: serial output goes to stdout and the log.")
    var headless = false

    @Flag(help: "Exit when the guest reboots.")
    var noReboot = false

    @Option(help: "Accelerator: auto (TCG here), kvm or tcg.")
    var accel: QEMUConfiguration.Acceleration = .auto

    func validate() throws {
        if iso == nil && disks.isEmpty {
            throw ValidationError("give an ISO to boot, or at least one --disk")
        }
        if timeout <= 0 { throw ValidationError("--timeout must be a positive number of seconds") }
    }

    func run() throws {
        do {
            let config = QEMUConfiguration(
                iso: iso, firmware: uefi ? .uefi : .bios, medium: usb ? .usb : .cdrom,
                disks: try disks.map(QEMUConfiguration.Disk.init(parsing:)), answerDisk: answerDisk,
                memoryMiB: memory, acceleration: accel, sshPort: sshPort, serialLog: serialLog,
                headless: headless || expect != nil, noReboot: noReboot, boot: boot, cpus: cpus)
            let machine = try QEMUMachine(config)
            Interruption.install()
            try machine.start()
            Interruption.watch(machine.pid)
            do {
                if let expect {
                    try machine.waitFor(expect, timeout: .seconds(timeout))
                    machine.stop()
                    print(
                        "found '\(expect)' on the serial console (log: \(serialLog ?? "not kept"))")
                } else if config.headless {
                    try follow(machine)
                } else {
                    try machine.waitForExit(timeout: .seconds(365 * 24 * 3600))
                }
            } catch {
                if Interruption.signal == 0 { throw error }
            }
            if Interruption.signal != 0 {
                machine.shutdown()
                throw MartletError(
                    .failed, "interrupted by signal \(Interruption.signal); QEMU stopped")
            }
        } catch let error as MartletError {
            FileHandle.standardError.write(Data("martlet qemu: \(error.description)\n".utf8))
            throw ExitCode(
                Interruption.signal != 0 ? 128 + Interruption.signal : error.code.exitStatus)
        }
    }

    /// Copies the serial log to stdout as it grows, until QEMU exits or the timeout passes.
    private func follow(_ machine: QEMUMachine) throws {
        let deadline = ContinuousClock.now.advanced(by: .seconds(timeout))
        var offset: UInt64 = 0
        while true {
            let exited = machine.exitStatus
            if let handle = FileHandle(forReadingAtPath: machine.serialLogPath) {
                try? handle.seek(toOffset: offset)
                if let data = try? handle.readToEnd(), !data.isEmpty {
                    FileHandle.standardOutput.write(data)
                    offset += UInt64(data.count)
                }
                try? handle.close()
            }
            if let exited {
                guard exited == 0 else {
                    throw MartletError(.failed, "QEMU exited with status \(exited)")
                }
                return
            }
            if ContinuousClock.now >= deadline {
                machine.stop()
                throw MartletError(
                    .failed, "QEMU still ran after --timeout \(timeout) s; stopped it")
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP end QEMU from the handler (kill(2) is async-signal-safe); the
/// waiting code then sees QEMU gone and returns, and the machine's temp files are removed on
/// the normal path instead of being left behind by a process killed mid-way.
enum Interruption {
    private static let received = Atomic<Int32>(0)
    private static let qemu = Atomic<Int32>(0)

    static var signal: Int32 { received.load(ordering: .relaxed) }

    static func install() {
        // A parent may have started us with these blocked (Foundation's Process does not
        // reset the mask); blocked, they would stay pending and never stop anything.
        var set = sigset_t()
        sigemptyset(&set)
        for number in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, number) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        for number in [SIGINT, SIGTERM, SIGHUP] {
            _ = Glibc.signal(number) { number in
                Interruption.received.store(number, ordering: .relaxed)
                let pid = Interruption.qemu.load(ordering: .relaxed)
                if pid > 0 { kill(pid, SIGTERM) }
            }
        }
    }

    static func watch(_ pid: pid_t?) {
        qemu.store(pid ?? 0, ordering: .relaxed)
        if let pid, signal != 0 { kill(pid, SIGTERM) }
    }
}
