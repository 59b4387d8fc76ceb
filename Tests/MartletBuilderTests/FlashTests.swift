import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// A small data ISO (no boot records: flashing does not care) with some random content.
func makeSmallISO(in scratch: ScratchDirectory, kib: Int = 600) throws -> String {
    var bytes = [UInt8](repeating: 0, count: kib * 1024)
    for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
    try scratch.write("isotree/random.bin", Data(bytes))
    let iso = scratch.file("small.iso")
    try Command(
        "xorriso", ["-as", "mkisofs", "-o", iso, "-V", "FLASH_TEST", scratch.file("isotree")]
    ).run()
    return iso
}

func contents(_ path: String, count: Int) throws -> Data {
    let handle = try #require(FileHandle(forReadingAtPath: path))
    defer { try? handle.close() }
    return try handle.read(upToCount: count) ?? Data()
}

/// A sparse file attached as a loop device, optionally with one partition holding ext4
/// mounted in a scratch folder. Unmounted and detached on deinit, whatever happened.
final class LoopDisk {
    let scratch: ScratchDirectory
    let device: String
    private(set) var mountPoint: String?

    init(bytes: Int, partitioned: Bool = false) throws {
        scratch = try ScratchDirectory("martlet-flash-loop")
        let image = scratch.file("disk.img")
        try Command("truncate", ["-s", String(bytes), image]).run()
        if partitioned {
            try Command("sfdisk", ["-q", image]).run(input: Data("label: gpt\n,,L\n".utf8))
        }
        device = try Command(
            "losetup", ["--find", "--show"] + (partitioned ? ["-P"] : []) + [image]
        )
        .run().stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    var firstPartition: String { device + "p1" }

    func mountFirstPartition() throws {
        // losetup -P does not always leave the partition node behind on these machines;
        // asking the kernel to read the table again does.
        for attempt in 0..<50 where !FileManager.default.fileExists(atPath: firstPartition) {
            if attempt % 10 == 5 {
                _ = try? Command("partx", ["-a", device]).runAllowingFailure()
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        try #require(
            FileManager.default.fileExists(atPath: firstPartition),
            "\(firstPartition) did not appear within 5 s")
        try Command("mkfs.ext4", ["-q", "-F", firstPartition]).run()
        let target = scratch.file("mnt dir")
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        try Command("mount", [firstPartition, target]).run()
        mountPoint = target
    }

    deinit {
        if let mountPoint { _ = try? Command("umount", [mountPoint]).runAllowingFailure() }
        _ = try? Command("losetup", ["-d", device]).runAllowingFailure()
    }
}

@Suite("Flasher on loop devices", .serialized)
struct FlashLoopDeviceTests {
    @Test("a non-removable disk is refused without --force and written with it, read back equal")
    func nonRemovable() throws {
        let scratch = try ScratchDirectory()
        let iso = try makeSmallISO(in: scratch)
        let size = Int(try FileManager.default.attributesOfItem(atPath: iso)[.size] as! UInt64)
        let disk = try LoopDisk(bytes: 8 << 20)

        let refused = #expect(throws: MartletError.self) {
            try Flasher(iso: iso, device: disk.device).flash()
        }
        #expect(refused?.code == .refused)
        #expect(refused?.message.contains("\(disk.device)") == true)
        #expect(refused?.message.contains("not a removable disk") == true)
        #expect(try contents(disk.device, count: size) == Data(count: size), "refused, yet written")

        let progress = RecordingProgress()
        let result = try Flasher(iso: iso, device: disk.device, force: true).flash(
            progress: progress)
        #expect(result.verified)
        #expect(result.target.kind == .blockDevice)
        #expect(result.target.size == 8 << 20)
        #expect(result.bytes == UInt64(size))
        #expect(
            try contents(disk.device, count: size)
                == (try Data(contentsOf: URL(fileURLWithPath: iso))))
        let sha = try Command("sha256sum", [iso]).run().stdoutText.prefix(64)
        #expect(result.sha256 == String(sha))
        #expect(
            progress.events.contains {
                $0.stage == "write" && $0.kind == .update && $0.completed == UInt64(size)
                    && $0.total == UInt64(size)
            })
        #expect(progress.events.contains { $0.stage == "verify" && $0.kind == .end })
    }

    @Test("a disk with a mounted partition is refused even with --force, naming the mount point")
    func mounted() throws {
        let scratch = try ScratchDirectory()
        let iso = try makeSmallISO(in: scratch)
        let disk = try LoopDisk(bytes: 16 << 20, partitioned: true)
        try disk.mountFirstPartition()
        let error = #expect(throws: MartletError.self) {
            try Flasher(iso: iso, device: disk.device, force: true).flash()
        }
        #expect(error?.code == .refused)
        #expect(
            error?.message.contains("\(disk.firstPartition) on \(disk.mountPoint ?? "?")") == true)
        let partition = #expect(throws: MartletError.self) {
            try Flasher(iso: iso, device: disk.firstPartition, force: true).inspect()
        }
        #expect(partition?.message.contains("is a partition") == true)
        #expect(partition?.hint?.contains(disk.device) == true)
    }

    @Test("a disk smaller than the ISO is refused")
    func tooSmall() throws {
        let scratch = try ScratchDirectory()
        let iso = try makeSmallISO(in: scratch)
        let disk = try LoopDisk(bytes: 256 << 10)
        let error = #expect(throws: MartletError.self) {
            try Flasher(iso: iso, device: disk.device, force: true).flash()
        }
        #expect(error?.message.contains("smaller than the ISO") == true)
    }

    @Test(
        "a held disk is refused and a USB disk needs no --force (sysfs as the kernel would show it)"
    )
    func holdersAndUSB() throws {
        let scratch = try ScratchDirectory()
        let iso = try makeSmallISO(in: scratch)
        let disk = try LoopDisk(bytes: 8 << 20)
        let name = (disk.device as NSString).lastPathComponent
        let dev = try String(contentsOfFile: "/sys/class/block/\(name)/dev", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let fm = FileManager.default
        func fakeSysfs(_ devicePath: String, holder: Bool) throws -> String {
            let root = scratch.file("sys-\(holder)")
            let directory = "\(root)/\(devicePath)/\(name)"
            try scratch.write("sys-\(holder)/\(devicePath)/\(name)/dev", dev + "\n")
            try scratch.write("sys-\(holder)/\(devicePath)/\(name)/removable", "0\n")
            try scratch.write("sys-\(holder)/\(devicePath)/\(name)/size", "16384\n")
            try fm.createDirectory(
                atPath: directory + "/holders", withIntermediateDirectories: true)
            if holder {
                try fm.createDirectory(
                    atPath: directory + "/holders/dm-7", withIntermediateDirectories: true)
                try scratch.write("sys-\(holder)/block/dm-7/dm/name", "vg0-pool\n")
            }
            try fm.createDirectory(atPath: root + "/dev/block", withIntermediateDirectories: true)
            try fm.createSymbolicLink(
                atPath: "\(root)/dev/block/\(dev)", withDestinationPath: directory)
            return root
        }
        var held = Flasher(iso: iso, device: disk.device, force: true)
        held.sysfs = try fakeSysfs("devices/virtual/block", holder: true)
        let error = #expect(throws: MartletError.self) { try held.inspect() }
        #expect(error?.message.contains("held by dm-7 (vg0-pool)") == true)

        var usb = Flasher(iso: iso, device: disk.device)
        usb.sysfs = try fakeSysfs(
            "devices/pci0000:00/0000:00:14.0/usb2/2-1/host0/block", holder: false)
        let target = try usb.inspect()
        #expect(target.removable)
        #expect(target.transport == "usb")
    }
}

