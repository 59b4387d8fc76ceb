import Foundation
import MartletCore
import MartletSystem
import Testing

@testable import MartletHost

/// `martlet api serve` on a unix socket, driven with curl --unix-socket like a client would.
final class APIProcess {
    let socket: String
    let pid: pid_t

    init(fixture: HostFixture, socketName: String = "api.sock", extraEnvironment: [String: String] = [:]) throws {
        socket = fixture.root + "/" + socketName
        let log = try FileDescriptor.open(fixture.root + "/api.log", O_WRONLY | O_CREAT | O_APPEND)
        let null = try FileDescriptor.open("/dev/null", O_RDONLY)
        let variables = fixture.environment.merging(extraEnvironment) { $1 }.sorted { $0.key < $1.key }.map {
            "\($0.key)=\($0.value)"
        }
        pid = try ChildProcess.spawn(
            ["/usr/bin/env"] + variables + [
                TestSupport.product("martlet"), "api", "serve", "--socket", socket,
            ],
            stdin: null.raw, stdout: log.raw, stderr: log.raw)
        let socket = self.socket
        #expect(
            Poll.until(timeout: 20) { FileManager.default.fileExists(atPath: socket) },
            "martlet api serve did not create \(socket); see \(fixture.root)/api.log")
    }

    /// One request; returns the HTTP status and the body.
    func request(_ method: String, _ path: String, _ body: String? = nil) throws -> (
        status: Int, body: String
    ) {
        var arguments = [
            "curl", "-sS", "--max-time", "30", "--unix-socket", socket, "-X", method, "-w",
            "\n%{http_code}",
        ]
        if let body { arguments += ["-H", "Content-Type: application/json", "--data", body] }
        let output = try ChildProcess.run(arguments + ["http://localhost\(path)"])
        let lines = output.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    deinit {
        kill(pid, SIGTERM)
        _ = ChildProcess.wait(pid)
    }
}

