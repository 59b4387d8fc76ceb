import ArgumentParser
import MartletCore

@main
struct Martlet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "martlet",
        abstract: "Build, check, try and flash Martlet hypervisor host ISOs.",
        subcommands: [
            BuildCommand.self, VerifyCommand.self, QEMUCommand.self, FlashCommand.self, AnswerCommand.self,
            VMCommand.self, VolumeCommand.self, PoolCommand.self, APICommand.self,
        ])
}
