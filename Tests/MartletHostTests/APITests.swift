import Foundation
import MartletCore
import MartletSystem
import Testing

@testable import MartletHost

/// `martlet api serve` on a unix socket, driven with curl --unix-socket like a client would.
final class APIProcess {
    let socket: String
    let pid: pid_t

    init(fixture: HostFixture) throws {
        socket = fixture.root + "/api.sock"
        let log = try FileDescriptor.open(fixture.root + "/api.log", O_WRONLY | O_CREAT | O_APPEND)
        let null = try FileDescriptor.open("/dev/null", O_RDONLY)
        let variables = fixture.environment.sorted { $0.key < $1.key }.map {
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
