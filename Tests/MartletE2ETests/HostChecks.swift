import Foundation
import MartletCore

/// Checks run on an installed host over SSH, with a transcript of every command and its
/// output. `check` records a failure and goes on, so one run reports every broken thing;
/// `require` throws instead, for steps the following ones depend on (a VM that did not
/// start has no console to read).
final class HostChecks {
    let ssh: SSHSession
    private(set) var failures: [String] = []
    private(set) var transcript = ""

    init(ssh: SSHSession) { self.ssh = ssh }

    /// Thrown by `require`; its failure is already recorded.
    struct StepFailed: Error {}

    /// Runs `command`; records a failure when it cannot run or `passes` says no. Returns the
    /// result when the command ran.
    @discardableResult
    func check(
        _ name: String, _ command: String, timeout: Int = 120,
        _ passes: (CommandResult) -> Bool
    ) -> CommandResult? {
        let result: CommandResult
        do { result = try ssh.run(command, timeout: timeout) } catch {
            failures.append("\(name): \(error)")
            return nil
        }
        transcript +=
            "### \(name): \(command)\nstatus \(result.status)\n\(result.output)\n\(result.stderr)\n"
        if !passes(result) {
            failures.append("\(name): status \(result.status), output '\(result.output.suffix(600))' \(result.stderr.suffix(600))")
        }
        return result
    }

    /// Like `check`, but throws `StepFailed` when the check fails; returns the output.
    @discardableResult
    func require(
        _ name: String, _ command: String, timeout: Int = 120,
        _ passes: (CommandResult) -> Bool = { $0.status == 0 }
    ) throws -> String {
        let before = failures.count
        let result = check(name, command, timeout: timeout, passes)
        guard failures.count == before, let result else { throw StepFailed() }
        return result.output
    }

    /// Records a check on what earlier commands printed.
    func expect(_ name: String, _ passes: Bool, _ evidence: @autoclosure () -> String) {
        transcript += "### \(name)\n\(passes ? "ok" : "FAILED")\n"
        if !passes { failures.append("\(name): \(evidence().suffix(600))") }
    }

    /// Records a failure found outside a command (e.g. a reboot that never came back).
    func fail(_ name: String, _ reason: String) {
        failures.append("\(name): \(reason)")
        transcript += "### \(name)\nFAILED: \(reason)\n"
    }
}

extension CommandResult {
    /// Standard output without leading and trailing white space.
    var output: String { stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) }
}
