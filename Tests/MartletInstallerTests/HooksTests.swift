import Foundation
import MartletAnswer
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletInstaller

private func answer(_ extra: String) throws -> AnswerFile {
    try AnswerFile.parse(path: "a.toml", contents: validAnswer() + "\n" + extra + "\n")
}

/// A unit file's `Key=value` lines by section.
private func keys(_ text: String) -> [String: [String]] {
    var result: [String: [String]] = [:]
    var section = ""
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        if line.hasPrefix("[") {
            section = String(line.dropFirst().dropLast())
        } else {
            result[section, default: []].append(String(line))
        }
    }
    return result
}

@Suite("First-boot hook and post-install webhook")
struct HooksTests {
    @Test("the answer's [first-boot] and [post-install] parse and are written back the same")
    func parsing() throws {
        let parsed = try answer(
            """
            [first-boot]
            script = "/hooks/first-boot.sh"
            at = "network-online"
            [post-install]
            webhook = "https://deploy.example.org/installed?host=hv1"
            """)
        #expect(parsed.firstBoot == .init(script: "/hooks/first-boot.sh", at: .networkOnline))
        #expect(parsed.postInstall == .init(webhook: "https://deploy.example.org/installed?host=hv1"))
        #expect(try AnswerFile.parse(path: "b.toml", contents: parsed.toml) == parsed)
        #expect(try answer("[first-boot]\nscript = \"https://x.example.org/a.sh\"").firstBoot?.at == .multiUser)
        let plan = try InstallPlan.make(
            answer: parsed, disks: [Disk(path: "/dev/sdz", name: "sdz", size: .gib(64))], nics: [])
        #expect(plan.text.contains("first boot: runs /hooks/first-boot.sh at network-online"))
        #expect(plan.text.contains("webhook:   https://deploy.example.org/installed?host=hv1"))
    }

    @Test("the unit runs once at the chosen point, logs to the journal and disables itself", arguments: [
        (AnswerFile.FirstBootPoint.beforeNetwork, ["Wants=network-pre.target", "Before=network-pre.target"]),
        (.networkOnline, ["Wants=network-online.target", "After=network-online.target"]),
        (.multiUser, ["After=multi-user.target"]),
    ])
    func unit(point: AnswerFile.FirstBootPoint, ordering: [String]) throws {
        let unit = keys(FirstBootHook.unit(at: point))
        #expect(
            unit["Unit"] == [
                "Description=Martlet first-boot hook (\(point.rawValue)) from the answer file",
            ] + ordering + ["ConditionPathExists=/var/lib/martlet/first-boot/script"])
        #expect(
            unit["Service"] == [
                "Type=oneshot", "ExecStart=/var/lib/martlet/first-boot/script",
                "ExecStopPost=/usr/bin/systemctl disable martlet-first-boot.service",
                "StandardOutput=journal", "StandardError=journal",
                "SyslogIdentifier=martlet-first-boot", "TimeoutStartSec=30min",
            ])
        #expect(unit["Install"] == ["WantedBy=multi-user.target"])
    }

    @Test("script, unit and enabling link land in a target tree; systemd-analyze finds no bad key")
    func installIntoTree() throws {
        let dir = try TemporaryDirectory()
        let medium = "\(dir.path)/medium"
        try FileManager.default.createDirectory(atPath: medium + "/hooks", withIntermediateDirectories: true)
        let script = "#!/bin/sh\necho first boot\n"
        try script.write(toFile: medium + "/hooks/first.sh", atomically: true, encoding: .utf8)
        let hook = AnswerFile.FirstBootAnswer(script: "/hooks/first.sh", at: .networkOnline)
        let root = "\(dir.path)/target"
        try FirstBootHook.install(script: try FirstBootHook.script(hook, medium: medium), at: hook.at, into: root)
        let installed = root + FirstBootHook.scriptPath
        #expect(try String(contentsOfFile: installed, encoding: .utf8) == script)
        func mode(_ path: String) throws -> Int {
            (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? -1
        }
        #expect(try mode(installed) == 0o700)
        let unitPath = "\(root)/etc/systemd/system/\(FirstBootHook.unitName)"
        #expect(try mode(unitPath) == 0o644)
        #expect(
            try FileManager.default.destinationOfSymbolicLink(
                atPath: "\(root)/etc/systemd/system/multi-user.target.wants/\(FirstBootHook.unitName)")
                == "/etc/systemd/system/\(FirstBootHook.unitName)")
        // A second install into the same tree refuses to replace what is there.
        #expect(throws: MartletError.self) {
            try FirstBootHook.install(script: Data(script.utf8), at: .multiUser, into: root)
        }
        let missing = #expect(throws: MartletError.self) {
            try FirstBootHook.script(.init(script: "/hooks/none.sh"), medium: medium)
        }
        #expect(missing?.message.contains("first-boot.script") == true)

        // systemd's own parser: no unknown section or key, no bad value. The script path
        // exists only on the target, so that complaint alone is expected.
        let verify = try Command("systemd-analyze", ["verify", unitPath]).runAllowingFailure()
        let complaints = verify.stderr.split(separator: "\n").filter {
            !$0.contains("\(FirstBootHook.scriptPath) is not executable")
        }
        #expect(complaints.isEmpty, "\(verify.stderr)")
    }

    @Test("the webhook is POSTed the install result as JSON")
    func webhook() throws {
        let dir = try TemporaryDirectory()
        let server = try AnswerServer(directory: dir.path, answer: "ok\n", certificate: nil)
        let machine = MachineInventory(
            disks: [Disk(path: "/dev/sda", name: "sda", size: .gib(240))],
            nics: [NIC(name: "eno1", mac: "52:54:00:aa:00:01")], dmi: ["serial": "CZ1"])
        let report = InstallReport(
            hostname: "hv1.example.org", result: "failed", error: "install step 'copy' failed",
            target: "/dev/sda", seconds: 12.5, machine: machine)
        #expect(report.post(to: "http://127.0.0.1:\(server.port)/installed") == nil)
        let received = try JSONDecoder().decode(
            InstallReport.self, from: Data(contentsOf: URL(fileURLWithPath: server.received)))
        #expect(received == report)
        let failure = report.post(to: "http://127.0.0.1:1/installed")
        #expect(failure?.message.contains("post-install.webhook http://127.0.0.1:1/installed") == true)
    }
}
