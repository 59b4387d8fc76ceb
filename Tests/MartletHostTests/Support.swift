import Foundation
import MartletCore
import MartletSystem
import Testing

@testable import MartletHost

/// Paths, programs and fixtures shared by the host tests.
enum TestSupport {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// A fresh temporary directory; the caller removes it.
    static func temporaryDirectory(_ label: String) throws -> String {
        let path = NSTemporaryDirectory() + "martlet-host-\(label)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A built executable of this package (swift test builds the products too).
    static func product(_ name: String) -> String {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [bundle, bundle.deletingLastPathComponent()] {
            let path = candidate.appendingPathComponent(name).path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return repository.appendingPathComponent(".build/debug/\(name)").path
    }

    /// The VMM's tiny test guest (Sources/MartletVMM/Guest), built once with gcc. Its command
    /// line picks what it does: `test=halt` prints the command line and keeps the VM running,
    /// `test=poweroff` powers off, `test=echo` echoes a console line, `test=net` sends ARP
    /// requests over virtio-net, `test=reset-once` resets once.
    static let guest: Result<String, MartletError> = {
        // One shared path, replaced atomically, so repeated runs leave nothing behind.
        let directory = NSTemporaryDirectory() + "martlet-host-guest"
        try? FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true)
        let elf = directory + "/guest.elf"
        let building = directory + "/guest-\(getpid()).elf"
        let script = repository.appendingPathComponent("Sources/MartletVMM/Guest/build.sh").path
        do {
            try Command("/bin/bash", [script, building]).run()
            guard rename(building, elf) == 0 else { throw MartletError.system("rename", path: elf) }
            return .success(elf)
        } catch let error as MartletError {
            return .failure(error)
        } catch {
            return .failure(MartletError(.failed, "\(error)"))
        }
    }()

    /// Runs a command with extra environment variables (through env(1)) and returns its
    /// status and output; posix_spawn based, see `ChildProcess`.
    @discardableResult
    static func run(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:],
        input: String? = nil
    ) throws -> ChildProcess.Output {
        let variables = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let result = try ChildProcess.run(
            ["/usr/bin/env"] + variables + [executable] + arguments,
            input: Array((input ?? "").utf8), timeout: 120)
        if case .timedOut = result.termination {
            Issue.record("\(executable) \(arguments.joined(separator: " ")) \(result.termination)")
        }
        return result
    }
}

/// A host layout in a temporary directory: definitions, run state and one directory pool.
final class HostFixture {
    let root: String
    private(set) var paths: HostPaths
    let host: VMHost

    init(label: String, extraPools: String = "") throws {
        root = try TestSupport.temporaryDirectory(label)
        try FileManager.default.createDirectory(
            atPath: root + "/pool", withIntermediateDirectories: true)
        try """
        [[pool]]
        name = "local"
        type = "directory"
        path = "\(root)/pool"
        \(extraPools)
        """.write(toFile: root + "/storage.toml", atomically: true, encoding: .utf8)
        paths = HostPaths(
            vmsDirectory: root + "/vms", storageConfiguration: root + "/storage.toml",
            runDirectory: root + "/run",
            vmm: TestSupport.product("martlet-vmm"), vmmUser: "")
        // The API's files in the fixture too, and HTTPS off unless a test turns it on: no
        // test serves on the machine's port 8443 or writes to its /etc.
        paths.apiConfiguration = root + "/api.toml"
        paths.apiTokens = root + "/api/tokens.json"
        paths.tlsDirectory = root + "/tls"
        paths.apiIssueFile = root + "/issue.d/martlet-api.issue"
        try "[https]\nenabled = false\n".write(toFile: paths.apiConfiguration, atomically: true, encoding: .utf8)
        host = VMHost(paths: paths)
    }

    /// The environment that points the `martlet` CLI at this layout.
    var environment: [String: String] {
        [
            "MARTLET_VMS_DIR": paths.vmsDirectory,
            "MARTLET_STORAGE_CONFIG": paths.storageConfiguration,
            "MARTLET_RUN_DIR": paths.runDirectory, "MARTLET_VMM": paths.vmm, "MARTLET_VMM_USER": "",
            "MARTLET_NO_SYSTEMD": "1", "MARTLET_STOP_GRACE": "1",
            "MARTLET_API_CONFIG": paths.apiConfiguration, "MARTLET_API_TOKENS": paths.apiTokens,
            "MARTLET_TLS_DIR": paths.tlsDirectory, "MARTLET_API_ISSUE": paths.apiIssueFile,
        ]
    }

    /// Writes `jail = false` into `vm`'s definition: for stand-in VMM scripts, which need
    /// the host's /bin/sh and files the jail does not hold.
    func runUnjailed(_ vm: String) throws {
        let file = paths.definition(vm)
        let text = try String(contentsOfFile: file, encoding: .utf8)
        try ("jail = false\n" + text).write(toFile: file, atomically: true, encoding: .utf8)
    }

    deinit {
        // Stop whatever a failed test left running before removing its files.
        for name in (try? host.definitions().map(\.name)) ?? [] where host.runnerPID(name) != nil {
            _ = try? host.stop(name)
        }
        try? FileManager.default.removeItem(atPath: root)
    }
}
