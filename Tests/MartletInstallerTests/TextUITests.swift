import Foundation
import MartletAnswer
import MartletCore
import Testing

@testable import MartletInstaller

/// The text UI, driven in tmux as a person would, on loop disks. One test at a time: loop
/// devices, LVM and the terminal are shared.
@Suite("Text UI in tmux", .serialized)
struct TextUITests {
    @Test("a dry-run walkthrough prints the plan of the equivalent answer file; the saved answer file validates and plans the same")
    func dryRunWalkthrough() throws {
        let target = try LoopDisk(size: .gib(8))
        let extra = try LoopDisk(size: .gib(2))
        let work = try TemporaryDirectory()
        let before = try [fingerprint(target.path, size: .gib(8)), fingerprint(extra.path, size: .gib(2))]
        let saved = "\(work.path)/saved.toml"
        let ui = try TmuxInstaller(arguments: [
            "--dry-run", "--disks", target.path, extra.path, "--answer-out", saved,
        ])
        let walk = TextUIWalk(target: target.path, extraDisks: [extra.path])
        try walk.drive(ui)
        let summary = try ui.screen()
        #expect(summary.contains("Erases: \(target.path)") && summary.contains(extra.path), "\(summary)")
        try ui.keys("F12")
        let erase = try ui.waitFor("┤ Erase disks ├")
        #expect(erase.contains(target.path) && erase.contains(extra.path))
        try ui.keys("Tab", "Enter")  // from Cancel to "Erase and install"
        try ui.waitFor("┤ Save answers ├")
        try ui.keys("Enter")
        #expect(try ui.exitStatus() == 0, "\(ui.stderr)")
        let printed = planLines(try ui.history())

        let equivalent = work.write("equivalent.toml", walk.answerFile())
        let (status, expected, err) = try installer(["install", "--dry-run", "--answer", equivalent])
        try #require(status == 0, "\(err)")
        #expect(!printed.isEmpty)
        #expect(printed == planLines(expected))

        // The saved file holds a crypt(3) hash instead of the password; everything else plans the same.
        let (validStatus, _, validErr) = try installer(["validate", saved])
        #expect(validStatus == 0, "\(validErr)")
        let savedText = try String(contentsOfFile: saved, encoding: .utf8)
        #expect(savedText.contains("root-password-hash = \"$6$") && !savedText.contains(walk.password))
        let (_, replanned, _) = try installer(["install", "--dry-run", "--answer", saved])
        #expect(
            planLines(replanned)
                == planLines(expected).map { $0.replacingOccurrences(of: "password set", with: "password hash set") })
        let mode = try FileManager.default.attributesOfItem(atPath: saved)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(try [fingerprint(target.path, size: .gib(8)), fingerprint(extra.path, size: .gib(2))] == before)
    }

    @Test("a dry run mirroring the host on two loop disks prints its md arrays as the equivalent answer file does; the partner's data is warned about; the saved answer has targets + raid and validates")
    func mirrorWalkthrough() throws {
        let target = try LoopDisk(size: .gib(8))
        let partner = try LoopDisk(size: .gib(8))
        let larger = try LoopDisk(size: .gib(12))
        try partner.partition(script: "label: gpt\nsize=200MiB, name=old\n", count: 1)
        try sh("mkfs.ext4", ["-q", "-L", "olddata", partner.partition(1)])
        let work = try TemporaryDirectory()
        let disks = [(target.path, ByteSize.gib(8)), (partner.path, .gib(8)), (larger.path, .gib(12))]
        let before = try disks.map { try fingerprint($0.0, size: $0.1) }
        let saved = "\(work.path)/saved.toml"
        let ui = try TmuxInstaller(arguments: [
            "--dry-run", "--disks", target.path, partner.path, larger.path, "--answer-out", saved,
        ])
        var walk = TextUIWalk(target: target.path, extraDisks: [larger.path])
        walk.mirror = partner.path
        walk.mirrorHasData = true
        try walk.drive(ui)
        try ui.keys("F12")
        let erase = try ui.waitFor("┤ Erase disks ├")
        for path in [target.path, partner.path, larger.path] { #expect(erase.contains(path), "\(erase)") }
        try ui.keys("Tab", "Enter")
        try ui.waitFor("┤ Save answers ├")
        try ui.keys("Enter")
        #expect(try ui.exitStatus() == 0, "\(ui.stderr)")
        let printed = planLines(try ui.history())
        #expect(printed.contains { $0.contains("mirror:    \(partner.path)") }, "\(printed)")
        // Root and storage are mirrored; the text UI asks for no swap, so there is no md2.
        for (device, role) in [("/dev/md0", "root"), ("/dev/md1", "storage")] {
            #expect(
                printed.contains {
                    $0.contains(device) && $0.contains(role) && $0.contains("\(target.path)p") && $0.contains("\(partner.path)p")
                }, "\(device) \(role): \(printed)")
        }
        #expect(!printed.contains { $0.contains("/dev/md2") }, "\(printed)")
        #expect(printed.contains { $0.contains(partner.path) && $0.contains("olddata") }, "\(printed)")

        let equivalent = work.write("equivalent.toml", walk.answerFile())
        let (status, expected, err) = try installer(["install", "--dry-run", "--answer", equivalent])
        try #require(status == 0, "\(err)")
        #expect(printed == planLines(expected))

        let (validStatus, _, validErr) = try installer(["validate", saved])
        #expect(validStatus == 0, "\(validErr)")
        let answer = try AnswerFile.load(path: saved)
        #expect(answer.disk.raid == .raid1)
        #expect(answer.disk.targets == [.path(target.path), .path(partner.path)])
        #expect(answer.storage.extraDisks == [.path(larger.path)])
        let (_, replanned, _) = try installer(["install", "--dry-run", "--answer", saved])
        #expect(
            planLines(replanned)
                == planLines(expected).map { $0.replacingOccurrences(of: "password set", with: "password hash set") })
        #expect(try disks.map { try fingerprint($0.0, size: $0.1) } == before)
    }

    @Test("the mirror screen offers only a disk of the target's size; Back keeps the partner; Enter on 'No mirror' gives the single-disk install and offers the disk as storage again")
    func mirrorBackAndNone() throws {
        let target = try LoopDisk(size: .gib(8))
        let partner = try LoopDisk(size: .gib(8))
        let larger = try LoopDisk(size: .gib(12))
        let ui = try TmuxInstaller(arguments: ["--dry-run", "--disks", target.path, partner.path, larger.path])
        var walk = TextUIWalk(target: target.path)
        walk.mirror = partner.path
        try walk.drive(ui)
        #expect(try ui.screen().contains("mirror:    \(partner.path)"))

        try ui.keys("Tab", "Tab")
        for title in ["┤ Time zone ├", "┤ Root login ├", "┤ Network ├", "┤ VM storage ├"] {
            try pressBack(ui, to: title)
        }
        // The partner is not an extra storage disk; the larger disk is.
        let extras = try ui.rows(containing: "[ ] /dev/")
        #expect(extras.contains { $0.contains("\(larger.path) ") }, "\(extras)")
        #expect(!extras.contains { $0.contains("\(partner.path) ") }, "\(extras)")
        try pressBack(ui, to: "┤ Mirror (RAID1) ├")
        var screen = try ui.screen()
        let offered = try ui.rows(containing: "│ │ ")
        #expect(offered.contains { $0.contains("No mirror: install on \(target.path) alone") }, "\(screen)")
        #expect(offered.contains { $0.contains("\(partner.path) ") }, "\(screen)")
        #expect(!offered.contains { $0.contains("\(larger.path) ") }, "\(screen)")
        #expect(screen.contains("Not offered: \(larger.path) (12 GiB)"), "\(screen)")
        #expect(try cursorOnRow(naming: partner.path, ui), "the partner chosen before must be the current row: \(screen)")

        // Back to the target disk and forward without a change: the partner is still chosen.
        try pressBack(ui, to: "┤ Target disk ├")
        try ui.keys("F12")
        screen = try ui.waitFor("┤ Mirror (RAID1) ├")
        #expect(try cursorOnRow(naming: partner.path, ui), "\(screen)")

        // Enter on "No mirror": the single-disk install, and the other disk is storage again.
        try ui.keys("Up", "Enter")
        try ui.waitFor("┤ VM storage ├")
        let extrasNow = try ui.rows(containing: "[ ] /dev/")
        #expect(extrasNow.contains { $0.contains("\(partner.path) ") }, "\(extrasNow)")
        for title in ["┤ Network ├", "┤ Root login ├", "┤ Time zone ├", "Summary"] {
            try ui.keys("F12")
            try ui.waitFor(title)
        }
        screen = try ui.screen()
        #expect(screen.contains("Erases: \(target.path)") && !screen.contains(partner.path), "\(screen)")
        #expect(!screen.contains("/dev/md0") && !screen.contains("mirror:"), "\(screen)")
        try ui.keys("Escape")
        try ui.waitFor("┤ Quit ├")
        try ui.keys("Enter")
        #expect(try ui.exitStatus() == 0)
    }

    /// Whether the cursor sits on the list row naming `path` (newt puts it on the current row).
    func cursorOnRow(naming path: String, _ ui: TmuxInstaller) throws -> Bool {
        let screen = try ui.screen().split(separator: "\n").map(String.init)
        guard let row = screen.firstIndex(where: { $0.contains("\(path) ") }) else { return false }
        return ui.cursor.y == row
    }

    @Test(
        "two NICs ticked on the network screen make an 802.3ad bond under br0, planned as the equivalent answer file",
        .enabled(if: TextUIWalk.allInterfaces.count >= 2, "needs two network interfaces in /sys/class/net"))
    func bondedNetwork() throws {
        let target = try LoopDisk(size: .gib(8))
        let work = try TemporaryDirectory()
        let saved = "\(work.path)/saved.toml"
        let ui = try TmuxInstaller(arguments: ["--dry-run", "--disks", target.path, "--answer-out", saved])
        var walk = TextUIWalk(target: target.path)
        walk.interfaces = Array(TextUIWalk.allInterfaces.prefix(2))
        walk.bondMode = .lacp
        try walk.drive(ui)
        try ui.keys("F12")
        try ui.waitFor("┤ Erase disks ├")
        try ui.keys("Tab", "Enter")
        try ui.waitFor("┤ Save answers ├")
        try ui.keys("Enter")
        #expect(try ui.exitStatus() == 0, "\(ui.stderr)")
        let printed = planLines(try ui.history())
        #expect(printed.contains { $0.contains("br0 over bond0 (802.3ad") }, "\(printed)")

        let equivalent = work.write("equivalent.toml", walk.answerFile())
        let (status, expected, err) = try installer(["install", "--dry-run", "--answer", equivalent])
        try #require(status == 0, "\(err)")
        #expect(printed == planLines(expected))
        let answer = try AnswerFile.load(path: saved)
        #expect(answer.network.bond?.members == walk.interfaces.map { .name($0) })
        #expect(answer.network.bond?.mode == .lacp && answer.network.interface == nil)
    }

    @Test("a whole dry run with Enter, arrows and typing only: Enter on a list chooses and moves on, each screen starts on its main control")
    func enterOnlyWalkthrough() throws {
        let target = try LoopDisk(size: .gib(8))
        let work = try TemporaryDirectory()
        let before = try fingerprint(target.path, size: .gib(8))
        let saved = "\(work.path)/saved.toml"
        let ui = try TmuxInstaller(arguments: ["--dry-run", "--disks", target.path, "--answer-out", saved])
        let welcome = try ui.waitFor("┤ Welcome ├")
        #expect(try cursorIsOn("Next", ui), "the welcome screen must start on Next: \(welcome)")
        try ui.keys("Enter")
        try ui.waitFor("┤ Keyboard layout ├")
        // Every layout the image carries is offered, the common ones first: the last entry
        // is one of the rest (the dry run's catalog is this machine's).
        let layouts = TextInstaller.keyboardChoices(HostCatalog(root: "/"))
        try #require(layouts.count > TextInstaller.keyboards.count, "this machine carries no xkb layout list")
        try ui.keys("End")
        try ui.waitFor(layouts.last!.name)
        try ui.keys("Home")
        try ui.keys("Down", "Down")  // us, gb, de
        try ui.keys("Enter")
        try ui.waitFor("┤ Target disk ├")
        try ui.keys("Enter")
        try ui.waitFor("┤ VM storage ├")
        try ui.keys("Enter")
        try ui.waitFor("┤ Network ├")
        try ui.keys("Enter")  // DHCP on the first NIC, host name "martlet"
        try ui.waitFor("┤ Root login ├")
        try ui.type("Correct-Horse-9")
        try ui.keys("Down")
        try ui.type("Correct-Horse-9")
        try ui.keys("Enter")
        try ui.waitFor("┤ Time zone ├")
        try ui.keys("BSpace", "BSpace", "BSpace")
        try ui.type("Europe/Paris")
        try ui.keys("Enter")
        let summary = try ui.waitFor("Summary")
        #expect(summary.contains("Erases: \(target.path)"), "\(summary)")
        // The plan scrolls, so the summary starts on it; never on Back, and Enter installs.
        #expect(try !cursorIsOn("Back", ui), "the summary must not start on Back: \(summary)")
        try ui.keys("Enter")
        let eraseDialog = try ui.waitFor("┤ Erase disks ├")
        // Erasing is never the Enter key's choice: the dialog starts on Cancel and Enter
        // goes back to the summary; erasing takes a move to "Erase and install".
        #expect(try cursorIsOn("Cancel", ui), "the erase dialog must start on Cancel: \(eraseDialog)")
        try ui.keys("Enter")
        try ui.waitForScreen("the summary again after Enter on the erase dialog") {
            $0.contains("Summary") && !$0.contains("┤ Erase disks ├")
        }
        try ui.keys("Enter")
        try ui.waitFor("┤ Erase disks ├")
        try ui.keys("Tab", "Enter")
        try ui.waitFor("┤ Save answers ├")
        try ui.keys("Enter")
        #expect(try ui.exitStatus() == 0, "\(ui.stderr)")
        #expect(!planLines(try ui.history()).isEmpty)

        let answer = try AnswerFile.load(path: saved)
        #expect(answer.global.keyboard == "de")
        #expect(answer.global.timezone == "Europe/Paris")
        #expect(answer.global.hostname == "martlet")
        #expect(answer.disk.target == .path(target.path))
        #expect(answer.storage.type == .lvmThin)
        #expect(answer.network.mode == .dhcp)
        guard case .hashed = answer.global.rootPassword else {
            Issue.record("the password typed on the Root login screen was not kept")
            return
        }
        #expect(try fingerprint(target.path, size: .gib(8)) == before)
    }

    /// Whether the cursor sits on the button `name` (newt puts it on the focused button's first letter).
    func cursorIsOn(_ name: String, _ ui: TmuxInstaller) throws -> Bool {
        let screen = try ui.screen().split(separator: "\n").map(String.init)
        guard let row = screen.lastIndex(where: { $0.contains("<\(name)>") }),
            let range = screen[row].range(of: "<\(name)>")
        else { return false }
        let column = screen[row].distance(from: screen[row].startIndex, to: range.lowerBound)
        return ui.cursor.y == row && ui.cursor.x == column + 1
    }

    @Test("invalid inputs keep the user on the screen with a message; Back keeps every answer; quitting at the summary changes no disk")
    func backValidationAndCancel() throws {
        let disk = try LoopDisk(size: .gib(8))
        try disk.partition(script: "label: gpt\nsize=200MiB, name=old\n", count: 1)
        try sh("mkfs.ext4", ["-q", "-L", "olddata", disk.partition(1)])
        let before = try fingerprint(disk.path, size: .gib(8))
        let table = partitionTable(disk.path)
        let ui = try TmuxInstaller(arguments: ["--dry-run", "--disks", disk.path])
        var walk = TextUIWalk(target: disk.path, targetHasData: true, storageIndex: 1)
        walk.vlan = "5000"
        walk.stopAfterNetwork = true
        try walk.drive(ui)
        var screen = try ui.waitFor("is not a VLAN id")
        #expect(screen.contains("┤ Network ├"))
        for (field, bad, message) in [
            (0, "300.1.2.3/24", "Address '300.1.2.3/24' is not IPv4"), (1, "192.0.2", "Gateway '192.0.2' is not"),
            (2, "dns.example", "DNS server 'dns.example' is not"), (4, "", "Enter a host name"),
            (4, "bad_name!", "'bad_name!' is not a host name"),
        ] {
            try focusNetworkField(field, ui)
            try ui.keys("C-u")
            try ui.type(bad)
            try ui.keys("F12")
            screen = try ui.waitFor(message)
            #expect(screen.contains("┤ Network ├"))
            try ui.keys("C-u")
            try ui.type(field == 4 ? walk.hostname : ["192.0.2.10/24", "192.0.2.1", walk.dns][field])
        }
        try focusNetworkField(5, ui)
        try ui.keys("C-u")
        try ui.type("42")
        try ui.keys("F12")

        try ui.waitFor("┤ Root login ├")
        try ui.type("Correct-Horse-9")
        try ui.keys("Tab")
        try ui.type("Correct-Horse-8")
        try ui.keys("F12")
        try ui.waitFor("The passwords do not match")
        try ui.keys("C-u")
        try ui.type("abc")
        try ui.keys("BTab", "C-u")
        try ui.type("abc")
        try ui.keys("F12")
        try ui.waitFor("┤ Weak password ├")
        try ui.keys("Tab", "Enter")
        try ui.waitFor("Choose a stronger password")
        try ui.keys("C-u")
        try ui.type("Correct-Horse-9")
        try ui.keys("Tab", "C-u")
        try ui.type("Correct-Horse-9")
        try ui.keys("F12")
        try ui.waitFor("┤ Time zone ├")
        try ui.keys("C-u")
        try ui.type("Mars/Olympus")
        try ui.keys("F12")
        try ui.waitFor("is not in the host image's time zone database")
        try ui.keys("C-u")
        try ui.type("Europe/Paris")
        try ui.keys("F12")
        try ui.waitFor("Summary")

        // Back from the summary to the welcome screen, checking what each screen still shows.
        try ui.keys("Tab", "Tab")
        try pressBack(ui, to: "┤ Time zone ├")
        #expect(try ui.screen().contains("Europe/Paris"))
        try pressBack(ui, to: "┤ Root login ├")
        #expect(try ui.screen().contains("***************"))
        try pressBack(ui, to: "┤ Network ├")
        screen = try ui.screen()
        #expect(screen.contains("(*) Static") && screen.contains("192.0.2.10/24") && screen.contains("hv1.example.org"))
        #expect(screen.contains("VLAN id:        42_"), "\(screen)")
        try pressBack(ui, to: "┤ VM storage ├")
        #expect(try ui.screen().contains("(*) Directory of image files on ext4"))
        try pressBack(ui, to: "┤ Target disk ├")
        try pressBack(ui, to: "┤ Keyboard layout ├")
        try pressBack(ui, to: "┤ Welcome ├")
        // Forward again without touching anything: the summary shows every earlier answer.
        for title in ["┤ Keyboard layout ├", "┤ Target disk ├"] {
            try ui.keys("F12")
            try ui.waitFor(title)
        }
        try ui.keys("F12")
        try ui.waitFor("┤ Check the disk ├")
        try ui.keys("Enter")
        for title in ["┤ VM storage ├", "┤ Network ├", "┤ Root login ├", "┤ Time zone ├", "Summary"] {
            try ui.waitFor(title)
            try ui.keys("F12")
        }
        screen = try ui.waitFor("┤ Erase disks ├")
        #expect(screen.contains(disk.path))
        try ui.keys("Enter")  // Cancel, where the dialog starts: back on the summary
        screen = try ui.waitForScreen("the summary without the erase dialog") {
            $0.contains("Summary") && !$0.contains("┤ Erase disks ├")
        }
        #expect(!screen.contains("┤ Erase disks ├"))
        for kept in ["keyboard: de", "Europe/Paris", "hv1.example.org", "directory /var/lib/martlet/storage (ext4)",
            "WIPES", "olddata"]
        {
            #expect(screen.contains(kept), "\(kept)")
        }

        try ui.keys("Escape")
        try ui.waitFor("┤ Quit ├")
        try ui.keys("Enter")
        #expect(try ui.exitStatus() == 0)
        #expect(ui.stderr.contains("cancelled; no disk was changed"))
        #expect(planLines(try ui.history()).isEmpty)
        #expect(try fingerprint(disk.path, size: .gib(8)) == before)
        #expect(partitionTable(disk.path) == table)
    }

    @Test("the boot medium and a mounted disk are not offered as targets")
    func bootMediumAndMountedNotOffered() throws {
        let work = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: "\(work.path)/tree", withIntermediateDirectories: true)
        work.write("tree/hello", "martlet")
        let medium = try LoopDisk(size: .gib(1))
        try sh("xorriso", ["-as", "mkisofs", "-quiet", "-V", "MARTLET_TEST", "-o", medium.path, "\(work.path)/tree"])
        let mounted = try LoopDisk(size: .gib(6))
        try sh("mkfs.ext4", ["-q", mounted.path])
        try FileManager.default.createDirectory(atPath: "\(work.path)/mnt", withIntermediateDirectories: true)
        try sh("mount", [mounted.path, "\(work.path)/mnt"])
        defer { _ = try? sh("umount", ["\(work.path)/mnt"]) }
        let free = try LoopDisk(size: .gib(8))
        let small = try LoopDisk(size: .gib(3))

        let ui = try TmuxInstaller(arguments: [
            "--dry-run", "--disks", medium.path, mounted.path, free.path, small.path,
        ])
        try ui.waitFor("┤ Welcome ├")
        try ui.keys("F12")
        try ui.waitFor("┤ Keyboard layout ├")
        try ui.keys("F12")
        var screen = try ui.waitFor("┤ Target disk ├")
        let listed = try ui.rows(containing: "│ │ /dev/")
        #expect(listed.count == 2, "\(screen)")
        #expect(listed.contains { $0.contains("\(free.path) ") && !$0.contains("too small") }, "\(screen)")
        #expect(listed.contains { $0.contains("\(small.path) ") && $0.contains("[too small]") }, "\(screen)")
        #expect(!listed.contains { $0.contains("\(medium.path) ") || $0.contains("\(mounted.path) ") })
        #expect(screen.contains("\(medium.path) (boot medium)"), "\(screen)")
        #expect(screen.contains("\(mounted.path) (mounted on") && screen.contains("\(work.path)/mnt)"), "\(screen)")
        // The small disk is offered with its warning, and refused with a message that stays on the screen.
        try TextUIWalk(target: small.path).pick(small.path, in: ui, marker: "│ │ /dev/")
        try ui.keys("F12")
        screen = try ui.waitFor("is too small")
        #expect(screen.contains("┤ Target disk ├") && screen.contains("the host needs at least"), "\(screen)")
        try ui.keys("Escape")
        try ui.waitFor("┤ Quit ├")
        try ui.keys("Enter")
        #expect(try ui.exitStatus() == 0)
    }

    @Test("a real install onto a loop disk through the UI, with progress, and the answer file saved on the host")
    func realInstall() throws {
        let rootfs = try testRootfs()
        let disk = try LoopDisk(size: .gib(8))
        let work = try TemporaryDirectory()
        let log = "\(work.path)/install.log"
        let ui = try TmuxInstaller(arguments: ["--source", rootfs, "--log", log, "--disks", disk.path])
        var walk = TextUIWalk(target: disk.path, storageIndex: 1)
        walk.staticAddress = nil
        try walk.drive(ui)
        try ui.keys("F12")
        try ui.waitFor("┤ Erase disks ├")
        try ui.keys("Tab", "Enter")
        try ui.waitFor("┤ Installing ├", timeout: 30)
        var progress: Set<String> = []
        let deadline = Date().addingTimeInterval(400)
        var screen = ""
        while Date() < deadline {
            screen = try ui.screen()
            if screen.contains("┤ Installation complete ├") || screen.contains("┤ Installation failed ├") { break }
            if let line = screen.split(separator: "\n").first(where: { $0.contains("Step ") && $0.contains("%") }) {
                progress.insert(line.trimmingCharacters(in: CharacterSet(charactersIn: "│ ")))
            }
            usleep(200_000)
        }
        try #require(screen.contains("┤ Installation complete ├"), "\(screen)\n\(ui.stderr)")
        #expect(progress.contains { $0.hasPrefix("Step 5 of 11: copy") }, "\(progress)")
        #expect(progress.count >= 3, "\(progress)")
        #expect(screen.contains("[*] Save these choices"))
        try press("Shell", ui)
        #expect(try ui.exitStatus(timeout: 30) == 0)
        #expect(ui.systemctlCalls.isEmpty, "\(ui.systemctlCalls)")
        #expect(ui.stderr.contains("installed onto \(disk.path)"), "\(ui.stderr)")
        #expect(ui.stderr.contains("answer file saved: \(disk.partition(3)):/root/martlet-answer.toml"), "\(ui.stderr)")

        let dump = try sh("sfdisk", ["--dump", disk.path])
        for name in ["bios", "esp", "root", "storage"] { #expect(dump.contains("name=\"\(name)"), "\(dump)") }
        let mountpoint = "\(work.path)/target"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        try sh("mount", ["-o", "ro", disk.partition(3), mountpoint])
        defer { _ = try? sh("umount", [mountpoint]) }
        let hostname = try String(contentsOfFile: "\(mountpoint)/etc/hostname", encoding: .utf8)
        // The engine writes the short name to /etc/hostname (the FQDN goes to /etc/hosts).
        #expect(hostname.trimmingCharacters(in: .whitespacesAndNewlines) == "hv1")
        #expect(try String(contentsOfFile: "\(mountpoint)/etc/hosts", encoding: .utf8).contains(walk.hostname))
        #expect(
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(mountpoint)/etc/localtime"))
                == "/usr/share/zoneinfo/Europe/Paris")
        #expect(try String(contentsOfFile: "\(mountpoint)/etc/fstab", encoding: .utf8).contains("UUID="))
        #expect(FileManager.default.fileExists(atPath: "\(mountpoint)/var/log/martlet/install.log"))
        let saved = "\(mountpoint)/root/martlet-answer.toml"
        let mode = try FileManager.default.attributesOfItem(atPath: saved)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let (status, _, err) = try installer(["validate", saved])
        #expect(status == 0, "\(err)")
        let answer = try AnswerFile.load(path: saved)
        #expect(answer.disk.target == .path(disk.path) && answer.disk.wipe && answer.storage.type == .directory)
        #expect(answer.global.keyboard == "de" && answer.network.vlan == 42 && answer.network.mode == .dhcp)
        guard case .hashed = answer.global.rootPassword else {
            Issue.record("the saved answer file holds the password itself")
            return
        }
    }

    @Test("a failing install shows the failure screen with the step, the message and the log, and exits with status 1")
    func failureScreen() throws {
        let disk = try LoopDisk(size: .gib(8))
        let work = try TemporaryDirectory()
        // A source tree that passes the first checks but has no time zone database.
        for directory in ["etc", "usr", "boot"] {
            try FileManager.default.createDirectory(atPath: "\(work.path)/source/\(directory)", withIntermediateDirectories: true)
        }
        let before = try fingerprint(disk.path, size: .gib(8))
        let log = "\(work.path)/install.log"
        let ui = try TmuxInstaller(arguments: ["--source", "\(work.path)/source", "--log", log, "--disks", disk.path])
        try TextUIWalk(target: disk.path).drive(ui)
        try ui.keys("F12")
        try ui.waitFor("┤ Erase disks ├")
        try ui.keys("Tab", "Enter")
        let screen = try ui.waitFor("┤ Installation failed ├", timeout: 30)
        #expect(screen.contains("stopped at step 'preflight'"), "\(screen)")
        #expect(screen.contains("global.timezone: the host image has no time zone database"), "\(screen)")
        #expect(screen.contains(log), "\(screen)")
        try press("Exit", ui)
        #expect(try ui.exitStatus() == 1)
        #expect(ui.stderr.contains("time zone database") && ui.stderr.contains("log: \(log)"), "\(ui.stderr)")
        #expect(ui.systemctlCalls.isEmpty)
        #expect(try fingerprint(disk.path, size: .gib(8)) == before)
    }

    /// From anywhere on the network screen, to field `index` (0 address ... 5 VLAN, on screen
    /// rows 10 to 15), watching the cursor.
    func focusNetworkField(_ index: Int, _ ui: TmuxInstaller) throws {
        for _ in 0..<20 where ui.cursor.y != 10 + index {
            try ui.tab()
        }
        guard ui.cursor.y == 10 + index else {
            throw MartletError(.failed, "could not reach network field \(index)", cause: try ui.screen())
        }
    }

    /// Presses the Back button (focus is moved there with Tab) and waits for `title`.
    func pressBack(_ ui: TmuxInstaller, to title: String) throws {
        try press("Back", ui)
        try ui.waitFor(title)
    }

    /// Moves the focus to the button `name` with Tab, checking the cursor, and presses it.
    func press(_ name: String, _ ui: TmuxInstaller) throws {
        let screen = try ui.screen().split(separator: "\n").map(String.init)
        guard let row = screen.lastIndex(where: { $0.contains("<\(name)>") }),
            let column = screen[row].range(of: "<\(name)>").map({ screen[row].distance(from: screen[row].startIndex, to: $0.lowerBound) })
        else {
            throw MartletError(.notFound, "no \(name) button", cause: screen.joined(separator: "\n"))
        }
        var tabs = 0
        while (ui.cursor.y != row || ui.cursor.x != column + 1) && tabs < 20 {
            try ui.tab()
            tabs += 1
        }
        guard ui.cursor.y == row && ui.cursor.x == column + 1 else {
            throw MartletError(.failed, "could not move the focus to \(name)", cause: screen.joined(separator: "\n"))
        }
        try ui.keys("Enter")
    }
}
