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
        abstract: "Write a copy of an ISO that installs unattended, with ANSWER or from an answer server.",
        discussion: """
            With ANSWER, the answer file is validated first (the same checks as \
            `martlet-installer validate`), then stored as /martlet/answer.toml on the copy. With \
            --url, the copy's installer POSTs the machine's facts (disks, NICs, DMI serial) as JSON \
            to that URL and installs with the TOML reply; --fingerprint pins the https server's \
            certificate (SHA-256, as `openssl x509 -noout -fingerprint -sha256` prints it), so a \
            self-signed certificate works and no other server gets the facts. Either way the copy's \
            default boot entry becomes "Unattended install". The copy boots like the original \
            (BIOS and UEFI, CD and USB) and passes `martlet verify`. The original ISO is not changed.
            """)

    @Argument(help: "The Martlet ISO to copy.")
    var iso: String

    @Argument(help: "The answer file (TOML; see Sources/martlet-installer/README.md). Not with --url.")
    var answer: String?

    @Option(help: "An answer server's http(s) URL instead of an answer file.")
    var url: String?

    @Option(help: "With an https --url: the SHA-256 fingerprint of the server's certificate.")
    var fingerprint: String?

    @Option(name: .shortAndLong, help: "The new ISO to write.")
    var output: String

    func validate() throws {
        switch (answer, url) {
        case (nil, nil): throw ValidationError("give an answer file, or --url of an answer server")
        case (.some, .some): throw ValidationError("give an answer file or --url, not both")
        default: break
        }
        if fingerprint != nil && url == nil { throw ValidationError("--fingerprint pins the server of --url") }
    }

    func run() throws {
        do {
            let source: AnswerEmbedding.Source
            if let answer {
                _ = try AnswerFile.load(path: answer)
                source = .file(answer)
            } else {
                source = .server(url: url ?? "", fingerprint: fingerprint)
            }
            try AnswerEmbedding(
                iso: iso, source: source, output: output,
                sourceDateEpoch: ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { Int($0) }
            ).run()
            print(output)
        } catch let error as MartletError {
            FileHandle.standardError.write(Data("martlet answer embed: \(error.description)\n".utf8))
            throw ExitCode(error.code.exitStatus)
        }
    }
}
