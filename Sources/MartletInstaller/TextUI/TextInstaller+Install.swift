import CNewt
import Foundation
import Logging
import MartletAnswer
import MartletCore
import Synchronization

extension TextInstaller {
    /// Where the answer file goes on the installed host.
    public static let savedAnswerPath = "/root/martlet-answer.toml"

    /// Prints the plan (dry run) or installs with a progress screen, then the finished or
    /// failure screen.
    func execute(_ plan: InstallPlan) throws -> Outcome {
        if options.dryRun {
            var saved: String?
            if let out = options.answerOut,
                NewtScreen.confirm("Save answers", "Save these choices as an answer file in \(out)?")
            {
                saved = try? saveAnswer(plan.answer, to: out)
            }
            NewtScreen.finish()
            print(plan.text, terminator: "")
            if let saved { FileHandle.standardError.write(Data("answer file saved: \(saved)\n".utf8)) }
            return .planned(plan.text)
        }
        MartletLogging.bootstrap(level: .critical, file: options.log)
        let logger = Logger(label: "martlet.installer")
        logger.info("text UI install\n\(plan.text)")
        let form = NewtForm(title: "Installing", width: 70, height: 9)
        form.label(1, 1, "Installing the host on \(plan.targets.map(\.path).joined(separator: " + ")).")
        let stage = form.label(1, 3, String(repeating: " ", count: 66))
        let scale = form.scale(1, 5, width: 66, full: 1000)
        let progress = TextUIProgress(stage: stage, scale: scale)
        form.draw()
        do {
            try Installer.preflight(plan)
            try Installer(plan: plan, progress: progress, logger: logger, logFile: options.log).run()
        } catch {
            logger.error("install failed: \(error)")
            form.close()
            failure(error, stage: progress.currentStage)
            return .failed
        }
        form.close()
        return finished(plan)
    }

    /// Writes `answer` (password hashed) to `path` with mode 0600; returns the path.
    func saveAnswer(_ answer: AnswerFile, to path: String) throws -> String {
        var answer = answer
        if case .plain(let password) = answer.global.rootPassword, let hash = PasswordHash.sha512(password) {
            answer.global.rootPassword = .hashed(hash)
        }
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: path, contents: Data(answer.toml.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw MartletError.system("open", path: path)
        }
        return path
    }

    /// Mounts the installed root filesystem again to put the answer file in /root.
    func saveAnswerOnTarget(_ plan: InstallPlan) throws -> String {
        if let out = options.answerOut { return try saveAnswer(plan.answer, to: out) }
        // On a mirror the root filesystem lives on the md array, not on a member's partition.
        let root = plan.device(.root)!
        let mountpoint = "/run/martlet/saved-answer-\(getpid())"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: mountpoint) }
        try Command("mount", [root, mountpoint]).run()
        defer { _ = try? Command("umount", [mountpoint]).runAllowingFailure() }
        _ = try saveAnswer(plan.answer, to: mountpoint + Self.savedAnswerPath)
        return "\(root):\(Self.savedAnswerPath)"
    }

    private func finished(_ plan: InstallPlan) -> Outcome {
        let form = NewtForm(title: "Installation complete")
        form.text(1, 1, width: 71, height: 6,
            "The Martlet host is installed on \(plan.targets.map(\.path).joined(separator: " + ")).\n\n"
                + "Remove the installation medium, then reboot into the new host.\n"
                + "The install log is in /var/log/martlet/install.log on the host.")
        let destination = options.answerOut ?? Self.savedAnswerPath + " on the installed host"
        let save = form.checkbox(1, 9, "Save these choices as an answer file: \(destination)", checked: true)
        form.label(1, 11, "(to repeat this install unattended: martlet-installer install --answer FILE)")
        form.buttons(["Reboot", "Power off", "Shell"], y: 17, primary: 0)
        var choice = form.run()
        while choice == .escape || choice == .other { choice = form.run() }
        var savedMessage = ""
        if save.checked {
            do {
                savedMessage = "answer file saved: \(try saveAnswerOnTarget(plan))\n"
            } catch {
                NewtScreen.message("Answer file not saved", "\(error)")
            }
        }
        form.close()
        NewtScreen.finish()
        FileHandle.standardError.write(
            Data(("installed onto \(plan.target.path)\n" + savedMessage + "reboot or poweroff when ready\n").utf8))
        switch choice {
        case .button(0): Self.conclude(.reboot)
        case .button(1): Self.conclude(.poweroff)
        default: return .shell
        }
        return .installed
    }

    private func failure(_ error: any Error, stage: String?) {
        let martlet = error as? MartletError
        var text = "The install stopped at step '\(stage ?? "preflight")'.\n\n"
        text += martlet?.message ?? "\(error)"
        if let hint = martlet?.hint { text += "\n\nWhat to do: \(hint)" }
        text += "\n\nThe log of every command run is \(options.log)."
        text += "\nThe disks may be partly written: run the installer again to retry."
        let form = NewtForm(title: "Installation failed")
        form.text(1, 1, width: 71, height: 14, text)
        form.buttons(["Exit", "Reboot"], y: 17, primary: 0)
        var choice = form.run()
        while choice == .escape || choice == .other { choice = form.run() }
        form.close()
        NewtScreen.finish()
        FileHandle.standardError.write(Data("martlet-installer: \(martlet?.description ?? "\(error)")\nlog: \(options.log)\n".utf8))
        if choice == .button(1) { Self.conclude(.reboot) }
    }

    /// Reboots or powers off; when that fails the shell is left to the user with the reason.
    private static func conclude(_ mode: AnswerFile.RebootMode) {
        do {
            try Installer.conclude(mode)
        } catch {
            FileHandle.standardError.write(Data("martlet-installer: \(mode.rawValue) failed: \(error)\n".utf8))
        }
    }
}

