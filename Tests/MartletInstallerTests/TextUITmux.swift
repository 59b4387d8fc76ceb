import Foundation
import MartletAnswer
import MartletCore
import MartletTestSupport

@testable import MartletInstaller

/// The real martlet-installer in an 80x24 tmux session on a private tmux server, driven with
/// send-keys and read with capture-pane. `deinit` kills the server (and the installer).
final class TmuxInstaller {
    let socket = "martlet-tui-\(getpid())-\(UUID().uuidString.prefix(6))"
    let directory: TemporaryDirectory
    /// A stand-in `systemctl` that only records its arguments, so a Reboot or Power off pressed
    /// by a test cannot take the shared machine down.
    var systemctlCalls: String {
        (try? String(contentsOfFile: "\(directory.path)/systemctl.calls", encoding: .utf8)) ?? ""
    }

    init(arguments: [String]) throws {
        directory = try TemporaryDirectory("martlet-tui")
        try FileManager.default.createDirectory(atPath: "\(directory.path)/bin", withIntermediateDirectories: true)
        let stub = "\(directory.path)/bin/systemctl"
        _ = FileManager.default.createFile(
            atPath: stub, contents: Data("#!/bin/sh\necho \"$@\" >> \(directory.path)/systemctl.calls\n".utf8),
            attributes: [.posixPermissions: 0o755])
        let quoted = ([TestPaths.executable("martlet-installer")] + arguments).map { "'\($0)'" }.joined(separator: " ")
        // xterm-mono: no colours at all, as on a serial console or a BMC's text screen.
        let command =
            "TERM=xterm-mono PATH=\(directory.path)/bin:/usr/sbin:/usr/bin:/sbin:/bin \(quoted) 2>\(directory.path)/stderr; "
            + "echo MARTLET-EXIT=$?; sleep 3600"
        // The tmux server outlives the client that starts it and inherits its descriptors:
        // Foundation's Process would wait for them to close forever, so spawn it directly
        // with every standard stream on /dev/null.
        let status = try spawnAndWait(
            Tool.resolve("tmux"), ["-L", socket, "new-session", "-d", "-x", "80", "-y", "24", command])
        guard status == 0 else { throw MartletError(.failed, "tmux new-session failed with status \(status)") }
        let pids = try tmux(["display", "-p", "#{pid} #{pane_pid}"]).split(separator: " ").compactMap {
            pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        (serverPID, panePID) = pids.count == 2 ? (pids[0], pids[1]) : (0, 0)
    }

    private var serverPID: pid_t = 0
    private var panePID: pid_t = 0

    /// kill-server alone leaves the server waiting for a pane whose program ignores SIGHUP
    /// (newt does): kill the pane's process group and the server by their ids.
    deinit {
        if panePID > 0 { kill(-panePID, SIGKILL) }
        _ = try? tmux(["kill-server"])
        if serverPID > 0 { kill(serverPID, SIGKILL) }
        try? FileManager.default.removeItem(atPath: "/tmp/tmux-\(getuid())/\(socket)")
    }

    @discardableResult
    private func tmux(_ arguments: [String]) throws -> String {
        try sh("tmux", ["-L", socket] + arguments)
    }

    /// Sends tmux key names (`Tab`, `F12`, `Down`, `Escape`, `C-u`...).
    func keys(_ names: String...) throws {
        for name in names { try tmux(["send-keys", name]) }
    }

    /// Sends Tab and waits until the cursor moves, i.e. the UI took the key: a loop that
    /// watches the cursor must not send keys ahead of a UI slowed down by a busy machine.
    /// Throws, with the screen, when the cursor has not moved after `timeout` seconds.
    func tab(timeout: Double = 15) throws {
        let before = cursor
        try keys("Tab")
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let now = cursor
            if now.x != before.x || now.y != before.y { return }
            usleep(20_000)
        }
        throw MartletError(
            .failed, "the cursor stayed at \(before.x),\(before.y) for \(timeout) s after Tab",
            cause: "screen:\n\((try? screen()) ?? "")\nstderr:\n\(stderr)")
    }

    /// Types `text` literally.
    func type(_ text: String) throws { try tmux(["send-keys", "-l", text]) }

    func screen() throws -> String { try tmux(["capture-pane", "-p"]) }

    /// The whole pane history with wrapped lines joined.
    func history() throws -> String { try tmux(["capture-pane", "-p", "-J", "-S", "-1000"]) }

    var stderr: String { (try? String(contentsOfFile: "\(directory.path)/stderr", encoding: .utf8)) ?? "" }

    var cursor: (x: Int, y: Int) {
        let text = (try? tmux(["display", "-p", "#{cursor_x},#{cursor_y}"])) ?? ""
        let parts = text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").compactMap { Int($0) }
        return parts.count == 2 ? (parts[0], parts[1]) : (-1, -1)
    }

