import Foundation
import Testing

import MartletSystem
import MartletVMMProtocol

/// The built martlet-vmm against malformed configurations and arguments (issue 12): each is
/// refused with exit status 2 and a message naming the field, within a second, without
/// creating, changing or removing a file — FIFOs and /dev/zero included, which must not
/// block or be read without end.
@Suite(.serialized) struct HostileConfigTests {
    /// One malformed input: the arguments (`@` stands for the scratch folder) and the field
    /// the refusal must name.
    struct Case: CustomStringConvertible, Sendable {
        var arguments: [String]
        var field: String
        var description: String { arguments.joined(separator: " ") }
    }

    /// A JSON configuration written to `@/NAME.json` before the snapshot.
    static let configs: [String: String] = [
        "empty-control": #"{"kernel": "@/kernel", "control_socket": ""}"#,
        "nul-control": #"{"kernel": "@/kernel", "control_socket": "@/c\u0000.sock"}"#,
        "file-control": #"{"kernel": "@/kernel", "control_socket": "@/precious"}"#,
        "nul-kernel": #"{"kernel": "@/kernel\u0000.old"}"#,
        "nul-disk": #"{"kernel": "@/kernel", "disks": [{"path": "@/disk.img\u0000x"}]}"#,
        "nul-tap": #"{"kernel": "@/kernel", "nics": [{"tap": "tap0\u0000x"}]}"#,
        "nul-serial-log": #"{"kernel": "@/kernel", "serial_log": "@/log\u0000x"}"#,
        "newline-cmdline": #"{"kernel": "@/kernel", "cmdline": "console=ttyS0\ninit=/bin/sh"}"#,
        "control-id": #"{"kernel": "@/kernel", "disks": [{"path": "@/disk.img", "id": "a\u0007b"}]}"#,
        "huge-memory": #"{"kernel": "@/kernel", "memory_mib": 100000000000000000000}"#,
        "float-vcpus": #"{"kernel": "@/kernel", "vcpus": 1.5}"#,
        "unknown-key": #"{"kernel": "@/kernel", "kernal": "x"}"#,
        "empty-serial-log": #"{"kernel": "@/kernel", "serial_log": ""}"#,
        "fifo-firmware": #"{"firmware": "@/fifo"}"#,
        "not-json": "{\"kernel\": ",
        "bad-cache": #"{"kernel": "@/kernel", "disks": [{"path": "@/disk.img", "cache": "unsafe"}]}"#,
        "zero-queues": #"{"kernel": "@/kernel", "disks": [{"path": "@/disk.img", "queues": 0}]}"#,
        "many-queues": #"{"kernel": "@/kernel", "disks": [{"path": "@/disk.img", "queues": 65536}]}"#,
        "zero-nic-queues": #"{"kernel": "@/kernel", "nics": [{"tap": "tap0", "queues": 0}]}"#,
        "many-nic-queues": #"{"kernel": "@/kernel", "nics": [{"tap": "tap0", "queues": 9}]}"#,
        "text-nic-queues": #"{"kernel": "@/kernel", "nics": [{"tap": "tap0", "queues": "2"}]}"#,
    ]

