import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// The human monitor on a headless machine: commands get answers, keys reach the guest's
/// keyboard, unknown keys are refused. A blank disk is enough: SeaBIOS runs, nothing boots.
@Suite("QEMU monitor")
struct QEMUMonitorTests {
    @Test func monitorAnswersAndSendsKeys() throws {
        let directory = try ScratchDirectory()
        let disk = directory.file("blank.img")
        guard FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20)) else {
            throw MartletError.system("create", path: disk)
        }
        let machine = try QEMUMachine(QEMUConfiguration(disks: [.init(path: disk)], memoryMiB: 128))
        defer { machine.shutdown() }
        #expect(machine.arguments().joined(separator: " ").contains(
            "-monitor unix:\(machine.monitorSocketPath),server=on,wait=off"))
        try machine.start()
        #expect(try machine.monitor("info status").contains("VM status: running"))
        try machine.sendKeys(["down", "ret"], pause: .milliseconds(50))
        #expect(throws: MartletError.self) { try machine.sendKeys(["no-such-key"]) }
    }

    @Test func cpuModelReplacesTheDefault() throws {
        let directory = try ScratchDirectory()
        let disk = try directory.write("d.img", "")
        var config = QEMUConfiguration(disks: [.init(path: disk)])
        #expect(try QEMUMachine(config).arguments().joined(separator: " ").contains("-cpu max"))
        config.cpuModel = "qemu64"
        #expect(try QEMUMachine(config).arguments().joined(separator: " ").contains("-cpu qemu64"))
    }
}
