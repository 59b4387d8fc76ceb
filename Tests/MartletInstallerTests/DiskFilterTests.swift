import Foundation
import MartletAnswer
import MartletCore
import Testing

@testable import MartletInstaller

/// An answer whose [disk] chooses the disk by `filter` (the body of a [disk.filter] table).
private func answer(filter: String, wipe: Bool = false) throws -> AnswerFile {
    let text = validAnswer(wipe: wipe).replacingOccurrences(
        of: "target = \"/dev/sdz\"\n", with: ""
    ).replacingOccurrences(of: "[storage]", with: "[disk.filter]\n\(filter)\n[storage]")
    return try AnswerFile.parse(path: "a.toml", contents: text)
}

/// Two SSDs of different sizes, a spinning disk, and the USB stick the installer booted from.
private let disks = [
    Disk(
        path: "/dev/sda", name: "sda", size: .gib(240), model: "Samsung SSD 870", serial: "S1",
        properties: ["ID_MODEL": "Samsung_SSD_870", "ID_BUS": "ata", "ID_PATH": "pci-0000:00:17.0-ata-1"]),
    Disk(
        path: "/dev/sdb", name: "sdb", size: .gib(960), model: "Samsung SSD 870", serial: "S2",
        properties: ["ID_MODEL": "Samsung_SSD_870", "ID_BUS": "ata", "ID_PATH": "pci-0000:00:17.0-ata-2"]),
    Disk(
        path: "/dev/sdc", name: "sdc", size: .gib(4000), model: "WDC WD40", serial: "W1",
        properties: ["ID_MODEL": "WDC_WD40", "ID_BUS": "ata", "ID_PATH": "pci-0000:00:17.0-ata-3"]),
    Disk(
        path: "/dev/sdd", name: "sdd", size: .gib(500), model: "Samsung SSD T7", serial: "U1",
        transport: "usb", removable: true,
        properties: ["ID_MODEL": "Samsung_SSD_T7", "ID_BUS": "usb"]),
]

@Suite("Disk selection by filter")
struct DiskFilterTests {
    @Test("udev globs and size bounds select exactly one disk; the plan installs on it")
    func selectsOne() throws {
        let plan = try InstallPlan.make(
            answer: try answer(filter: "ID_MODEL = \"Samsung_SSD_*\"\nmax-size = \"499GiB\""),
            disks: disks, nics: [])
        #expect(plan.target.path == "/dev/sda")
        let large = try answer(filter: "ID_BUS = \"ata\"\nmin-size = \"1TiB\"")
        #expect(InstallPlan.matches(large.disk.target, from: disks).map(\.path) == ["/dev/sdc"])
        let bySize = try answer(filter: "min-size = \"900GiB\"\nmax-size = \"1TiB\"")
        #expect(InstallPlan.matches(bySize.disk.target, from: disks).map(\.path) == ["/dev/sdb"])
    }

    @Test("more than one match is refused, listing every match")
    func ambiguous() throws {
        let error = #expect(throws: MartletError.self) {
            try InstallPlan.make(
                answer: try answer(filter: "ID_MODEL = \"Samsung_SSD_870\""), disks: disks, nics: [])
        }
        #expect(error?.message.contains("disk.target") == true)
        #expect(error?.message.contains("matches 2 disks") == true)
        #expect(error?.message.contains("/dev/sda (240 GiB") == true)
        #expect(error?.message.contains("/dev/sdb (960 GiB") == true)
    }

    @Test("no match is refused, listing the disks there are")
    func none() throws {
        let error = #expect(throws: MartletError.self) {
            try InstallPlan.make(
                answer: try answer(filter: "ID_MODEL = \"*NVMe*\""), disks: disks, nics: [])
        }
        #expect(error?.message.contains("disk.target: no disk matches 'filter ID_MODEL=*NVMe*'") == true)
        #expect(error?.hint?.contains("/dev/sdc") == true)
    }

    @Test("the boot medium never matches; a mounted disk that matches is refused by name")
    func guards() throws {
        var withMedium = disks
        withMedium[3].isBootMedium = true
        let usb = try answer(filter: "ID_BUS = \"usb\"")
        #expect(InstallPlan.matches(usb.disk.target, from: withMedium).isEmpty)
        #expect(InstallPlan.matches(usb.disk.target, from: disks).map(\.path) == ["/dev/sdd"])
        var mounted = disks
        mounted[2].mountpoints = ["/srv"]
        let error = #expect(throws: MartletError.self) {
            try InstallPlan.make(
                answer: try answer(filter: "ID_MODEL = \"WDC_*\"", wipe: true), disks: mounted, nics: [])
        }
        #expect(error?.code == .refused)
        #expect(error?.message.contains("/dev/sdc is in use: mounted (/dev/sdc on /srv)") == true)
    }

    @Test("a filter answer is written back as TOML that reads back the same")
    func roundTrip() throws {
        let answer = try answer(filter: "ID_PATH = \"pci-0000:00:17.0-ata-[12]\"\nmin-size = \"200GiB\"\nmax-size = 1099511627776")
        #expect(
            answer.disk.target
                == .filter(
                    DiskFilter(
                        globs: [PropertyGlob(property: "ID_PATH", pattern: "pci-0000:00:17.0-ata-[12]")],
                        minSize: .gib(200), maxSize: .gib(1024))))
        #expect(try AnswerFile.parse(path: "b.toml", contents: answer.toml) == answer)
    }
}