    /// Waits until the screen shows `text`; throws with the screen when it does not.
    @discardableResult
    func waitFor(_ text: String, timeout: Double = 15) throws -> String {
        try waitForScreen("'\(text)'", timeout: timeout) { $0.contains(text) }
    }

    /// Waits until the screen satisfies `condition` (`what` describes it in the error), then
    /// returns the screen as drawn a moment later (newt draws a window in several writes).
    @discardableResult
    func waitForScreen(_ what: String, timeout: Double = 15, _ condition: (String) -> Bool) throws
        -> String
    {
        let deadline = Date().addingTimeInterval(timeout)
        var last = ""
        while Date() < deadline {
            last = try screen()
            if condition(last) {
                usleep(150_000)
                return try screen()
            }
            usleep(100_000)
        }
        throw MartletError(.failed, "the screen never showed \(what)", cause: "screen:\n\(last)\nstderr:\n\(stderr)")
    }

    /// The installer's exit status once it has ended.
    func exitStatus(timeout: Double = 15) throws -> Int {
        let screen = try waitFor("MARTLET-EXIT=", timeout: timeout)
        let line = screen.split(separator: "\n").first { $0.hasPrefix("MARTLET-EXIT=") } ?? ""
        return Int(line.dropFirst("MARTLET-EXIT=".count)) ?? -1
    }

    /// Rows of the list on screen whose text contains `marker`, in screen order.
    func rows(containing marker: String) throws -> [String] {
        try screen().split(separator: "\n").map(String.init).filter { $0.contains(marker) }
    }
}

/// What a walk through the screens chooses.
struct TextUIWalk {
    var keyboardIndex = 2  // de
    var target: String
    var targetHasData = false
    /// The second disk of a RAID1 mirror, chosen on the mirror screen (nil: that screen is not
    /// expected, as with a single disk or no partner of the target's size).
    var mirror: String?
    var mirrorHasData = false
    var storageIndex = 0  // lvm-thin, directory ext4, directory xfs
    var extraDisks: [String] = []
    var staticAddress: (address: String, gateway: String)? = ("192.0.2.10/24", "192.0.2.1")
    var dns = "192.0.2.53 2001:db8::53"
    var hostname = "hv1.example.org"
    var vlan = "42"
    var password = "Correct-Horse-9"
    var sshKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy admin@example.org"
    var timezone = "Europe/Paris"
    /// The NICs to tick on the network screen; two or more make a bond in `bondMode`.
    var interfaces = [Self.allInterfaces.first ?? ""]
    var bondMode = AnswerFile.BondMode.activeBackup
    /// Stop after Next on the network screen (to test its validation).
    var stopAfterNetwork = false

