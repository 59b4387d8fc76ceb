import Foundation
import MartletCore
import MartletSystem
import Synchronization
import Testing

@testable import MartletHost

/// The REST API against hostile requests (issue 12): bad names in paths and bodies, sizes
/// that are zero, fractional or near 2^64, multicast MACs, FIFOs as images, wrong methods.
/// Each is answered 4xx within a second and leaves the VM and pool folders as they were;
/// racing creates of one name give one 201 and 409s; the socket is 0600 under umask 000 and
/// never replaces a file or a live server's socket.
@Suite(.serialized, .timeLimit(.minutes(30))) struct HostileAPITests {
    struct Case: CustomStringConvertible, Sendable {
        var method: String
        var path: String
        var body: String?
        var status: Int
        /// What the answer must mention (the field), "" for nothing in particular.
        var mentions: String
        var description: String { "\(method) \(path) \(body ?? "")" }
    }

    static func vm(_ fields: String) -> String {
        #"{"name": "vm1", "kernel": "@/kernel", "# + fields + "}"
    }

    static let cases: [Case] = [
        Case(method: "POST", path: "/v1/vms", body: #"{"name": "../evil", "kernel": "@/kernel"}"#, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/vms", body: #"{"name": "a/b", "kernel": "@/kernel"}"#, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/vms", body: #"{"name": "", "kernel": "@/kernel"}"#, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/vms", body: #"{"name": "Evil", "kernel": "@/kernel"}"#, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/vms", body: #"{"name": "x\u0000y", "kernel": "@/kernel"}"#, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/vms", body: #"{"name": "tap%d", "kernel": "@/kernel"}"#, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/vms", body: #"{"kernel": "@/kernel"}"#, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""memory": "1.1""#), status: 400, mentions: "memory"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""memory": "18446744073709551615""#), status: 400, mentions: "memory"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""memory": "0""#), status: 400, mentions: "memory"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""memory": "1500KiB""#), status: 400, mentions: "memory"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""vcpus": 0"#), status: 400, mentions: "vcpus"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""vcpus": 100000"#), status: 400, mentions: "vcpus"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""nics": [{"mac": "ff:ff:ff:ff:ff:ff"}]"#), status: 400, mentions: "mac"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""nics": [{"mac": "00:00:00:00:00:00"}]"#), status: 400, mentions: "mac"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""nics": [{"mac": "+1:+2:+3:+4:+5:+6"}]"#), status: 400, mentions: "mac"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""nics": [{"queues": 0}]"#), status: 400, mentions: "queues"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""nics": [{"queues": 9}]"#), status: 400, mentions: "queues"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""disks": [{"pool": "../x", "volume": "v"}]"#), status: 400, mentions: "pool"),
        Case(method: "POST", path: "/v1/vms", body: #"{"name": "vm1", "kernel": ""}"#, status: 400, mentions: "kernel"),
        Case(method: "POST", path: "/v1/vms", body: vm(#""onCrash": "explode""#), status: 400, mentions: "onCrash"),
        Case(method: "POST", path: "/v1/vms", body: "{not json", status: 400, mentions: "JSON"),
        Case(method: "POST", path: "/v1/vms", body: "[]", status: 400, mentions: "JSON"),
        Case(method: "PUT", path: "/v1/vms/..%2Fevil", body: vm(""), status: 400, mentions: "name"),
        Case(method: "GET", path: "/v1/vms/Evil", body: nil, status: 400, mentions: "name"),
        Case(method: "DELETE", path: "/v1/vms/a%2Fb", body: nil, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/vms/..%2F..%2Fetc/start", body: nil, status: 400, mentions: "name"),
        Case(method: "PATCH", path: "/v1/vms", body: "{}", status: 405, mentions: "GET, POST"),
        Case(method: "DELETE", path: "/v1/vms", body: nil, status: 405, mentions: "GET, POST"),
        Case(method: "PUT", path: "/v1/pools", body: "{}", status: 405, mentions: "GET"),
        Case(method: "GET", path: "/v1/vms/vm1/start", body: nil, status: 405, mentions: "POST"),
        Case(method: "POST", path: "/v1/pools/local", body: "{}", status: 405, mentions: "GET"),
        Case(method: "POST", path: "/v1/pools/local/volumes", body: #"{"name": "v", "size": "0"}"#, status: 400, mentions: "size"),
        Case(method: "POST", path: "/v1/pools/local/volumes", body: #"{"name": "v", "size": "1.1"}"#, status: 400, mentions: "size"),
        Case(method: "POST", path: "/v1/pools/local/volumes", body: #"{"name": "v", "size": "99999999999999999999"}"#, status: 400, mentions: "size"),
        Case(method: "POST", path: "/v1/pools/local/volumes", body: #"{"name": "../v", "size": "1MiB"}"#, status: 400, mentions: "name"),
        Case(method: "POST", path: "/v1/pools/local/volumes", body: #"{"name": "v", "image": "@/fifo"}"#, status: 400, mentions: "FIFO"),
        Case(method: "POST", path: "/v1/pools/local/volumes", body: #"{"name": "v", "image": "@/folder"}"#, status: 400, mentions: "directory"),
        Case(method: "POST", path: "/v1/pools/local/volumes", body: #"{"name": "v", "image": "/dev/zero"}"#, status: 400, mentions: "character device"),
        Case(method: "POST", path: "/v1/pools/..%2F/volumes", body: #"{"name": "v", "size": "1MiB"}"#, status: 400, mentions: "pool"),
        Case(method: "PATCH", path: "/v1/vms/Evil", body: #"{"vcpus": 2}"#, status: 400, mentions: "name"),
        Case(method: "PATCH", path: "/v1/vms/vm1", body: #"{"vcpus": 2}"#, status: 404, mentions: "vm1"),
        Case(method: "PUT", path: "/v1/pools/local/volumes/..%2Fv/content", body: "x", status: 400, mentions: "volume"),
        Case(method: "PUT", path: "/v1/pools/local/volumes/v/content?format=vmdk", body: "x", status: 400, mentions: "format"),
        Case(method: "POST", path: "/v1/pools/local/volumes/v/content", body: "x", status: 405, mentions: "PUT"),
        Case(method: "DELETE", path: "/v1/host/install-log", body: nil, status: 405, mentions: "GET"),
    ]

    /// Every file under `folder` with its size and bytes (small files).
    static func tree(_ folder: String) -> [String: String] {
        var result: [String: String] = [:]
        let enumerator = FileManager.default.enumerator(atPath: folder)
        while let name = enumerator?.nextObject() as? String {
            var info = stat()
            lstat(folder + "/" + name, &info)
            result[name] = "\(info.st_mode) \(info.st_size) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
        }
        return result
    }

    @Test func hostileRequestsAreRefusedWithoutSideEffects() throws {
        #expect(Self.cases.count >= 30)
        let fixture = try HostFixture(label: "hostile-api")
        try Data(repeating: 0x90, count: 4096).write(to: URL(fileURLWithPath: fixture.root + "/kernel"))
        #expect(mkfifo(fixture.root + "/fifo", 0o600) == 0)
        try FileManager.default.createDirectory(atPath: fixture.root + "/folder", withIntermediateDirectories: false)
        let api = try APIProcess(fixture: fixture)
        // The server's own log and socket change as it runs (it may still be writing its
        // start-up line and setting the socket's mode); everything else must stay as it was.
        func hostFiles() -> [String: String] { Self.tree(fixture.root).filter { !["api.log", "api.sock"].contains($0.key) } }
        let before = hostFiles()
        for testCase in Self.cases {
            let started = Date()
            let answer = try api.request(testCase.method, testCase.path, testCase.body?.replacingOccurrences(of: "@", with: fixture.root))
            let seconds = Date().timeIntervalSince(started)
            #expect(answer.status == testCase.status, "\(testCase): \(answer.status) \(answer.body)")
            #expect(answer.body.contains(testCase.mentions), "\(testCase): names \(testCase.mentions): \(answer.body)")
            #expect(seconds < 1, "\(testCase): took \(seconds) s")
            let after = hostFiles()
            #expect(after == before, "\(testCase) changed files: \(Set(after.keys).symmetricDifference(before.keys))")
        }
    }

    @Test func racingCreatesOfOneNameGiveOneWinner() throws {
        let fixture = try HostFixture(label: "hostile-race")
        try Data(repeating: 0x90, count: 4096).write(to: URL(fileURLWithPath: fixture.root + "/kernel"))
        let api = try APIProcess(fixture: fixture)
        let body = #"{"name": "race", "memory": "1500MiB", "kernel": "\#(fixture.root)/kernel"}"#
        let statuses = Mutex<[Int]>([])
        // request() only reads the socket path: safe from several threads at once.
        nonisolated(unsafe) let client = api
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            let status = (try? client.request("POST", "/v1/vms", body).status) ?? 0
            statuses.withLock { $0.append(status) }
        }
        let all = statuses.withLock { $0 }.sorted()
        #expect(all == [201] + Array(repeating: 409, count: 7), "\(all)")
        #expect(try fixture.host.definition("race").memory == .mib(1500), "1500MiB is stored exactly")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: fixture.paths.vmsDirectory)
        #expect(leftovers == ["race.toml"], "no temporary files left: \(leftovers)")
    }

    @Test func theSocketIsOwnerOnlyAndNeverReplacesAFile() throws {
        let fixture = try HostFixture(label: "hostile-socket")
        let socket = fixture.root + "/api.sock"
        let variables = fixture.environment.map { "\($0.key)=\($0.value)" }
        let log = try FileDescriptor.open(fixture.root + "/api.log", O_WRONLY | O_CREAT | O_APPEND)
        let null = try FileDescriptor.open("/dev/null", O_RDONLY)
        let pid = try ChildProcess.spawn(
            ["/bin/sh", "-c", "umask 000; exec \"$@\"", "sh", "/usr/bin/env"] + variables
                + [TestSupport.product("martlet"), "api", "serve", "--socket", socket],
            stdin: null.raw, stdout: log.raw, stderr: log.raw)
        defer {
            kill(pid, SIGTERM)
            _ = ChildProcess.wait(pid)
        }
        #expect(Poll.until(timeout: 20) {
            var info = stat()
            return lstat(socket, &info) == 0 && info.st_mode & 0o777 == 0o600
        }, "the API socket is mode 0600 under umask 000")

        let second = try ChildProcess.run(
            ["/usr/bin/env"] + variables + [TestSupport.product("martlet"), "api", "serve", "--socket", socket], timeout: 10)
        #expect(second.status != 0 && second.stderr.contains("another API server"), "\(second.termination): \(second.stderr)")
        let curl = try ChildProcess.run(["curl", "-sS", "--max-time", "5", "--unix-socket", socket, "http://localhost/v1/pools"])
        #expect(curl.stdout.contains("local"), "the first server still answers: \(curl.stderr)")

        let precious = fixture.root + "/precious"
        try "keep me".write(toFile: precious, atomically: false, encoding: .utf8)
        let onFile = try ChildProcess.run(
            ["/usr/bin/env"] + variables + [TestSupport.product("martlet"), "api", "serve", "--socket", precious], timeout: 10)
        #expect(onFile.status != 0 && onFile.stderr.contains("not a socket"), "\(onFile.termination): \(onFile.stderr)")
        #expect(try String(contentsOfFile: precious, encoding: .utf8) == "keep me")
    }
}
