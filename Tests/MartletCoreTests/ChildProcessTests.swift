import Foundation
import MartletSystem
import Testing

@testable import MartletCore

/// The process layer every part of Martlet starts programs through.
@Suite(.timeLimit(.minutes(30)))
struct ChildProcessTests {
    @Test func exitStatusAndOutput() throws {
        let result = try ChildProcess.run(["/bin/sh", "-c", "printf out; printf err >&2; exit 7"])
        #expect(result.termination == .exited(7))
        #expect(result.stdout == "out" && result.stderr == "err")
        // The same under a deadline that is not reached.
        let timed = try ChildProcess.run(["/bin/sh", "-c", "exit 3"], timeout: 30)
        #expect(timed.termination == .exited(3))
    }

    @Test func deathBySignal() throws {
        let result = try ChildProcess.run(["/bin/sh", "-c", "kill -TERM $$"])
        #expect(result.termination == .signaled(SIGTERM))
        #expect(result.status == 128 + SIGTERM)
    }

    @Test func timeoutKillsTheChild() throws {
        let started = ChildProcess.monotonicSeconds()
        let result = try ChildProcess.run(["/bin/sleep", "30"], timeout: 0.5)
        #expect(result.termination == .timedOut(seconds: 0.5))
        #expect(ChildProcess.monotonicSeconds() - started < 10, "the timeout did not cut the child short")
        // A child that closed its output but keeps running is held to the deadline too.
        let quiet = try ChildProcess.run(["/bin/sh", "-c", "exec >/dev/null 2>&1; sleep 30"], timeout: 0.5)
        #expect(quiet.termination == .timedOut(seconds: 0.5))
    }

    @Test func inputLargerThanAPipeReachesTheChild() throws {
        let input = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)
        let result = try ChildProcess.run(["/usr/bin/wc", "-c"], input: input)
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(input.count)")
    }

    /// A child that exits without reading its input: the write fails with EPIPE and the
    /// child's status comes back. Without the guard in `ChildProcess.run`, SIGPIPE (default
    /// action, nothing here ignores it) would end the whole test process.
    @Test func childThatIgnoresItsInputDoesNotKillTheCaller() throws {
        let input = [UInt8](repeating: UInt8(ascii: "x"), count: 4 << 20)
        let result = try ChildProcess.run(["/bin/sh", "-c", "exec 0<&-; exit 3"], input: input)
        #expect(result.termination == .exited(3))
    }

    /// The child sees 0, 1 and 2 and nothing else, even fds this process opened without
    /// close-on-exec: no LVM "File descriptor leaked" warnings, no pipes held open.
    @Test func noDescriptorLeaksIntoTheChild() throws {
        let leaky = open("/dev/null", O_RDONLY)
        #expect(leaky > 2)
        defer { close(leaky) }
        let pipe = try FileDescriptor.pipe()
        #expect(pipe.read.raw > 2 && pipe.write.raw > 2)
        // The shell's own fds (not those of ls, which opens the directory it lists).
        let direct = try ChildProcess.run(["/bin/sh", "-c", "ls /proc/$$/fd"])
        #expect(direct.stdout.split(separator: "\n").compactMap { Int32($0) }.sorted() == [0, 1, 2], "\(direct.stdout)")
        let command = try Command("/bin/sh", ["-c", "ls /proc/$$/fd"]).run().stdoutText
        #expect(command.split(separator: "\n").compactMap { Int32($0) }.sorted() == [0, 1, 2], "\(command)")
    }

    /// What LVM_SUPPRESS_FD_WARNINGS used to hide: LVM names every fd it inherits.
    @Test(.enabled(if: Tool.find("lvm") != nil, "lvm2 is not installed"))
    func lvmSeesNoLeakedDescriptors() throws {
        let leaky = open("/dev/null", O_RDONLY)
        defer { close(leaky) }
        let result = try Command("lvm", ["version"]).runAllowingFailure()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(!result.stderr.contains("leaked"), "\(result.stderr)")
    }

    @Test func environmentAndWorkingDirectory() throws {
        let result = try ChildProcess.run(
            ["/bin/sh", "-c", "echo $MARTLET_PROBE; pwd"], environment: ["MARTLET_PROBE=42"],
            workingDirectory: "/proc")
        #expect(result.stdout == "42\n/proc\n")
        let command = try Command("/bin/sh", ["-c", "echo $HOME $MARTLET_PROBE"], environment: ["MARTLET_PROBE": "x"]).run()
        #expect(command.stdoutText.hasSuffix(" x\n") && command.stdoutText.count > 3, "inherited HOME: \(command.stdoutText)")
    }

    @Test func missingProgramIsAnErrorNamingIt() {
        #expect(throws: SystemError("posix_spawn", path: "no-such-program-martlet", errno: ENOENT)) {
            try ChildProcess.run(["no-such-program-martlet"])
        }
    }

    @Test func pollRecordsATimeout() {
        var calls = 0
        #expect(!Poll.until(timeout: 0.1) { calls += 1; return false })
        #expect(calls >= 2)
        #expect(Poll.until(timeout: 5) { true })
    }
}
