import ArgumentParser
import Foundation
import MartletAnswer
import MartletCore
import MartletInstaller

struct DisksCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disks",
        abstract: "List the disks, what is on them, who uses them, and which is the boot medium.",
        discussion: """
            With --match ANSWER, list only the disks the answer file's [disk] target (or \
            [disk.filter]) and [storage] extra-disks select, under the key that selects them; \
            the exit status is non-zero, with the error an install would give, unless each \
            selects exactly one disk that an install may use.
            """)

    @Option(name: .long, help: "An answer file: show which disks it selects.", completion: .file())
    var match: String?

    @Flag(name: .long, help: "Print JSON (an array of disks) instead of a table.")
    var json = false

    @Flag(name: .long, help: "Leave out loop devices.")
    var noLoop = false

    func run() throws {
        try runReporting {
            let disks = try DiskDiscovery(includeLoop: !noLoop).disks()
            if let match {
                try show(selectedBy: try AnswerFile.load(path: match), disks: disks)
                return
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                FileHandle.standardOutput.write(try encoder.encode(disks) + Data("\n".utf8))
            } else {
                print(DiskListing.text(disks), terminator: "")
            }
        }
    }

    /// Each selecting key's matches, then the refusal of a key that does not select exactly
    /// one disk, or selects one an install may not use (mounted, held, not empty without
    /// wipe): what an install would say.
    private func show(selectedBy answer: AnswerFile, disks: [Disk]) throws {
        let diskKeys: [(String, DiskSelector)] =
            answer.disk.raid == nil
            ? [("disk.target", answer.disk.target)]
            : answer.disk.targets.isEmpty
                ? [("disk.filter", answer.disk.target)]
                : answer.disk.targets.map { ("disk.targets", $0) }
        let keys = diskKeys + answer.storage.extraDisks.map { ("storage.extra-disks", $0) }
        let selected = keys.map { key, selector in
            (key, selector, InstallPlan.matches(selector, from: disks))
        }
        if json {
            struct Selection: Encodable {
                var key, selector: String
                var disks: [Disk]
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let selections = selected.map { Selection(key: $0, selector: $1.description, disks: $2) }
            FileHandle.standardOutput.write(try encoder.encode(selections) + Data("\n".utf8))
        } else {
            for (key, selector, matches) in selected {
                print("\(key) = \(selector): \(matches.count) disk(s)")
                if !matches.isEmpty { print(DiskListing.text(matches), terminator: "") }
            }
        }
        if let level = answer.disk.raid {
            // The whole mirror at once: at least two distinct disks of about the same size.
            let members = try InstallPlan.selectTargets(answer.disk, from: disks)
            if !json {
                print("\(level.rawValue) mirror over \(members.map(\.path).joined(separator: ", "))")
            }
            for disk in members {
                _ = try InstallPlan.check(disk, wipe: answer.disk.wipe, key: diskKeys[0].0)
            }
        }
        for (key, selector, _) in selected where answer.disk.raid == nil || key == "storage.extra-disks" {
            let disk = try InstallPlan.select(selector, key: key, from: disks)
            _ = try InstallPlan.check(disk, wipe: answer.disk.wipe, key: key)
        }
    }
}
