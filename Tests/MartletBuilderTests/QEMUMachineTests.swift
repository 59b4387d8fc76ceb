import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

@Suite("QEMUMachine boots a hybrid ISO", .serialized)
final class QEMUMachineTests {
    let directory: ScratchDirectory
    let iso: String
    let marker = "MARTLET-QEMU-TEST-\(getpid())"

    init() throws {
        directory = try ScratchDirectory("martlet-qemu-test")
        iso = try GrubTestISO.make(in: directory, marker: marker)
    }

    @Test(
        "boots to the marker",
        arguments: [
            (QEMUConfiguration.Firmware.bios, QEMUConfiguration.Medium.cdrom),
            (.bios, .usb), (.uefi, .cdrom), (.uefi, .usb),
        ])
    func boots(firmware: QEMUConfiguration.Firmware, medium: QEMUConfiguration.Medium) throws {
        let log = directory.file("serial-\(firmware)-\(medium).log")
        let machine = try QEMUMachine(
            QEMUConfiguration(
                iso: iso, firmware: firmware, medium: medium, memoryMiB: 256, serialLog: log))
        try machine.start()
        #expect(machine.isRunning)
        try machine.waitFor(marker, timeout: .seconds(60))
        machine.stop()
        #expect(!machine.isRunning)
        #expect(machine.exitStatus != nil)
        // The firmware's own boot messages name the device it booted from.
        let output = machine.serialOutput
        if firmware == .uefi {
            #expect(output.contains(medium == .cdrom ? "DVD-ROM" : "USB"))
        }
    }

    @Test("a text that never comes times out with the serial tail; stop() ends QEMU")
    func timeout() throws {
        let machine = try QEMUMachine(QEMUConfiguration(iso: iso, memoryMiB: 256))
        try machine.start()
        try machine.waitFor(marker, timeout: .seconds(60))
        let start = ContinuousClock.now
        let error = #expect(throws: MartletError.self) {
            try machine.waitFor("NEVER-PRINTED", timeout: .seconds(2))
        }
        #expect(ContinuousClock.now - start < .seconds(10))
        #expect(error?.message.contains("NEVER-PRINTED") == true)
        #expect(error?.cause?.contains(marker) == true)
        let pid = try #require(machine.pid)
        machine.stop()
        #expect(kill(pid, 0) != 0, "QEMU process \(pid) still exists after stop()")
    }

    @Test("deinit kills QEMU and removes the private copies")
    func deinitKills() throws {
        var machine: QEMUMachine? = try QEMUMachine(
            QEMUConfiguration(iso: iso, firmware: .uefi, medium: .usb, memoryMiB: 256))
        try machine?.start()
        let pid = try #require(machine?.pid)
        let work = try #require(machine?.workDirectory)
        #expect(kill(pid, 0) == 0)
        #expect(FileManager.default.fileExists(atPath: work + "/usb-stick.img"))
        machine = nil
        #expect(kill(pid, 0) != 0, "QEMU process \(pid) survived deinit")
        #expect(!FileManager.default.fileExists(atPath: work))
    }

    @Test(
        "martlet qemu stopped by SIGTERM ends QEMU and removes its temp files",
        .enabled(if: martletExecutable != nil))
    func commandSignal() throws {
        let temporary = QEMUMachine.temporaryDirectory
        func workDirectories() throws -> Set<String> {
            Set(
                try FileManager.default.contentsOfDirectory(atPath: temporary).filter {
                    $0.hasPrefix("martlet-qemu.")
                })
        }
        let before = try workDirectories()
        let log = directory.file("command.log")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(martletExecutable))
        process.arguments = [
            "qemu", iso, "--headless", "--usb", "--memory", "256", "--serial-log", log, "--timeout",
            "60",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        let deadline = ContinuousClock.now + .seconds(60)
        while !((try? String(contentsOfFile: log, encoding: .utf8))?.contains(marker) ?? false) {
            try #require(ContinuousClock.now < deadline, "the marker never came")
            Thread.sleep(forTimeInterval: 0.2)
        }
        let qemu = try #require(childProcesses(of: process.processIdentifier).first)
        #expect(try workDirectories().count == before.count + 1)
        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationStatus == 143)
        #expect(kill(qemu, 0) != 0, "QEMU \(qemu) outlived martlet qemu")
        #expect(try workDirectories() == before)
    }

    @Test("QEMU failing to start the machine is reported with QEMU's own message")
    func earlyExit() throws {
        // qcow2 magic followed by garbage: QEMU refuses the image and exits.
        let disk = try directory.write(
            "broken.qcow2", Data([0x51, 0x46, 0x49, 0xFB]) + Data(count: 508))
        let machine = try QEMUMachine(
            QEMUConfiguration(disks: [.init(path: disk)], memoryMiB: 256))
        try machine.start()
        let error = #expect(throws: MartletError.self) {
            try machine.waitFor("anything", timeout: .seconds(30))
        }
        #expect(error?.message.contains("exited with status") == true)
        #expect(error?.cause?.contains("broken.qcow2") == true)
    }
}

