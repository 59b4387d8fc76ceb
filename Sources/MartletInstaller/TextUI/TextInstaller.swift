import CNewt
import Foundation
import Logging
import MartletAnswer
import MartletCore

/// The interactive installer: newt screens that collect an `AnswerFile`, then the same
/// `InstallPlan.make` and `Installer` as an unattended install.
public final class TextInstaller {
    public struct Options: Sendable {
        public var source: String
        public var dryRun: Bool
        /// Where to save the answer file; nil saves /root/martlet-answer.toml on the target.
        public var answerOut: String?
        public var log: String
        /// Consider only these disks (device paths); nil considers every disk.
        public var onlyDisks: [String]?
        public var releaseFile: String

        public init(
            source: String = InstallPlan.defaultSource, dryRun: Bool = false, answerOut: String? = nil,
            log: String = "/var/log/martlet/install.log", onlyDisks: [String]? = nil,
            releaseFile: String = "/etc/martlet/release"
        ) {
            self.source = source
            self.dryRun = dryRun
            self.answerOut = answerOut
            self.log = log
            self.onlyDisks = onlyDisks
            self.releaseFile = releaseFile
        }
    }

    /// How the text UI ended, for the exit status.
    public enum Outcome: Equatable, Sendable {
        case cancelled
        case planned(String)
        case installed
        case failed
        case shell
    }

    static let keyboards: [(String, String)] = [
        ("us", "English (US)"), ("gb", "English (UK)"), ("de", "German"), ("fr", "French"),
        ("es", "Spanish"), ("it", "Italian"), ("ch", "Swiss"), ("be", "Belgian"), ("nl", "Dutch"),
        ("pt", "Portuguese"), ("br", "Portuguese (Brazil)"), ("se", "Swedish"), ("no", "Norwegian"),
        ("dk", "Danish"), ("fi", "Finnish"), ("pl", "Polish"), ("cz", "Czech"), ("hu", "Hungarian"),
        ("ru", "Russian"), ("jp", "Japanese"),
    ]

    let options: Options
    var choices = TextUIChoices()
    var disks: [Disk] = []
    var offered: [Disk] = []
    var notOffered: [(Disk, String)] = []
    var interfaces: [NetworkInterface] = []

    public init(options: Options) { self.options = options }

    private enum Step: Int, CaseIterable {
        case welcome, keyboard, disk, mirror, storage, network, password, timezone, summary
    }

    private enum Move { case next, back, quit }

    /// Runs the screens until the user quits, the dry run prints its plan, or the install ends.
    public func run() throws -> Outcome {
        let discovered = try DiskDiscovery().disks()
        disks = options.onlyDisks.map { only in discovered.filter { only.contains($0.path) } } ?? discovered
        for disk in disks {
            if let reason = Self.refusal(disk) { notOffered.append((disk, reason)) } else { offered.append(disk) }
        }
        interfaces = NetworkInterface.list()
        choices.interfaces = (interfaces.first { $0.state == "link up" } ?? interfaces.first).map { [$0.name] } ?? []
        try NewtScreen.start()
        var finished = false
        defer { if !finished { NewtScreen.finish() } }

        var step = Step.welcome
        while true {
            let move: Move
            switch step {
            case .welcome: move = welcome()
            case .keyboard: move = keyboard()
            case .disk: move = targetDisk()
            case .mirror: move = mirrorDisk()
            case .storage: move = storage()
            case .network: move = network()
            case .password: move = password()
            case .timezone: move = timezone()
            case .summary:
                switch summary() {
                case .back:
                    move = .back
                case .quit:
                    move = .quit
                case .plan(let plan):
                    finished = true
                    return try execute(plan)
                }
            }
            switch move {
            case .next, .back:
                let direction = move == .next ? 1 : -1
                repeat { step = Step(rawValue: max(step.rawValue + direction, 0))! } while !shows(step)
            case .quit:
                finished = true
                NewtScreen.finish()
                return .cancelled
            }
        }
    }

    /// The mirror screen only appears when a disk can mirror the target; with one disk the
    /// flow is the single-disk install's.
    private func shows(_ step: Step) -> Bool {
        step != .mirror || !mirrorCandidates.isEmpty
    }