@Suite(.serialized, .timeLimit(.minutes(30))) struct APITests {
    /// The web UI's live VM list: GET /v1/vms as server-sent events sends the list at once,
    /// then again when a VM is defined and when one is deleted.
    @Test func theVMListAsServerSentEventsFollowsChanges() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "api-events")
        let api = try APIProcess(fixture: fixture)
        let events = fixture.root + "/events.txt"
        let output = try FileDescriptor.open(events, O_WRONLY | O_CREAT | O_TRUNC)
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        let curl = try ChildProcess.spawn(
            ["curl", "-sN", "--max-time", "60", "--unix-socket", api.socket, "-H", "Accept: text/event-stream", "http://localhost/v1/vms"],
            stdin: null.raw, stdout: output.raw, stderr: null.raw)
        defer {
            kill(curl, SIGTERM)
            _ = ChildProcess.wait(curl)
        }
        func eventually(_ what: String, _ text: String) -> Bool {
            let seen = Poll.until(timeout: 15, interval: 0.1) {
                ((try? String(contentsOfFile: events, encoding: .utf8)) ?? "").contains(text)
            }
            let content = (try? String(contentsOfFile: events, encoding: .utf8)) ?? ""
            #expect(seen, "\(what): no \(text) in the events: \(content)")
            return seen
        }
        #expect(eventually("the list at once", "data: []\n\n"))
        let created = try api.request("POST", "/v1/vms", #"{"name": "sse-vm", "memory": "16MiB", "kernel": "\#(guest)"}"#)
        #expect(created.status == 201, "\(created.body)")
        #expect(eventually("the new VM", #""name":"sse-vm""#))
        #expect(try api.request("DELETE", "/v1/vms/sse-vm").status == 204)
        let content = { (try? String(contentsOfFile: events, encoding: .utf8)) ?? "" }
        #expect(
            Poll.until(timeout: 15, interval: 0.1) { content().components(separatedBy: "data: []\n\n").count == 3 },
            "the empty list again after the delete: \(content())")
    }

    @Test func vmLifecycleThroughTheAPI() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "api")
        let api = try APIProcess(fixture: fixture)
        #expect(FileManager.default.fileExists(atPath: api.socket), "the API socket appears")

        let pools = try api.request("GET", "/v1/pools")
        #expect(pools.status == 200)
        #expect(pools.body.contains("\"name\":\"local\""), "\(pools.body)")

        let volume = try api.request(
            "POST", "/v1/pools/local/volumes", #"{"name": "api-root", "size": "16MiB"}"#)
        #expect(volume.status == 201, "\(volume.body)")
        #expect(api.json(volume.body)["size"] as? Int == 16 << 20)
        #expect(
            try api.request(
                "POST", "/v1/pools/local/volumes", #"{"name": "api-root", "size": "16MiB"}"#
            ).status == 409)
        #expect(try api.request("POST", "/v1/pools/local/volumes", #"{"name": "x"}"#).status == 400)
        #expect(try api.request("GET", "/v1/pools/nope").status == 404)

        let definition = """
            {"name": "api-vm", "memory": "32MiB", "kernel": "\(guest)",
             "cmdline": "test=halt api-test", "disks": [{"pool": "local", "volume": "api-root"}]}
            """
        let created = try api.request("POST", "/v1/vms", definition)
        #expect(created.status == 201, "\(created.body)")
        #expect(try api.request("POST", "/v1/vms", definition).status == 409)
        let bad = try api.request(
            "POST", "/v1/vms", #"{"name": "bad", "kernel": "/k", "vcpus": 99}"#)
        #expect(bad.status == 400)
        #expect(bad.body.contains("vcpus"), "\(bad.body)")

        let started = try api.request("POST", "/v1/vms/api-vm/start")
        #expect(started.status == 200, "\(started.body)")
        #expect(api.json(started.body)["state"] as? String == "running")
        // The server binds under umask 077 but must not keep it: the VMM, running as its own
        // user on a host, reads its configuration in this directory (an e2e run caught 0700).
        var state = stat()
        #expect(stat(fixture.paths.state("api-vm"), &state) == 0)
        #expect(state.st_mode & 0o777 == 0o755, "run directory mode \(String(state.st_mode & 0o777, radix: 8))")
        #expect(try api.request("DELETE", "/v1/pools/local/volumes/api-root").status == 409)
        #expect(try api.request("DELETE", "/v1/vms/api-vm").status == 409)

        var console = ""
        _ = try Poll.until(timeout: 10, interval: 0.1) {
            console = try api.request("GET", "/v1/vms/api-vm/console").body
            return console.contains("cmdline: test=halt api-test")
        }
        #expect(console.contains("halting, cmdline: test=halt api-test"), "\(console)")

        let stopped = try api.request("POST", "/v1/vms/api-vm/stop")
        #expect(api.json(stopped.body)["state"] as? String == "stopped", "\(stopped.body)")
        #expect(try api.request("DELETE", "/v1/vms/api-vm?volumes=true").status == 204)
        #expect(try api.request("GET", "/v1/vms/api-vm").status == 404)
        #expect(try api.request("GET", "/v1/pools/local/volumes").body == "[]")
    }

    /// Volume import from a URL with a digest, and a VM with a cloud-init table, through
    /// the REST API: the same checks and refusals as the CLI, with their HTTP statuses.
    @Test func importAndCloudInitThroughTheAPI() throws {
        let fixture = try HostFixture(label: "api-import")
        let served = fixture.root + "/served"
        try FileManager.default.createDirectory(atPath: served, withIntermediateDirectories: true)
        var bytes = [UInt8](repeating: 0, count: 2 << 20)
        bytes.replaceSubrange(4096..<4106, with: Array("api import".utf8))
        try Data(bytes).write(to: URL(fileURLWithPath: served + "/image.raw"))
        let digest = try Digest.sha256(file: served + "/image.raw")
        let server = try LocalHTTPServer(directory: served)
        let api = try APIProcess(fixture: fixture)

        func post(_ body: String) throws -> (status: Int, body: String) {
            try api.request("POST", "/v1/pools/local/volumes", body)
        }
        let imported = try post(
            #"{"name": "web", "image": "\#(server.url("image.raw"))", "sha256": "\#(digest)"}"#)
        #expect(imported.status == 201, "\(imported.body)")
        #expect(api.json(imported.body)["size"] as? Int == 2 << 20)
        let mismatch = try post(
            #"{"name": "bad", "image": "\#(server.url("image.raw"))", "sha256": "\#(String(repeating: "0", count: 64))"}"#)
        #expect(mismatch.status == 422, "\(mismatch.body)")
        #expect(mismatch.body.contains("verificationFailed"), "\(mismatch.body)")
        let missing = try post(#"{"name": "bad", "image": "\#(server.url("nope.raw"))"}"#)
        #expect(missing.status == 500)
        #expect(missing.body.contains("HTTP 404"), "\(missing.body)")
        #expect(try post(#"{"name": "bad", "image": "ftp://127.0.0.1/x"}"#).status == 400)
        #expect(try fixture.host.pool("local").volumes().map(\.name) == ["web"])

        let created = try api.request(
            "POST", "/v1/vms",
            #"{"name": "ci", "kernel": "/k", "disks": [{"pool": "local", "volume": "web"}], "nics": [{}], "cloudInit": {"hostname": "ci-host", "ip": "192.0.2.10/24"}}"#
        )
        // The kernel does not exist: refused like the CLI; with a kernel that does, created.
        #expect(created.status == 404, "\(created.body)")
        let kernel = served + "/image.raw"
        let good = try api.request(
            "POST", "/v1/vms",
            #"{"name": "ci", "kernel": "\#(kernel)", "nics": [{}], "cloudInit": {"hostname": "ci-host", "ip": "192.0.2.10/24"}}"#
        )
        #expect(good.status == 201, "\(good.body)")
        #expect(try fixture.host.definition("ci").cloudInit == .init(hostname: "ci-host", ip: "192.0.2.10/24"))
        let bad = try api.request(
            "POST", "/v1/vms", #"{"name": "ci2", "kernel": "\#(kernel)", "cloudInit": {"ip": "192.0.2.10/24"}}"#)
        #expect(bad.status == 400)
        #expect(bad.body.contains("cloud-init.ip"), "\(bad.body)")
    }

    /// `"boot": "disk"`: defined without a kernel, the default firmware in the definition the
    /// API returns; a kernel with it is refused naming both keys. (Booting it needs real mode,
    /// which these machines' /dev/kvm lacks: NestedFirmwareTests boots firmware for real.)
    @Test func diskBootVMThroughTheAPI() throws {
        let fixture = try HostFixture(label: "api-disk")
        let api = try APIProcess(fixture: fixture)
        #expect(
            try api.request("POST", "/v1/pools/local/volumes", #"{"name": "img", "size": "4MiB"}"#).status == 201)
        let created = try api.request(
            "POST", "/v1/vms", #"{"name": "fw", "boot": "disk", "disks": [{"pool": "local", "volume": "img"}]}"#)
        #expect(created.status == 201, "\(created.body)")
        let shown = try api.request("GET", "/v1/vms/fw")
        let boot = (api.json(shown.body)["definition"] as? [String: Any])?["boot"] as? [String: Any]
        #expect(boot?["mode"] as? String == "disk", "\(shown.body)")
        #expect(boot?["kernel"] == nil, "\(shown.body)")
        #expect(try String(contentsOfFile: fixture.paths.definition("fw"), encoding: .utf8).contains("mode = \"disk\""))

        let both = try api.request(
            "POST", "/v1/vms",
            #"{"name": "both", "boot": "disk", "kernel": "/boot/vmlinuz", "disks": [{"pool": "local", "volume": "img"}]}"#)
        #expect(both.status == 400)
        #expect(both.body.contains("boot.kernel and boot.firmware conflict"), "\(both.body)")
        let unknown = try api.request("POST", "/v1/vms", #"{"name": "odd", "boot": "pxe"}"#)
        #expect(unknown.status == 400)
        #expect(unknown.body.contains("boot: 'pxe' is not one of kernel, disk"), "\(unknown.body)")
    }
}