@Suite("QEMU command line")
struct QEMUArgumentsTests {
    @Test("UEFI USB boot with disks, answer disk and ssh forwarding")
    func arguments() throws {
        let directory = try ScratchDirectory()
        let iso = try directory.write("a,b.iso", "")
        let disk = try directory.write("d.img", "")
        var config = QEMUConfiguration(
            iso: iso, firmware: .uefi, medium: .usb,
            disks: [
                .init(path: disk), try .init(parsing: disk + ",if=nvme"),
                .init(path: disk, interface: .sata),
            ],
            answerDisk: disk, sshPort: 2222, noReboot: true)
        config.cpus = 2
        config.apiPort = 8444
        let machine = try QEMUMachine(config)
        let args = machine.arguments().joined(separator: " ")
        #expect(args.contains("-accel tcg -cpu max"))
        #expect(args.contains("unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"))
        #expect(args.contains("unit=1,file=\(machine.workDirectory)/OVMF_VARS.fd"))
        #expect(args.contains("usb-storage,bus=xhci.0,drive=medium,bootindex=1"))
        #expect(!args.contains("a,,b.iso"), "the USB stick is a private copy, not the ISO itself")
        #expect(args.contains("virtio-blk-pci,drive=disk0,bootindex=3"))
        #expect(args.contains("nvme,drive=disk1,serial=martlet1,bootindex=4"))
        #expect(args.contains("ide-hd,drive=disk2,bus=ide.0,bootindex=5"))
        #expect(args.contains("serial=MARTLET-ANSWER"))
        #expect(
            args.contains(
                "-nic user,restrict=on,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8444-:8443"))
        #expect(args.contains("-no-reboot"))
        #expect(args.contains("-smp 2"))
    }

    @Test("two NICs share the user network through a hub, with their own MACs and ids")
    func bondedNICs() throws {
        let directory = try ScratchDirectory()
        let disk = try directory.write("d.img", "")
        var config = QEMUConfiguration(disks: [.init(path: disk)], sshPort: 2222, boot: .disk)
        config.nics = 2
        #expect(config.nicMACs == ["52:54:00:12:34:56", "52:54:00:12:34:57"])
        let args = try QEMUMachine(config).arguments().joined(separator: " ")
        #expect(!args.contains("-nic "))
        #expect(args.contains("-netdev user,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,id=uplink"))
        #expect(args.contains("-netdev hubport,id=uplinkport,hubid=0,netdev=uplink"))
        for index in 0..<2 {
            #expect(args.contains("-netdev hubport,id=port\(index),hubid=0"))
            #expect(args.contains(
                "-device virtio-net-pci,id=nic\(index),netdev=port\(index),mac=\(config.nicMACs[index])"))
        }
        config.nics = 0
        #expect(throws: MartletError.self) { try QEMUMachine(config) }
    }

    @Test("a CD path with a comma is escaped; boot from disk reorders bootindex")
    func escaping() throws {
        let directory = try ScratchDirectory()
        let iso = try directory.write("a,b.iso", "")
        let disk = try directory.write("d.img", "")
        let args = try QEMUMachine(
            QEMUConfiguration(iso: iso, disks: [.init(path: disk)], boot: .disk)
        ).arguments().joined(separator: " ")
        #expect(args.contains("file=\(directory.path)/a,,b.iso"))
        #expect(args.contains("ide-cd,drive=medium,bus=ide.0,bootindex=2"))
        #expect(args.contains("virtio-blk-pci,drive=disk0,bootindex=1"))
    }

    @Test("bad configurations are refused before QEMU starts")
    func invalid() throws {
        #expect(throws: MartletError.self) { try QEMUMachine(QEMUConfiguration()) }
        let missing = #expect(throws: MartletError.self) {
            try QEMUMachine(QEMUConfiguration(iso: "/nonexistent/x.iso"))
        }
        #expect(missing?.message.contains("/nonexistent/x.iso") == true)
        let error = #expect(throws: MartletError.self) {
            try QEMUConfiguration.Disk(parsing: "x.img,if=scsi")
        }
        #expect(error?.message.contains("if=scsi") == true)
        #expect(try QEMUConfiguration.Disk(parsing: "x.img,if=sata").interface == .sata)
    }
}

/// Pids whose parent is `parent`, from /proc/PID/stat (field 4, after the command in parens).
func childProcesses(of parent: pid_t) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> pid_t? in
        guard let pid = pid_t(entry),
            let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && pid_t(fields[1]) == parent ? pid : nil
    }
}