    /// The NICs the network screen lists, in its order.
    static var allInterfaces: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net")) ?? []).sorted().filter { $0 != "lo" }
    }

    /// The same choices written as an answer file by hand.
    func answerFile() -> String {
        let storage = ["lvm-thin", "directory", "directory"][storageIndex]
        let filesystem = storageIndex == 2 ? "xfs" : "ext4"
        var text = """
            [global]
            hostname = "\(hostname)"
            timezone = "\(timezone)"
            keyboard = "\(TextInstaller.keyboards[keyboardIndex].0)"
            root-password = "\(password)"
            root-ssh-keys = ["\(sshKey)"]
            reboot-mode = "reboot"

            [disk]
            \(mirror.map { "targets = [\"\(target)\", \"\($0)\"]\nraid = \"raid1\"" } ?? "target = \"\(target)\"")
            filesystem = "\(filesystem)"
            wipe = true

            [storage]
            type = "\(storage)"
            extra-disks = [\(extraDisks.map { "\"\($0)\"" }.joined(separator: ", "))]

            [network]
            \(interfaces.count > 1 ? "" : "interface = \"\(interfaces[0])\"")
            dns = [\(dns.split(separator: " ").map { "\"\($0)\"" }.joined(separator: ", "))]
            vlan = \(vlan)

            """
        if let staticAddress {
            text += "mode = \"static\"\naddress = \"\(staticAddress.address)\"\ngateway = \"\(staticAddress.gateway)\"\n"
        }
        if interfaces.count > 1 {
            let names = interfaces.map { "\"\($0)\"" }.joined(separator: ", ")
            text += "\n[network.bond]\ninterfaces = [\(names)]\nmode = \"\(bondMode.rawValue)\"\n"
        }
        return text
    }

    /// Drives every screen from Welcome to the summary.
    func drive(_ ui: TmuxInstaller) throws {
        try ui.waitFor("┤ Welcome ├")
        try ui.keys("F12")
        try ui.waitFor("┤ Keyboard layout ├")
        for _ in 0..<25 { try ui.keys("Up") }
        for _ in 0..<keyboardIndex { try ui.keys("Down") }
        try ui.keys("F12")

        try ui.waitFor("┤ Target disk ├")
        try pick(target, in: ui, marker: "│ │ /dev/")
        try ui.keys("F12")
        if targetHasData {
            try ui.waitFor("┤ Check the disk ├")
            try ui.keys("Enter")
        }
        if let mirror {
            try ui.waitFor("┤ Mirror (RAID1) ├")
            // The list's first row is "No mirror", the partners follow.
            try pick(mirror, in: ui, marker: "│ │ ")
            try ui.keys("Enter")
            if mirrorHasData {
                let dialog = try ui.waitFor("┤ Check the disk ├")
                guard dialog.contains("\(mirror) is not empty") else {
                    throw MartletError(.failed, "the warning does not name the mirror disk \(mirror)", cause: dialog)
                }
                try ui.keys("Enter")
            }
        }

        try ui.waitFor("┤ VM storage ├")
        for _ in 0..<storageIndex { try ui.keys("Tab") }
        try ui.keys("Space")
        for _ in storageIndex..<3 { try ui.keys("Tab") }
        if !extraDisks.isEmpty {
            try ui.keys("Tab")
            let rows = try ui.rows(containing: "[ ] /dev/")
            for (index, row) in rows.enumerated() {
                if index > 0 { try ui.keys("Down") }
                if extraDisks.contains(where: { row.contains("\($0) ") }) { try ui.keys("Space") }
            }
        }
        try ui.keys("F12")

        try ui.waitFor("┤ Network ├")
        for _ in 0..<10 { try ui.keys("Up") }
        let nics = try ui.rows(containing: "] ").filter { $0.contains("[*] ") || $0.contains("[ ] ") }
        for (index, row) in nics.enumerated() {
            if index > 0 { try ui.keys("Down") }
            let wanted = interfaces.contains { row.contains("] \($0) ") }
            if wanted != row.contains("[*] ") { try ui.keys("Space") }
        }
        try ui.keys("Tab", "Tab")
        if staticAddress != nil { try ui.keys("Space") }
        try ui.keys("Tab", "C-u")
        try ui.type(staticAddress?.address ?? "")
        try ui.keys("Tab", "C-u")
        try ui.type(staticAddress?.gateway ?? "")
        try ui.keys("Tab", "C-u")
        try ui.type(dns)
        try ui.keys("Tab", "Tab", "C-u")
        try ui.type(hostname)
        try ui.keys("Tab", "C-u")
        try ui.type(vlan)
        // The bond mode radios follow the VLAN field, in the order the answer file lists them.
        let bondIndex = AnswerFile.BondMode.allCases.firstIndex(of: bondMode) ?? 0
        for _ in 0...bondIndex { try ui.keys("Tab") }
        try ui.keys("Space", "F12")
        if stopAfterNetwork { return }

        try ui.waitFor("┤ Root login ├")
        try ui.keys("C-u")
        try ui.type(password)
        try ui.keys("Tab", "C-u")
        try ui.type(password)
        try ui.keys("Tab", "C-u")
        try ui.type(sshKey)
        try ui.keys("F12")

        try ui.waitFor("┤ Time zone ├")
        try ui.keys("C-u")
        try ui.type(timezone)
        try ui.keys("F12")
        try ui.waitFor("Summary")
    }

    /// Moves a list's highlight to the row naming `path` (lists start at the top).
    func pick(_ path: String, in ui: TmuxInstaller, marker: String) throws {
        let rows = try ui.rows(containing: marker)
        guard let index = rows.firstIndex(where: { $0.contains("\(path) ") }) else {
            throw MartletError(.notFound, "\(path) is not offered", cause: try ui.screen())
        }
        for _ in 0..<20 { try ui.keys("Up") }
        for _ in 0..<index { try ui.keys("Down") }
    }
}

/// The plan lines of a text: from "Install plan" to the "then:" line, trailing blanks cut.
func planLines(_ text: String) -> [String] {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map {
        String($0).replacingOccurrences(of: #"\s+$"#, with: "", options: .regularExpression)
    }
    guard let start = lines.lastIndex(where: { $0 == "Install plan" }),
        let end = lines[start...].firstIndex(where: { $0.hasPrefix("  then:") })
    else { return [] }
    return Array(lines[start...end])
}

/// The partition table as sfdisk dumps it, or its complaint on a blank disk.
func partitionTable(_ device: String) -> String {
    let result = try? Command("sfdisk", ["--dump", device]).runAllowingFailure()
    return (result?.stdoutText ?? "") + (result?.stderr ?? "")
}

/// posix_spawn + waitpid, standard streams on /dev/null; returns the wait status.
func spawnAndWait(_ path: String, _ arguments: [String]) throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for fd: Int32 in [0, 1, 2] {
        posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
    }
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, path, &actions, nil, argv, environ)
    guard result == 0 else { throw MartletError.system("posix_spawn", path: path, errno: result) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    return status
}