    /// Why a disk is never offered as a target, or nil when it may be.
    static func refusal(_ disk: Disk) -> String? {
        if disk.isBootMedium { return "boot medium" }
        if disk.readOnly { return "read-only" }
        if let mount = disk.allMountpoints.first { return "mounted on \(mount)" }
        if let holder = (disk.holders + disk.partitions.flatMap(\.holders)).first(where: \.inUse) {
            return "in use by \(holder.name)"
        }
        return nil
    }

    // MARK: - common handling

    /// Esc on any screen: quitting writes nothing, so say so.
    private func confirmQuit() -> Bool {
        NewtScreen.confirm(
            "Quit", "Quit the installer? Nothing has been written to any disk.", yes: "Quit", no: "Stay")
    }

    /// Runs `form` until Next passes `validate` (which returns a message to show) or Back/quit.
    /// `store` keeps what the screen shows in `choices`, also on Back.
    private func loop(
        _ form: NewtForm, error: newtComponent, store: () -> Void, validate: () -> String? = { nil }
    ) -> Move {
        while true {
            switch form.run() {
            case .escape:
                if confirmQuit() { return .quit }
            case .button(0):
                store()
                return .back
            case .button, .other:
                store()
                if let message = validate() {
                    newtTextboxSetText(error, "! " + message)
                    newtRefresh()
                } else {
                    return .next
                }
            }
        }
    }

    private func errorLabel(_ form: NewtForm) -> newtComponent {
        form.text(1, 15, width: 71, height: 2, "")
    }

    // MARK: - screens

    private func welcome() -> Move {
        let form = NewtForm(title: "Welcome")
        form.text(1, 1, width: 71, height: 14, MachineFacts.read(releaseFile: options.releaseFile).text)
        form.buttons(["Quit", "Next"], y: 17)
        while true {
            switch form.run() {
            case .escape, .button(0):
                if confirmQuit() { return .quit }
            default:
                return .next
            }
        }
    }

    private func keyboard() -> Move {
        let form = NewtForm(title: "Keyboard layout")
        form.label(1, 1, "Layout of the keyboard on this machine's console:")
        let layouts = Self.keyboardChoices([options.source, "/"].map(HostCatalog.init(root:)).first { $0.hasKeyboardLayouts })
        let current = layouts.firstIndex { $0.code == choices.keyboard } ?? 0
        let list = form.listbox(
            1, 3, height: 10, width: 60, items: layouts.map { "\($0.code.padding(toLength: 6, withPad: " ", startingAt: 0)) \($0.name)" },
            current: current)
        let error = errorLabel(form)
        form.buttons(["Back", "Next"], y: 17)
        return loop(form, error: error, store: { choices.keyboard = layouts[list.current ?? 0].code })
    }

    /// The layouts to offer: the common ones first, then every other layout the host image
    /// carries, by name. Only what the image has is offered (the install refuses the rest),
    /// and a rarer layout is a scroll away rather than missing.
    static func keyboardChoices(_ catalog: HostCatalog?) -> [(code: String, name: String)] {
        let common = keyboards.map { (code: $0.0, name: $0.1) }
        guard let catalog, catalog.hasKeyboardLayouts else { return common }
        let carried = catalog.keyboardLayouts
        let carriedCodes = Set(carried.map(\.code))
        let offeredFirst = common.filter { carriedCodes.contains($0.code) }
        let firstCodes = Set(offeredFirst.map(\.code))
        return offeredFirst + carried.filter { !firstCodes.contains($0.code) }.sorted { $0.name < $1.name }
    }

    static func describe(_ disk: Disk) -> String {
        var flags: [String] = []
        if disk.hasData { flags.append("has data") }
        if disk.transport == "usb" || disk.removable { flags.append("USB/removable") }
        if disk.size < PartitionLayout.minimumDiskSize(rootSize: nil, swapSize: nil) { flags.append("too small") }
        let name = disk.path.padding(toLength: 14, withPad: " ", startingAt: 0)
        let size = disk.size.description.padding(toLength: 10, withPad: " ", startingAt: 0)
        let transport = disk.transport.padding(toLength: 7, withPad: " ", startingAt: 0)
        var model = disk.model ?? "-"
        if model.count > 18 { model = "..." + model.suffix(15) }
        let line = "\(name) \(size) \(transport) \(model)"
        return flags.isEmpty ? line : "\(line) [\(flags.joined(separator: ", "))]"
    }

