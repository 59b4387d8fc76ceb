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

    func run() throws {
        try runReporting {
            _ = try AnswerFile.load(path: answer)
            print("\(answer): valid")
        }
    }
}
