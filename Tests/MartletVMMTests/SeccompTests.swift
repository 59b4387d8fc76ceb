import Foundation
import MartletSystem
@testable import MartletVMM
import MartletVMMProtocol
import Testing

/// The VMM's seccomp filters on the real binary with the test guest on /dev/kvm (issue 17):
/// every thread filtered, a forbidden syscall fatal and named, `--seccomp=off` unfiltered.
@Suite(.serialized, .timeLimit(.minutes(30)))
struct SeccompTests {
    /// One field of /proc/PID/task/TID/status for every thread of `pid`, by thread id.
    static func threadStatus(_ pid: pid_t, _ field: String) throws -> [String: String] {
        var values: [String: String] = [:]
        for thread in try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") {
            let status = try String(contentsOfFile: "/proc/\(pid)/task/\(thread)/status", encoding: .utf8)
            let line = status.split(separator: "\n").first { $0.hasPrefix("\(field):") }
            values[thread] = line.map { String($0.dropFirst(field.count + 1)).trimmingCharacters(in: .whitespaces) } ?? "missing"
        }
        return values
    }

    /// Starts a two-vCPU halting guest with a control socket, stdin console input and a disk,
    /// waits until it runs with all its threads, and calls `body` with its pid.
    static func withRunningVMM(_ extra: [String], _ body: (pid_t) throws -> Void) throws {
        let elf = try TestSupport.guestELF.get()
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = directory.appendingPathComponent("vm.sock").path
        let disk = directory.appendingPathComponent("disk.raw")
        try Data(count: 4096).write(to: disk)
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        let pid = try ChildProcess.spawn(
            [TestSupport.vmmBinary, "--kernel", elf, "--cmdline", "test=halt", "--memory", "16", "--vcpus", "2",
             "--ap-start", "entry", "--disk", disk.path, "--control-socket", socket, "--timeout", "30"] + extra,
            stdin: null.raw, stdout: null.raw, stderr: null.raw)
        defer { kill(pid, SIGKILL); _ = ChildProcess.wait(pid) }
        #expect(Poll.until(timeout: 10) { FileManager.default.fileExists(atPath: socket) }, "no control socket")
        let state = try TestSupport.controlState(socket)
        #expect(state.output.contains(#""state":"running""#), "\(state.output)")
        // main, console input, control server, two vCPUs.
        #expect(Poll.until(timeout: 10) { ((try? threadStatus(pid, "Seccomp"))?.count ?? 0) >= 5 }, "the VMM did not start its threads")
        try body(pid)
    }

    func modesOfRunningVMM(_ extra: [String]) throws -> [String: String] {
        var modes: [String: String] = [:]
        try Self.withRunningVMM(extra) { modes = try Self.threadStatus($0, "Seccomp") }
        return modes
    }

    @Test func everyThreadOfARunningVMMIsFiltered() throws {
        let modes = try modesOfRunningVMM(["--seccomp", "on"])
        #expect(modes.count >= 5, "\(modes)")
        #expect(modes.values.allSatisfy { $0 == "2" }, "threads without a seccomp filter: \(modes)")
    }

    @Test func seccompOffLeavesThreadsUnfiltered() throws {
        let modes = try modesOfRunningVMM(["--seccomp", "off"])
        #expect(modes.count >= 5, "\(modes)")
        #expect(modes.values.allSatisfy { $0 == "0" }, "\(modes)")
    }

    @Test func guestBootsAndPowersOffWithTheFilters() throws {
        let elf = try TestSupport.guestELF.get()
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let disk = directory.appendingPathComponent("disk.raw")
        try Data(count: 1 << 20).write(to: disk)
        // The virtio-blk round trip under the filters: its requests on the device's I/O
        // thread (ioeventfd), or on a vCPU thread where KVM refuses ioeventfd.
        let result = try TestSupport.run(TestSupport.vmmBinary, [
            "--kernel", elf, "--cmdline", "test=blk", "--memory", "16", "--disk", disk.path, "--rng", "--seccomp", "on", "--timeout", "20",
        ])
        #expect(result.status == 0, "\(result.output)")
        #expect(!result.output.contains("killed by seccomp"), "\(result.output)")
    }

    /// A triple fault is a reset, reported with the registers that tell why: the vCPU's
    /// filter lets it read its special registers.
    @Test func aTripleFaultIsAResetThatNamesTheRegisters() throws {
        let elf = try TestSupport.guestELF.get()
        let result = try TestSupport.run(TestSupport.vmmBinary, [
            "--kernel", elf, "--cmdline", "test=triple-fault", "--memory", "16", "--seccomp", "on", "--timeout", "20",
        ])
        #expect(result.status == VMMExitCode.reset.rawValue, "\(result.output)")
        #expect(result.output.contains("triple fault next"), "\(result.output)")
        #expect(!result.output.contains("guest done"), "\(result.output)")
        let report = try #require(result.output.split(separator: "\n").first { $0.contains("triple fault (KVM_EXIT_SHUTDOWN)") }, "\(result.output)")
        for field in ["rip 0x", "rsp 0x", "cr0 0x", "cr3 0x", "idt 0x0 "] {
            #expect(report.contains(field), "\(report)")
        }
    }

    /// The disk's requests through io_uring on its I/O thread, whose filter (and the process
    /// filter under it) lets the ring be set up and entered: 2000 requests, 32 in flight.
    /// The runner's word that the VMM is in its cgroups (`--cgroup-joined-fd`, here stdin):
    /// "1" lets the guest run; the pipe closing without it ends the VMM before it creates a VM.
    @Test func theVMMWaitsForItsCgroupWordAndEndsWithoutIt() throws {
        let elf = try TestSupport.guestELF.get()
        let arguments = ["--kernel", elf, "--cmdline", "test=serial", "--memory", "16", "--serial", "none", "--cgroup-joined-fd", "0", "--timeout", "20"]
        let confirmed = try TestSupport.run(TestSupport.vmmBinary, arguments, input: "1")
        #expect(confirmed.status == 0, "\(confirmed.output)")
        let refused = try TestSupport.run(TestSupport.vmmBinary, arguments, input: "")
        #expect(refused.status == 1, "\(refused.output)")
        #expect(refused.output.contains("--cgroup-joined-fd 0: closed without confirming"), "\(refused.output)")
    }

    @Test func diskRequestsRunOnTheRingUnderTheFilters() throws {
        let (status, stderr, disk) = try Self.runBlockBenchmark(through: [])
        #expect(status == 0, "\(stderr)")
        #expect(!stderr.contains("killed by seccomp"), "\(stderr)")
        #expect(disk?["engine"] == .string("io_uring"), "\(stderr)")
        #expect(disk?["requests"] == .number(2000), "\(stderr)")
    }

    /// A kernel that refuses io_uring (here a seccomp filter answering io_uring_setup with
    /// EPERM, as one with io_uring_disabled does): the VMM says so once and serves the disk
    /// with preadv/pwritev.
    @Test func aRefusedRingFallsBackToPreadvAndPwritev() throws {
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = directory.appendingPathComponent("no-uring.c")
        try #"""
            #include <errno.h>
            #include <seccomp.h>
            #include <unistd.h>
            int main(int argc, char **argv) {
                scmp_filter_ctx filter = seccomp_init(SCMP_ACT_ALLOW);
                if (!filter || seccomp_rule_add(filter, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(io_uring_setup), 0) != 0 ||
                    seccomp_load(filter) != 0 || argc < 2) return 125;
                execv(argv[1], argv + 1);
                return 126;
            }
            """#.write(to: source, atomically: true, encoding: .utf8)
        let wrapper = directory.appendingPathComponent("no-uring").path
        let built = try TestSupport.run("/usr/bin/gcc", ["-O2", "-o", wrapper, source.path, "-lseccomp"])
        try #require(built.status == 0, "\(built.output)")
        let (status, stderr, disk) = try Self.runBlockBenchmark(through: [wrapper])
        #expect(status == 0, "\(stderr)")
        #expect(stderr.contains("io_uring_setup failed: (1) Operation not permitted; disk transfers use preadv/pwritev instead"), "\(stderr)")
        #expect(disk?["engine"] == .string("sync"), "\(stderr)")
        #expect(disk?["requests"] == .number(2000), "\(stderr)")
    }

    /// Runs 2000 reads at queue depth 32 on a 1 MiB disk with the filters on, started through
    /// `wrapper` (a program that execs the rest of its arguments); returns the exit status,
    /// stderr and the disk's counters from `--stats`.
    static func runBlockBenchmark(through wrapper: [String]) throws -> (Int32, String, JSON?) {
        let elf = try TestSupport.guestELF.get()
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let disk = directory.appendingPathComponent("disk.raw")
        try Data(count: 1 << 20).write(to: disk)
        let result = try ChildProcess.run(
            wrapper + [TestSupport.vmmBinary, "--kernel", elf, "--cmdline", "test=bench-blk n=2000 qd=32", "--memory", "16",
                "--disk", disk.path, "--seccomp", "on", "--stats", "--serial", "none", "--timeout", "30"], timeout: 60)
        let stats = result.stderr.split(separator: "\n").last.flatMap { try? JSON(parsing: String($0)) }
        guard case .array(let devices)? = stats?["devices"] else { return (result.status, result.stderr, nil) }
        return (result.status, result.stderr, devices.first)
    }

    /// Filters stack: a thread runs only what its own list and the process list both allow,
    /// so every rule of a thread's list must be one the process list allows as well (the same
    /// syscall, with no argument condition the thread's rule does not also have).
    @Test(arguments: [Seccomp.ThreadKind.vcpu, .device, .io])
    func everyThreadRuleIsAllowedByTheProcessList(kind: Seccomp.ThreadKind) {
        let process = Seccomp.rules(for: .process, restartable: false)
        for rule in Seccomp.rules(for: kind, restartable: false) {
            let covered = process.contains { allowed in
                allowed.name == rule.name
                    && allowed.arguments.allSatisfy { condition in
                        rule.arguments.contains { $0.index == condition.index && $0.value == condition.value }
                    }
            }
            #expect(covered, "\(kind.rawValue): \(rule.name) \(rule.arguments) is not in the process list, so the stacked process filter kills it")
        }
    }

    @Test func badSeccompModeIsRejected() throws {
        let result = try TestSupport.run(TestSupport.vmmBinary, ["--kernel", "/k", "--seccomp", "maybe"])
        #expect(result.status == VMMExitCode.badConfig.rawValue)
        #expect(result.output.contains("--seccomp: 'maybe' is not on, off or log"), "\(result.output)")
        let directory = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("vm.json")
        try #"{"kernel": "/k", "seccomp": "maybe"}"#.write(to: config, atomically: true, encoding: .utf8)
        let fromFile = try TestSupport.run(TestSupport.vmmBinary, ["--config", config.path])
        #expect(fromFile.status == VMMExitCode.badConfig.rawValue)
        #expect(fromFile.output.contains("seccomp"), "\(fromFile.output)")
    }

    /// Debug builds only: the vCPU thread makes a forbidden socket(AF_INET) when the test
    /// variable is set (the path is not compiled into release builds).
    @Test func forbiddenSyscallEndsTheVMMWithSIGSYSNamingIt() throws {
        #if DEBUG
            let elf = try TestSupport.guestELF.get()
            let result = try ChildProcess.run(
                [TestSupport.vmmBinary, "--kernel", elf, "--cmdline", "test=halt", "--memory", "16", "--seccomp", "on", "--timeout", "20"],
                environment: ["MARTLET_VMM_TEST_SECCOMP_VIOLATION=1"], timeout: 30)
            #expect(result.termination == .signaled(SIGSYS), "\(result.termination): \(result.stderr)")
            #expect(result.stderr.contains("martlet-vmm: killed by seccomp: socket"), "\(result.stderr)")

            let logged = try ChildProcess.run(
                [TestSupport.vmmBinary, "--kernel", elf, "--cmdline", "test=poweroff", "--memory", "16", "--seccomp", "log", "--timeout", "20"],
                environment: ["MARTLET_VMM_TEST_SECCOMP_VIOLATION=1"], timeout: 30)
            #expect(logged.termination == .exited(0), "with --seccomp log the violation is only logged: \(logged.termination): \(logged.stderr)")
        #else
            Issue.record("skipped: the forbidden-syscall path exists only in debug builds of martlet-vmm")
        #endif
    }
}

/// The VMM's jail on the real binary (issue 17, item 2): no_new_privs, no capabilities on any
/// thread even when started as root, and its resource limits.
@Suite(.serialized, .timeLimit(.minutes(30)))
struct JailTests {
    @Test func everyThreadRunsWithoutCapabilitiesAndNoNewPrivs() throws {
        try #require(geteuid() == 0, "skipped: dropping capabilities is only visible when started as root")
        try SeccompTests.withRunningVMM(["--seccomp", "off"]) { pid in
            let effective = try SeccompTests.threadStatus(pid, "CapEff")
            let permitted = try SeccompTests.threadStatus(pid, "CapPrm")
            let noNewPrivs = try SeccompTests.threadStatus(pid, "NoNewPrivs")
            #expect(effective.count >= 5, "\(effective)")
            #expect(effective.values.allSatisfy { $0 == "0000000000000000" }, "threads with capabilities: \(effective)")
            #expect(permitted.values.allSatisfy { $0 == "0000000000000000" }, "threads with permitted capabilities: \(permitted)")
            #expect(noNewPrivs.values.allSatisfy { $0 == "1" }, "\(noNewPrivs)")
        }
    }

    @Test func descriptorsAndFileSizeAreLimited() throws {
        try SeccompTests.withRunningVMM([]) { pid in
            let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8).split(separator: "\n")
            func soft(_ name: String) -> UInt64? {
                guard let line = limits.first(where: { $0.hasPrefix(name) }) else { return nil }
                return line.dropFirst(name.count).split(separator: " ").first.flatMap { UInt64($0) }
            }
            let files = try #require(soft("Max open files"), "\(limits)")
            #expect(files > UInt64(Jail.spareDescriptors) && files <= 128, "Max open files: \(files)")
            // The test's disk is 4 KiB: the least limit applies.
            #expect(soft("Max file size") == Jail.minimumFileSize, "\(limits)")
        }
    }
}