/// Shows the engine's progress events on the progress screen: the stage and an overall
/// percentage, where each stage is an equal share and the copy's bytes fill its share.
///
/// `@unchecked Sendable` because newt's components are C pointers: they are drawn only with
/// `lock` held, from whichever thread reports progress.
final class TextUIProgress: ProgressSink, @unchecked Sendable {
    private let lock = Mutex<(current: String?, lastDraw: Date)>((nil, .distantPast))
    private let stage: newtComponent
    private let scale: newtComponent

    init(stage: newtComponent, scale: newtComponent) {
        self.stage = stage
        self.scale = scale
    }

    var currentStage: String? { lock.withLock { $0.current } }

    func emit(_ event: ProgressEvent) {
        lock.withLock { state in
            guard let index = event.index, let count = event.count, count > 0 else { return }
            var fraction = 0.0
            switch event.kind {
            case .begin:
                state.current = event.stage
            case .update:
                if let completed = event.completed, let total = event.total, total > 0 {
                    fraction = min(Double(completed) / Double(total), 1)
                }
                // Redrawing for every copied block would cost more than the copy.
                if Date().timeIntervalSince(state.lastDraw) < 0.2 { return }
            case .end:
                fraction = 1
            case .note:
                return
            }
            let overall = (Double(index - 1) + fraction) / Double(count)
            let percent = Int(overall * 100)
            newtLabelSetText(stage, "Step \(index) of \(count): \(event.stage)  \(percent)%")
            newtScaleSet(scale, UInt64(overall * 1000))
            newtRefresh()
            state.lastDraw = Date()
        }
    }
}

/// crypt(3) from libcrypt, loaded at run time so the installer does not link it.
enum PasswordHash {
    private typealias Crypt = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>) -> UnsafeMutablePointer<CChar>?
    private typealias GenSalt = @convention(c) (UnsafePointer<CChar>?, UInt, UnsafePointer<CChar>?, Int32) -> UnsafeMutablePointer<CChar>?

    /// A `$6$` (SHA-512) hash of `password`, nil when libcrypt is not there.
    static func sha512(_ password: String) -> String? {
        guard let library = dlopen("libcrypt.so.1", RTLD_NOW),
            let cryptSymbol = dlsym(library, "crypt"), let saltSymbol = dlsym(library, "crypt_gensalt")
        else { return nil }
        let crypt = unsafeBitCast(cryptSymbol, to: Crypt.self)
        let gensalt = unsafeBitCast(saltSymbol, to: GenSalt.self)
        guard let salt = gensalt("$6$", 0, nil, 0) else { return nil }
        let saltText = String(cString: salt)
        guard let hash = crypt(password, saltText) else { return nil }
        let text = String(cString: hash)
        return text.hasPrefix("$6$") ? text : nil
    }
}