    private func targetDisk() -> Move {
        let form = NewtForm(title: "Target disk")
        form.label(1, 0, "Install the host on (everything on it is erased):")
        let current = offered.firstIndex { $0.path == choices.target } ?? 0
        let list = form.listbox(1, 1, height: 8, width: 71, items: offered.map(Self.describe), current: current)
        var note = notOffered.map { "\($0.0.path) (\($0.1))" }.joined(separator: ", ")
        note = note.isEmpty ? "" : "Not offered: \(note)"
        form.text(1, 11, width: 71, height: 3, offered.isEmpty ? "No disk can be used. \(note)" : note)
        let error = errorLabel(form)
        form.buttons(["Back", "Next"], y: 17)
        let store = {
            guard let index = list.current, index < self.offered.count else { return }
            let path = self.offered[index].path
            if self.choices.target != path {
                self.choices.target = path
                self.choices.extraDisks.removeAll { $0 == path }
                if let mirror = self.choices.mirror, !self.mirrorCandidates.contains(where: { $0.path == mirror }) {
                    self.choices.mirror = nil
                }
            }
        }
        return loop(form, error: error, store: store) {
            guard let index = list.current, index < offered.count else {
                return "No disk can be used: connect a disk, or unmount / stop what uses one."
            }
            let disk = offered[index]
            let minimum = PartitionLayout.minimumDiskSize(rootSize: nil, swapSize: nil)
            if disk.size < minimum {
                return "\(disk.path) is too small (\(disk.size)): the host needs at least \(minimum)."
            }
            return confirmUse(disk) ? nil : "Choose another disk."
        }
    }

    /// Asks before using a disk that holds data or is USB/removable; true when it may be used.
    private func confirmUse(_ disk: Disk) -> Bool {
        var warnings: [String] = []
        if disk.hasData { warnings.append("\(disk.path) is not empty: \(disk.contentSummary).") }
        if disk.transport == "usb" || disk.removable {
            warnings.append("\(disk.path) is a USB or removable disk: the host would boot from it.")
        }
        guard !warnings.isEmpty else { return true }
        let text = warnings.joined(separator: "\n") + "\n\nUse it? It is erased only after the summary."
        return NewtScreen.confirm("Check the disk", text, yes: "Use it", no: "Choose another")
    }

    /// Disks that may mirror the target: offered, large enough, and within the plan's size
    /// rule (`InstallPlan.mirrorSizesMatch`), so the plan never refuses what the screen offers.
    private var mirrorCandidates: [Disk] {
        guard let target = offered.first(where: { $0.path == choices.target }) else { return [] }
        let minimum = PartitionLayout.minimumDiskSize(rootSize: nil, swapSize: nil)
        return offered.filter {
            $0.path != target.path && $0.size >= minimum && InstallPlan.mirrorSizesMatch($0.size, target.size)
        }
    }

    private func mirrorDisk() -> Move {
        let form = NewtForm(title: "Mirror (RAID1)")
        let target = choices.target ?? ""
        form.text(1, 0, width: 71, height: 2,
            "Mirror the host onto a second disk? The root filesystem and VM storage become md RAID1 "
                + "arrays over both disks, and either disk boots the host.")
        let candidates = mirrorCandidates
        let current = candidates.firstIndex { $0.path == choices.mirror }.map { $0 + 1 } ?? 0
        let list = form.listbox(
            1, 3, height: 7, width: 71,
            items: ["No mirror: install on \(target) alone"] + candidates.map(Self.describe), current: current)
        let targetSize = offered.first { $0.path == target }?.size ?? ByteSize(0)
        let mismatched = offered.filter { $0.path != target && !InstallPlan.mirrorSizesMatch($0.size, targetSize) }
        if !mismatched.isEmpty {
            form.text(1, 11, width: 71, height: 3,
                "Not offered: " + mismatched.map { "\($0.path) (\($0.size))" }.joined(separator: ", ")
                    + ": a mirror disk must be within \(Int(InstallPlan.mirrorSizeTolerance * 100))% "
                    + "of \(target) (\(targetSize)).")
        }
        let error = errorLabel(form)
        form.buttons(["Back", "Next"], y: 17)
        let store = {
            guard let index = list.current else { return }
            let mirror = index == 0 ? nil : candidates[index - 1].path
            self.choices.mirror = mirror
            self.choices.extraDisks.removeAll { $0 == mirror }
        }
        return loop(form, error: error, store: store) {
            guard let mirror = candidates.first(where: { $0.path == choices.mirror }) else { return nil }
            return confirmUse(mirror) ? nil : "Choose another disk, or no mirror."
        }
    }

