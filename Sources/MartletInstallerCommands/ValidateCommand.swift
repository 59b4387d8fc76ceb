import ArgumentParser
import Foundation
import MartletAnswer
import MartletCore
import MartletInstaller

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract:
            "Check an answer file completely (syntax, types, values, unknown keys); touches no disk."
    )

    @Argument(help: "The TOML answer file.")
    var answer: String

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The host root filesystem whose time zones and keyboard layouts the answer may use.",
            discussion:
                "Default: the live system's host root (\(InstallPlan.defaultSource)) when it is mounted, else /. "
                + "With --root, a root without a tz database or XKB layout list is an error; "
                + "by default those checks are skipped with a note.",
            valueName: "DIR"))
    var root: String?

    func run() throws {
        try runReporting {
            let answers = try AnswerFile.load(path: answer)
            let live = FileManager.default.fileExists(atPath: InstallPlan.defaultSource + "/usr")
            let catalog = HostCatalog(root: root ?? (live ? InstallPlan.defaultSource : "/"))
            for note in try catalog.check(answers, answerFile: answer, required: root != nil) {
                FileHandle.standardError.write(Data("note: \(note)\n".utf8))
            }
            if let level = answers.disk.raid {
                let disks =
                    answers.disk.targets.isEmpty
                    ? "every disk of '\(answers.disk.target)'"
                    : answers.disk.targets.map { "'\($0)'" }.joined(separator: ", ")
                let arrays = ["root", "storage"] + (answers.disk.swapSize == nil ? [] : ["swap"])
                print(
                    "\(answer): disks: \(level.rawValue) over \(disks): \(arrays.joined(separator: ", ")) "
                        + "on md arrays; a BIOS boot partition, an ESP and GRUB on each disk")
            }
            print("\(answer): valid")
        }
    }
}