@Suite("Flasher on files")
struct FlashFileTests {
    @Test("writes a new or existing file like dd and reads it back")
    func plainFile() throws {
        let scratch = try ScratchDirectory()
        let iso = try makeSmallISO(in: scratch)
        let isoData = try Data(contentsOf: URL(fileURLWithPath: iso))
        let fresh = scratch.file("fresh.img")
        #expect(try Flasher(iso: iso, device: fresh).flash().verified)
        #expect(try Data(contentsOf: URL(fileURLWithPath: fresh)) == isoData)

        let old = try scratch.write("old.img", Data(repeating: 0xAA, count: isoData.count * 2))
        let result = try Flasher(iso: iso, device: old).flash()
        #expect(result.target.kind == .file)
        #expect(try Data(contentsOf: URL(fileURLWithPath: old)) == isoData)
    }

    @Test("a file that is not an ISO needs --force; a missing ISO or device is not found")
    func badInput() throws {
        let scratch = try ScratchDirectory()
        let notISO = try scratch.write("notes.txt", "hello\n")
        let refused = #expect(throws: MartletError.self) {
            try Flasher(iso: notISO, device: scratch.file("out.img")).flash()
        }
        #expect(refused?.message.contains("is not an ISO 9660 image") == true)
        #expect(
            try Flasher(iso: notISO, device: scratch.file("out.img"), force: true).flash().bytes
                == 6)

        let missing = #expect(throws: MartletError.self) {
            try Flasher(iso: scratch.file("none.iso"), device: scratch.file("x")).flash()
        }
        #expect(missing?.code == .notFound)
        let iso = try makeSmallISO(in: scratch, kib: 4)
        let noDevice = #expect(throws: MartletError.self) {
            try Flasher(iso: iso, device: "/dev/martlet-no-such-disk").flash()
        }
        #expect(noDevice?.code == .notFound)
        let itself = #expect(throws: MartletError.self) {
            try Flasher(iso: iso, device: iso).flash()
        }
        #expect(itself?.message.contains("is the ISO itself") == true)
    }

    @Test(
        "SHA-256 of files and text matches sha256sum, across block and read-chunk boundaries",
        arguments: [0, 3, 55, 56, 63, 64, 65, 200_000, Digest.chunkSize, Digest.chunkSize + 65])
    func sha256(length: Int) throws {
        let scratch = try ScratchDirectory()
        let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let file = try scratch.write("data", Data(bytes))
        let expected = String(try Command("sha256sum", [file]).run().stdoutText.prefix(64))
        #expect(try Digest.sha256(file: file) == expected)
        #expect(try Digest.sha256(files: ["data"], relativeTo: scratch.path) == ["data": expected])
        if length == 3 {
            #expect(
                Digest.sha256(text: "abc")
                    == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        }
    }
}
