import ArgumentParser
import MartletCore
import MartletInstallerCommands

@main
struct Martlet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "martlet",
        abstract: "Build, check, try and flash Martlet hypervisor host ISOs.",
        subcommands: [
            BuildCommand.self, VerifyCommand.self, QEMUCommand.self, FlashCommand.self, AnswerCommand.self,
            VMCommand.self, VolumeCommand.self, PoolCommand.self, APICommand.self,
        ])

    /// A multi-call binary, as busybox is: the host image installs this one binary as
    /// /usr/bin/martlet and links /usr/bin/martlet-installer to it, so Foundation and its ICU
    /// data are on the ISO once. Called by the installer's name, it is the installer.
    static func main() {
        let called = CommandLine.arguments.first?.split(separator: "/").last.map(String.init)
        if called == MartletInstallerCommand.configuration.commandName {
            MartletInstallerCommand.main()
        } else {
            main(nil)
        }
    }
}