    private var extraCandidates: [Disk] {
        let minimum = PartitionLayout.minimumStorageSize.bytes + 2 * PartitionLayout.alignment
        return offered.filter { $0.path != choices.target && $0.path != choices.mirror && $0.size.bytes >= minimum }
    }

    private func storage() -> Move {
        let form = NewtForm(title: "VM storage")
        form.label(1, 0, "Where virtual machine disks live (the rest of the target disk):")
        let kinds = form.radios(2, 1, TextUIChoices.StorageChoice.allCases.map(\.title), selected: choices.storage.rawValue)
        form.label(1, 5, "LVM volume group:")
        let group = form.entry(20, 5, width: 20, choices.volumeGroup)
        let candidates = extraCandidates
        form.label(1, 7, candidates.isEmpty ? "No other disk can be added." : "Also use these disks as storage pools (erased):")
        let tree = candidates.isEmpty ? nil : form.checkboxTree(
            1, 8, height: 5, width: 71, items: candidates.map(Self.describe),
            selected: Set(candidates.indices.filter { choices.extraDisks.contains(candidates[$0].path) }))
        let error = errorLabel(form)
        form.buttons(["Back", "Next"], y: 17)
        let store = {
            self.choices.storage = TextUIChoices.StorageChoice(rawValue: kinds.selected) ?? .lvmThin
            self.choices.volumeGroup = group.value
            self.choices.extraDisks = candidates.indices.filter { tree?.selected.contains($0) ?? false }
                .map { candidates[$0].path }
        }
        return loop(form, error: error, store: store) {
            if group.value.range(of: #"^[A-Za-z0-9_+][A-Za-z0-9_+.\-]{0,63}$"#, options: .regularExpression) == nil {
                return "'\(group.value)' is not a volume group name: letters, digits, _ + . - (not first)."
            }
            let withData = candidates.filter { choices.extraDisks.contains($0.path) && $0.hasData }
            if !withData.isEmpty {
                let text = withData.map { "\($0.path): \($0.contentSummary)" }.joined(separator: "\n")
                if !NewtScreen.confirm("Check the disks", "Not empty:\n\(text)\n\nUse them?", yes: "Use them", no: "No") {
                    return "Untick the disks that must be kept."
                }
            }
            return nil
        }
    }

    private func network() -> Move {
        let form = NewtForm(title: "Network")
        form.label(1, 0, "Management NIC, ticked with Space (VMs share it through the bridge br0):")
        let tree = form.checkboxTree(
            1, 1, height: 4, width: 71,
            items: interfaces.map { "\($0.name.padding(toLength: 16, withPad: " ", startingAt: 0)) \($0.mac)  \($0.state)" },
            selected: Set(interfaces.indices.filter { choices.interfaces.contains(interfaces[$0].name) }))
        let mode = form.radios(1, 6, ["DHCP", "Static"], selected: choices.dhcp ? 0 : 1, horizontal: true)
        let fields: [(String, String)] = [
            ("Address/prefix:", choices.address), ("Gateway:", choices.gateway),
            ("DNS servers:", choices.dns), ("IPv6:", choices.ipv6), ("Host name:", choices.hostname),
            ("VLAN id:", choices.vlan),
        ]
        var entries: [NewtEntry] = []
        for (index, field) in fields.enumerated() {
            form.label(1, 8 + index, field.0)
            entries.append(form.entry(17, 8 + index, width: 40, field.1))
        }
        form.label(58, 8, "static only")
        form.label(58, 11, "auto/off/addr")
        form.label(58, 13, "empty: none")
        // Added after the fields so Tab reaches them in the order they are shown.
        form.label(1, 14, "Bond (2+ NICs):")
        let modes = AnswerFile.BondMode.allCases
        let bond = form.radios(
            17, 14, modes.map(\.rawValue), selected: modes.firstIndex(of: choices.bondMode) ?? 0, horizontal: true)
        let error = errorLabel(form)
        form.buttons(["Back", "Next"], y: 17)
        let store = {
            self.choices.interfaces = self.interfaces.indices.filter { tree.selected.contains($0) }
                .map { self.interfaces[$0].name }
            self.choices.bondMode = modes[bond.selected]
            self.choices.dhcp = mode.selected == 0
            self.choices.address = entries[0].value
            self.choices.gateway = entries[1].value
            self.choices.dns = entries[2].value
            self.choices.ipv6 = entries[3].value
            self.choices.hostname = entries[4].value
            self.choices.vlan = entries[5].value
        }
        return loop(form, error: error, store: store) {
            if interfaces.isEmpty {
                return "No network interface was found: the host needs one (check the NIC and its driver)."
            }
            return choices.networkProblem()
        }
    }

