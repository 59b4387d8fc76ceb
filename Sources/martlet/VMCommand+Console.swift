import ArgumentParser
import Foundation
import MartletCore
import MartletHost
import MartletSystem

struct VMConsoleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Attach to a running VM's serial console (Ctrl-] detaches).",
        discussion: """
            Shows what the guest printed so far, then live output; keys go to the guest's \
            serial port. The detach key leaves the VM running. For scripts: --expect TEXT \
            waits for TEXT and exits 0, or 1 when --timeout passes first.
            """)

    @Argument var name: String

    @Option(
        help: ArgumentHelp(
            "Detach key as a control character: ^] (default), ^A … ^Z.", valueName: "KEY"))
    var detachKey = "^]"

    @Option(help: "Exit 0 as soon as this text appears on the console.")
    var expect: String?

    @Option(help: "Give up after this many seconds (exit 1); 0 waits forever.")
    var timeout: Double = 0

    func run() throws {
        guard let key = Self.controlCharacter(detachKey) else {
            throw ValidationError(
                "--detach-key: '\(detachKey)' is not ^A … ^Z, ^[, ^\\, ^], ^^ or ^_")
        }
        signal(SIGPIPE, SIG_IGN)
        let host = VMHost()
        let console: FileDescriptor
        do {
            _ = try host.definition(name)
            guard try host.isRunning(name) else {
                throw MartletError(
                    .refused, "VM '\(name)' is not running",
                    hint: "start it: martlet vm start \(name)")
            }
            console = try VMConsole.connect(host.paths.consoleSocket(name))
        } catch let error as MartletError {
            FileHandle.standardError.write(Data("martlet vm console: \(error.description)\n".utf8))
            throw ExitCode(error.code.exitStatus)
        }
        let interactive = isatty(STDIN_FILENO) == 1
        if interactive {
            FileHandle.standardError.write(
                Data("[attached to VM '\(name)'; \(detachKey) detaches]\r\n".utf8))
        }
        let outcome = VMConsole.attach(
            console: console, detachKey: key, expect: expect, timeout: timeout, interactive: interactive)
        console.close()
        if interactive { FileHandle.standardError.write(Data("\r\n[detached]\n".utf8)) }
        switch outcome {
        case .detached, .matched: return
        case .closed:
            if expect != nil { throw ExitCode(1) }
        case .timedOut:
            FileHandle.standardError.write(
                Data("martlet vm console: timed out after \(timeout) s\n".utf8))
            throw ExitCode(1)
        }
    }

    static func controlCharacter(_ text: String) -> UInt8? {
        guard text.count == 2, text.first == "^", let scalar = text.unicodeScalars.last?.value,
            (0x40...0x5F).contains(scalar) || (0x61...0x7A).contains(scalar)
        else { return nil }
        return UInt8(scalar & 0x1F)
    }
}