    static let cases: [Case] = [
        Case(arguments: ["--config", "@/empty-control.json"], field: "control_socket"),
        Case(arguments: ["--kernel", "@/kernel", "--control-socket", ""], field: "control_socket"),
        Case(arguments: ["--config", "@/nul-control.json"], field: "control_socket"),
        Case(arguments: ["--config", "@/file-control.json"], field: "control_socket"),
        Case(arguments: ["--kernel", "@/kernel", "--control-socket", "@/precious"], field: "control_socket"),
        Case(arguments: ["--kernel", "@/kernel", "--control-socket", "@/folder"], field: "control_socket"),
        Case(arguments: ["--kernel", "@/kernel", "--control-socket", "@/fifo"], field: "control_socket"),
        Case(arguments: ["--kernel", "@/fifo"], field: "kernel"),
        Case(arguments: ["--kernel", "@/kernel", "--initrd", "@/fifo"], field: "initrd"),
        Case(arguments: ["--kernel", "@/kernel", "--disk", "@/fifo"], field: "disks[0].path"),
        Case(arguments: ["--config", "@/fifo-firmware.json"], field: "firmware"),
        Case(arguments: ["--firmware", "@/fifo"], field: "firmware"),
        Case(arguments: ["--config", "@/fifo"], field: "--config"),
        Case(arguments: ["--config", "/dev/zero"], field: "--config"),
        Case(arguments: ["--config", "@/folder"], field: "--config"),
        Case(arguments: ["--config", "@/missing.json"], field: "--config"),
        Case(arguments: ["--config", "@/big.json"], field: "--config"),
        Case(arguments: ["--kernel", "@/kernel", "--disk", "@/folder"], field: "disks[0].path"),
        Case(arguments: ["--kernel", "@/kernel", "--disk", "/dev/null"], field: "disks[0].path"),
        Case(arguments: ["--kernel", "@/kernel", "--disk", "@/missing.img"], field: "disks[0].path"),
        Case(arguments: ["--kernel", "@/kernel", "--disk", "@/disk.img,cache=maybe"], field: "cache=writeback|none"),
        Case(arguments: ["--kernel", "@/folder"], field: "kernel"),
        Case(arguments: ["--kernel", "/dev/zero"], field: "kernel"),
        Case(arguments: ["--kernel", "@/missing"], field: "kernel"),
        Case(arguments: ["--kernel", ""], field: "kernel"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap0,mac=ff:ff:ff:ff:ff:ff"], field: "nics[0].mac"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap0,mac=01:00:5e:00:00:01"], field: "nics[0].mac"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap0,mac=00:00:00:00:00:00"], field: "nics[0].mac"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap0,mac=+1:+2:+3:+4:+5:+6"], field: "nics[0].mac"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap0,mac=52:54:00:12:34"], field: "nics[0].mac"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap%d"], field: "nics[0].tap"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "a/b"], field: "nics[0].tap"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "abcdefghijklmnop"], field: "nics[0].tap"),
        Case(arguments: ["--kernel", "@/kernel", "--net", ""], field: "nics[0].tap"),
        Case(arguments: ["--config", "@/nul-tap.json"], field: "nics[0].tap"),
        Case(arguments: ["--config", "@/nul-kernel.json"], field: "kernel"),
        Case(arguments: ["--config", "@/nul-disk.json"], field: "disks[0].path"),
        Case(arguments: ["--config", "@/nul-serial-log.json"], field: "serial_log"),
        Case(arguments: ["--config", "@/empty-serial-log.json"], field: "serial_log"),
        Case(arguments: ["--kernel", "@/kernel", "--serial", "socket:@/precious"], field: "serial"),
        Case(arguments: ["--kernel", "@/kernel", "--serial", "file:@/fifo"], field: "serial"),
        Case(arguments: ["--kernel", "@/kernel", "--serial", "file:@/folder"], field: "serial"),
        Case(arguments: ["--kernel", "@/kernel", "--serial-log", "@/fifo"], field: "serial_log"),
        Case(arguments: ["--kernel", "@/kernel", "--serial-log", "/dev/null"], field: "serial_log"),
        Case(arguments: ["--config", "@/newline-cmdline.json"], field: "cmdline"),
        Case(arguments: ["--config", "@/control-id.json"], field: "disks[0].id"),
        Case(arguments: ["--config", "@/huge-memory.json"], field: "memory_mib"),
        Case(arguments: ["--config", "@/float-vcpus.json"], field: "vcpus"),
        Case(arguments: ["--config", "@/unknown-key.json"], field: "kernal"),
        Case(arguments: ["--config", "@/not-json.json"], field: "not-json.json"),
        Case(arguments: ["--config", "@/bad-cache.json"], field: "disks[0].cache"),
        Case(arguments: ["--config", "@/zero-queues.json"], field: "disks[0].queues"),
        Case(arguments: ["--config", "@/many-queues.json"], field: "disks[0].queues"),
        Case(arguments: ["--config", "@/zero-nic-queues.json"], field: "nics[0].queues"),
        Case(arguments: ["--config", "@/many-nic-queues.json"], field: "nics[0].queues"),
        Case(arguments: ["--config", "@/text-nic-queues.json"], field: "nics[0].queues"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap0,queues=-1"], field: "nics[0].queues"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap0,queues=100"], field: "nics[0].queues"),
        Case(arguments: ["--kernel", "@/kernel", "--net", "tap0,queues=two"], field: "queues=N"),
        Case(arguments: ["--kernel", "@/kernel", "--memory", "1e3"], field: "--memory"),
        Case(arguments: ["--kernel", "@/kernel", "--vcpus", "+2"], field: "--vcpus"),
        Case(arguments: ["--kernel", "@/kernel", "--memory", "-0"], field: "--memory"),
        Case(arguments: ["--kernel", "@/kernel", "--vcpus", "0"], field: "vcpus"),
    ]

    /// The scratch folder: a kernel (any bytes: every refusal comes before it is parsed),
    /// a disk image, a file that must survive, a folder, a FIFO, an oversized config.
    static func makeScratch() throws -> URL {
        let scratch = try TestSupport.temporaryDirectory()
        let files = FileManager.default
        try Data(repeating: 0x90, count: 4096).write(to: scratch.appendingPathComponent("kernel"))
        try Data(count: 1 << 20).write(to: scratch.appendingPathComponent("disk.img"))
        try Data("keep me".utf8).write(to: scratch.appendingPathComponent("precious"))
        try files.createDirectory(at: scratch.appendingPathComponent("folder"), withIntermediateDirectories: false)
        #expect(mkfifo(scratch.appendingPathComponent("fifo").path, 0o600) == 0)
        let big = try FileHandle(forWritingTo: { () -> URL in
            let url = scratch.appendingPathComponent("big.json")
            files.createFile(atPath: url.path, contents: Data("{".utf8))
            return url
        }())
        try big.truncate(atOffset: 8 << 20)
        try big.close()
        for (name, text) in configs {
            try Data(text.replacingOccurrences(of: "@", with: scratch.path).utf8)
                .write(to: scratch.appendingPathComponent("\(name).json"))
        }
        return scratch
    }

    /// Every entry of `folder`: name → kind, size, modification time and, for small regular
    /// files, the bytes.
    static func snapshot(_ folder: URL) throws -> [String: String] {
        var result: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: folder.path) {
            var info = stat()
            lstat(folder.appendingPathComponent(name).path, &info)
            var entry = "\(info.st_mode) \(info.st_size) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
            if info.st_mode & S_IFMT == S_IFREG, info.st_size < 65536 {
                entry += " " + (try Data(contentsOf: folder.appendingPathComponent(name))).base64EncodedString()
            }
            result[name] = entry
        }
        return result
    }

    @Test(.timeLimit(.minutes(30))) func malformedInputsAreRefusedWithoutSideEffects() throws {
        #expect(Self.cases.count >= 30)
        let scratch = try Self.makeScratch()
        defer { try? FileManager.default.removeItem(at: scratch) }
        let before = try Self.snapshot(scratch)
        for testCase in Self.cases {
            let arguments = testCase.arguments.map { $0.replacingOccurrences(of: "@", with: scratch.path) }
            let started = Date()
            let result = try ChildProcess.run([TestSupport.vmmBinary] + arguments, timeout: 1)
            let seconds = Date().timeIntervalSince(started)
            #expect(result.termination == .exited(2), "\(testCase): \(result.termination): \(result.stderr)")
            #expect(result.stderr.contains(testCase.field), "\(testCase): the message names \(testCase.field): \(result.stderr)")
            #expect(!result.stderr.contains("\u{0}"), "\(testCase): no raw NUL in the message")
            #expect(seconds < 1, "\(testCase): took \(seconds) s")
            let after = try Self.snapshot(scratch)
            #expect(after == before, "\(testCase) changed the scratch folder: \(Set(after.keys).symmetricDifference(before.keys))")
        }
    }

    /// A start that fails after the serial socket exists (the control socket cannot be
    /// bound: its folder is missing) removes the serial socket again. Needs KVM and the
    /// test guest, as the machine is really created.
    @Test(.timeLimit(.minutes(30))) func failedStartLeavesNoSocket() throws {
        let scratch = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: scratch) }
        let serial = scratch.appendingPathComponent("serial.sock").path
        let result = try ChildProcess.run(
            [TestSupport.vmmBinary, "--kernel", try TestSupport.guestELF.get(), "--serial", "socket:\(serial)",
             "--control-socket", scratch.appendingPathComponent("missing/control.sock").path], timeout: 10)
        #expect(result.termination == .exited(2), "\(result.termination): \(result.stderr)")
        #expect(result.stderr.contains("control_socket"), "\(result.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).isEmpty, "left behind")
    }
}
