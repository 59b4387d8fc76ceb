import Foundation
import MartletCore
import Testing

@Suite("Block devices: device numbers, mountinfo, sysfs")
struct BlockDeviceTests {
    @Test("dev_t splits like glibc's major()/minor(), including numbers above 8 bits")
    func deviceNumbers() throws {
        // glibc's makedev layout: minor bits 0-7 and 20-31, major bits 8-19 and 32-43.
        func makedev(_ major: UInt64, _ minor: UInt64) -> dev_t {
            dev_t(
                (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)
                    | ((major & ~0xfff) << 32))
        }
        for (major, minor) in [(8, 0), (259, 3), (7, 300), (4095, 1_048_575), (5000, 2)] {
            let number = DeviceNumber(makedev(UInt64(major), UInt64(minor)))
            #expect(number == DeviceNumber(major: UInt64(major), minor: UInt64(minor)))
            #expect(DeviceNumber(number.description) == number)
        }
        #expect(DeviceNumber("8") == nil)
        #expect(DeviceNumber("8:x") == nil)
        #expect(DeviceNumber("8:1:2") == nil)
        var info = stat()
        #expect(stat("/dev/null", &info) == 0)
        #expect(DeviceNumber(info.st_rdev) == DeviceNumber(major: 1, minor: 3))
    }

    @Test("every octal escape of mountinfo is decoded, as bytes (UTF-8 names survive)")
    func unescape() {
        #expect(MountTable.unescape(#"/mnt/a\040b\011c\012d\134e"#) == "/mnt/a b\tc\nd\\e")
        #expect(MountTable.unescape(#"/mnt/\303\251t\303\251"#) == "/mnt/été")
        // Not an escape: too short, not octal, or above \377.
        #expect(MountTable.unescape(#"/a\04"#) == #"/a\04"#)
        #expect(MountTable.unescape(#"/a\089"#) == #"/a\089"#)
        #expect(MountTable.unescape(#"/a\400"#) == #"/a\400"#)
    }

    @Test("mountinfo and swaps: mount points by device, the device at a mount point, swap")
    func mountTable() {
        let mountInfo = """
            22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
            30 22 8:17 / /mnt/my\\040stick rw - vfat /dev/sdb1 rw
            31 22 7:0 / /run/martlet/medium ro - iso9660 /dev/loop0 ro
            32 22 7:0 / /run/martlet/medium ro - iso9660 /dev/loop0 ro
            bad line
            """
        let swaps = """
            Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
            /dev/sdb2                               partition\t1048572\t\t0\t\t-2
            /swap\\040file                           file\t\t1048572\t\t0\t\t-3
            """
        var asked: [String] = []
        let table = MountTable(mountInfo: mountInfo, swaps: swaps) { path in
            asked.append(path)
            return path == "/dev/sdb2" ? DeviceNumber(major: 8, minor: 18) : nil
        }
        #expect(asked == ["/dev/sdb2", "/swap file"])
        #expect(table.mounts.count == 4)
        #expect(table.mountpoints(of: DeviceNumber(major: 8, minor: 17)) == ["/mnt/my stick"])
        #expect(table.mountpoints(of: DeviceNumber(major: 8, minor: 18)) == ["[swap]"])
        #expect(table.mountpoints(of: DeviceNumber(major: 8, minor: 99)) == [])
        #expect(table.device(mountedAt: "/run/martlet/medium") == DeviceNumber(major: 7, minor: 0))
        #expect(table.device(mountedAt: "/nowhere") == nil)
    }

    @Test("sysfs: attributes, partitions and holders of a disk folder")
    func sysfs() throws {
        let root = NSTemporaryDirectory() + "martlet-sysfs-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let fm = FileManager.default
        func write(_ path: String, _ text: String) throws {
            try fm.createDirectory(
                atPath: (root + "/" + path as NSString).deletingLastPathComponent,
                withIntermediateDirectories: true)
            try text.write(toFile: root + "/" + path, atomically: true, encoding: .utf8)
        }
        try write("block/sdb/dev", "8:16\n")
        try write("block/sdb/size", "2048\n")
        try write("block/sdb/removable", "1\n")
        try write("block/sdb/sdb2/partition", "2\n")
        try write("block/sdb/sdb2/dev", "8:18\n")
        try write("block/sdb/sdb1/partition", "1\n")
        try write("block/sdb/sdb1/dev", "8:17\n")
        try fm.createDirectory(atPath: root + "/block/sdb/holders/dm-0", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: root + "/dev/block", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: root + "/dev/block/8:16", withDestinationPath: "../../block/sdb")

        let disk = try #require(SysfsBlockDevice(number: DeviceNumber(major: 8, minor: 16), sysfs: root))
        #expect(disk.name == "sdb")
        #expect(disk.size == 2048 * 512)
        #expect(disk.attribute("removable") == "1")
        #expect(disk.attribute("missing") == nil)
        #expect(!disk.isPartition)
        #expect(disk.partitions.map(\.name) == ["sdb1", "sdb2"])
        #expect(disk.partitions.map(\.isPartition) == [true, true])
        #expect(disk.partitions.last?.number == DeviceNumber(major: 8, minor: 18))
        #expect(disk.holders == ["dm-0"])
        #expect(SysfsBlockDevice(number: DeviceNumber(major: 8, minor: 32), sysfs: root) == nil)
    }
}
