import ArgumentParser
import Foundation
import MartletAnswer
import MartletBuilder
import MartletCore

struct AnswerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "answer",
        abstract: "Work with installer answer files.",
        subcommands: [AnswerEmbedCommand.self])
}

struct AnswerEmbedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "embed",
        abstract: "Write a copy of an ISO that installs unattended with ANSWER.",
        discussion: """
            The answer file is validated first (the same checks as `martlet-installer validate`), \
            then stored as /martlet/answer.toml on the copy, whose default boot entry becomes \
            "Unattended install" using it. The copy boots like the original (BIOS and UEFI, CD \
            and USB) and passes `martlet verify`. The original ISO is not changed.
            """)

    @Argument(help: "The Martlet ISO to copy.")
    var iso: String

    @Argument(help: "The answer file (TOML; see Sources/martlet-installer/README.md).")
    var answer: String

    @Option(name: .shortAndLong, help: "The new ISO to write.")
    var output: String

    func run() throws {
        do {
            _ = try AnswerFile.load(path: answer)
            try AnswerEmbedding(
                iso: iso, answer: answer, output: output,
                sourceDateEpoch: ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { Int($0) }
            ).run()
            print(output)
        } catch let error as MartletError {
            FileHandle.standardError.write(Data("martlet answer embed: \(error.description)\n".utf8))
            throw ExitCode(error.code.exitStatus)
        }
    }
}
