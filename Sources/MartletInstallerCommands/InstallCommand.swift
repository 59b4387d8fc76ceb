import ArgumentParser
import Foundation
import Logging
import MartletAnswer
import MartletCore
import MartletInstaller

struct InstallCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Install unattended from an answer file.",
        discussion: """
            The answer file is validated completely and every safety check runs before any \
            disk is opened for writing: the boot medium, mounted or held disks, disks with \
            data unless [disk] wipe = true, and disks that are too small are refused.

            Without --answer, the file named by martlet.answer= on the kernel command line is \
            used: a path on the boot medium, label:MARTLET-ANSWER, or an http(s) URL that the \
            machine's facts (disks, NICs, DMI serial) are POSTed to as JSON; \
            martlet.answer-fingerprint=SHA256 pins the https server's certificate.

            The log goes to /var/log/martlet/install.log and is copied onto the target.
            """)

    @Option(name: .long, help: "The TOML answer file.")
    var answer: String?

    @Option(name: .long, help: "The root filesystem to copy.")
    var source: String = InstallPlan.defaultSource

    @Flag(
        name: .long,
        help: "Print the plan and write nothing; what would stop the install (its preflight checks) is noted on stderr.")
    var dryRun = false

    @Flag(
        name: .long,
        help: "Machine-readable output: the plan as JSON (--dry-run), progress as JSON lines.")
    var json = false

    @Option(name: .long, help: "Install log on the live system.")
    var log: String = "/var/log/martlet/install.log"

    func run() throws {
        try runReporting {
            let path = try answer ?? AnswerLocator.fromKernelCommandLine()
            let answers = try AnswerFile.load(path: path)
            // A dry run may plan from a tree without the image's databases; an install may not.
            for note in try HostCatalog(root: source).check(
                answers, answerFile: path, required: !dryRun)
            {
                FileHandle.standardError.write(Data("note: \(note)\n".utf8))
            }
            let disks = try DiskDiscovery().disks()
            let plan = try InstallPlan.make(
                answer: answers, disks: disks, nics: NICDiscovery().nics(), source: source)
            if dryRun {
                if json {
                    FileHandle.standardOutput.write(try plan.json() + Data("\n".utf8))
                } else {
                    print(plan.text, terminator: "")
                }
                // The checks an install makes before it writes anything (root, the source tree,
                // its time zone and keyboard databases, tools, device-mapper, grub-install):
                // reported, so a dry run shows what would stop the real install.
                do {
                    try Installer.preflight(plan)
                } catch let error as MartletError {
                    FileHandle.standardError.write(
                        Data("note: an install would stop before writing anything: \(error.description)\n".utf8))
                }
                return
            }
            try Installer.preflight(plan)
            MartletLogging.bootstrap(level: .warning, file: log)
            let logger = Logger(label: "martlet.installer")
            logger.info("answer file \(path)\n\(plan.text)")
            if !json { FileHandle.standardError.write(Data(plan.text.utf8)) }
            let progress: any ProgressSink = json ? JSONLinesProgress() : TextProgress()
            let started = Date()
            var failure: Error?
            do {
                try Installer(plan: plan, progress: progress, logger: logger, logFile: log).run()
            } catch {
                failure = error
            }
            if let webhook = answers.postInstall?.webhook {
                let report = InstallReport(
                    hostname: answers.global.hostname, result: failure == nil ? "installed" : "failed",
                    error: failure.map { ($0 as? MartletError)?.message ?? "\($0)" },
                    target: plan.target.path, seconds: Date().timeIntervalSince(started),
                    machine: MachineInventory(
                        disks: disks, nics: NICDiscovery().nics(), dmi: MachineInventory.dmi()))
                if let error = report.post(to: webhook) {
                    FileHandle.standardError.write(Data("martlet-installer: warning: \(error.description)\n".utf8))
                }
            }
            if let failure { throw failure }
            try Installer.conclude(answers.global.rebootMode)
        }
    }
}