    private func password() -> Move {
        let form = NewtForm(title: "Root login")
        form.label(1, 1, "Password for root:")
        let first = form.entry(22, 1, width: 40, choices.password, password: true)
        form.label(1, 2, "Again:")
        let second = form.entry(22, 2, width: 40, choices.passwordAgain, password: true)
        form.text(1, 4, width: 71, height: 2, "A strong password has 12 or more characters mixing letters, digits and symbols.")
        form.label(1, 7, "SSH public key for root (optional, one line of id_*.pub):")
        let key = form.entry(1, 8, width: 71, choices.sshKey)
        let error = errorLabel(form)
        form.buttons(["Back", "Next"], y: 17)
        let store = {
            self.choices.password = first.value
            self.choices.passwordAgain = second.value
            self.choices.sshKey = key.value.trimmingCharacters(in: .whitespaces)
        }
        return loop(form, error: error, store: store) {
            if let problem = choices.passwordProblem() { return problem }
            if let weakness = choices.passwordWeakness(),
                !NewtScreen.confirm("Weak password", "The password is weak: \(weakness).\n\nUse it anyway?",
                    yes: "Use it", no: "Change it")
            {
                return "Choose a stronger password."
            }
            return nil
        }
    }

    /// The host image's names; the live system's own when the source tree has none (a dry run).
    private var catalog: HostCatalog? {
        [options.source, "/"].map(HostCatalog.init(root:)).first { $0.hasTimezones }
    }

    private func timezone() -> Move {
        let form = NewtForm(title: "Time zone")
        form.label(1, 1, "Time zone of the host:")
        let entry = form.entry(24, 1, width: 40, choices.timezone)
        form.text(1, 3, width: 71, height: 4,
            "A tz database name: UTC, Europe/Paris, Europe/Berlin, America/New_York,\n"
                + "America/Los_Angeles, Asia/Tokyo, Australia/Sydney...\nServers usually run on UTC.")
        let error = errorLabel(form)
        form.buttons(["Back", "Next"], y: 17)
        return loop(form, error: error, store: { choices.timezone = entry.value.trimmingCharacters(in: .whitespaces) }) {
            choices.timezoneProblem(catalog: catalog)
        }
    }

    private enum SummaryOutcome {
        case plan(InstallPlan)
        case back
        case quit
    }

    /// The plan in full, then the destructive confirmation naming every disk it erases.
    private func summary() -> SummaryOutcome {
        let plan: InstallPlan
        do {
            var choices = self.choices
            choices.wipe = true
            plan = try InstallPlan.make(
                answer: try choices.answerFile(), disks: disks, nics: NICDiscovery().nics(),
                source: options.source)
        } catch {
            NewtScreen.message("Cannot plan the install", "\(error)")
            return .back
        }
        let form = NewtForm(title: options.dryRun ? "Summary (dry run: nothing is written)" : "Summary")
        form.text(1, 0, width: 71, height: 16, plan.text)
        let disks = plan.targets + plan.extraDisks
        let erased = disks.map(TextUIChoices.erasedDisk)
        form.label(1, 16, TextUIChoices.erasesLine(disks, width: 71))
        form.buttons(["Back", "Install"], y: 17)
        while true {
            switch form.run() {
            case .escape:
                if confirmQuit() { return .quit }
            case .button(0):
                return .back
            default:
                let text = "ALL DATA on these disks will be erased:\n\n"
                    + erased.map { "  \($0)" }.joined(separator: "\n")
                    + (options.dryRun ? "\n\n(dry run: nothing is written, the plan is printed)" : "\n\nThis cannot be undone.")
                if NewtScreen.confirmDestructive("Erase disks", text, yes: "Erase and install") {
                    return .plan(plan)
                }
            }
        }
    }
}
