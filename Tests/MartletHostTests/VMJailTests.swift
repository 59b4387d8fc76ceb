import Foundation
import MartletCore
import MartletSystem
import MartletVMMProtocol
import Testing

@testable import MartletHost

/// The runner's jail for the VMM (`VMJail`), on the real binary and the tiny test guest. The
/// other runner tests (VMLifecycleTests, ConsoleAndNetTests) run jailed too: it is the default.
@Suite(.serialized, .timeLimit(.minutes(30))) struct VMJailTests {
    /// The running VMM of `vm`'s runner (its only child), found through pgrep.
    static func vmmPID(_ fixture: HostFixture, _ vm: String) throws -> pid_t {
        let runner = try #require(fixture.host.runnerPID(vm))
        let found = try ChildProcess.run(["pgrep", "-P", "\(runner)", "-x", "martlet-vmm"]).stdout
        return try #require(pid_t(found.trimmingCharacters(in: .whitespacesAndNewlines)), "VMM of runner \(runner): '\(found)'")
    }

    /// A status line of /proc/PID/status without its name: "Uid:\t1\t1\t1\t1" -> "1\t1\t1\t1".
    static func status(_ pid: pid_t, _ key: String) -> String? {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").first { $0.hasPrefix(key + ":") }
            .map { $0.dropFirst(key.count + 1).trimmingCharacters(in: .whitespaces) }
    }

    static func namespace(_ pid: String, _ kind: String) -> String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(kind)")
    }

    @Test func theJailedVMMSeesOnlyItsOwnFilesAsAnUnprivilegedPIDOne() throws {
        let guest = try TestSupport.guest.get()
        let user = "mhjail\(UUID().uuidString.prefix(6).lowercased())"
        try Command(
            "useradd",
            ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", "kvm", user]
        ).run()
        defer { _ = try? ChildProcess.run(["userdel", user]) }
        let fixture = try HostFixture(label: "jail")
        var environment = fixture.environment
        environment["MARTLET_VMM_USER"] = user
        let martlet = TestSupport.product("martlet")
        func cli(_ arguments: String...) throws -> ChildProcess.Output {
            try TestSupport.run(martlet, arguments, environment: environment)
        }
        // Another VM's disk in the same pool: it must not be in this VM's jail.
        #expect(try cli("volume", "create", "local/other-root", "--size", "8MiB").status == 0)
        let created = try cli(
            "vm", "create", "jailed", "--kernel", guest, "--cmdline", "test=halt jail-test",
            "--memory", "16MiB", "--new-disk", "local/jailed-root:8MiB")
        #expect(created.status == 0, "\(created.stderr)")
        let started = try cli("vm", "start", "jailed")
        #expect(started.status == 0, "the control socket answered from the host: \(started.stderr)")
        let console = try cli(
            "vm", "console", "jailed", "--expect", "halting, cmdline: test=halt jail-test",
            "--timeout", "10")
        #expect(console.status == 0, "\(console.stdout) \(console.stderr)")

        let pid = try Self.vmmPID(fixture, "jailed")
        let uid = try #require(getpwnam(user)?.pointee.pw_uid)
        #expect(Self.status(pid, "Uid") == "\(uid)\t\(uid)\t\(uid)\t\(uid)")
        #expect(Self.status(pid, "CapEff") == "0000000000000000")
        #expect(Self.status(pid, "NoNewPrivs") == "1")
        #expect(Self.status(pid, "NSpid") == "\(pid)\t1", "pid 1 of a PID namespace of its own")
        for kind in ["mnt", "pid", "ipc", "uts"] {
            let own = Self.namespace("\(pid)", kind)
            #expect(own != nil && own != Self.namespace("self", kind), "\(kind): \(own ?? "?")")
        }
        #expect(Self.namespace("\(pid)", "net") == Self.namespace("self", "net"), "taps are opened by name")

        // Everything in its root outside /usr, /proc and the program's library directories.
        let root = "/proc/\(pid)/root"
        let vmm = try Tool.resolve(fixture.paths.vmm)
        let skipped = ["/usr", "/proc"] + (try VMJail.libraryDirectories(of: vmm))
        var files: Set<String> = []
        func walk(_ directory: String) {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: root + directory)) ?? []
            for name in names {
                let path = (directory == "/" ? "" : directory) + "/" + name
                if skipped.contains(path) { continue }
                var info = stat()
                guard lstat(root + path, &info) == 0 else { continue }
                if (info.st_mode & S_IFMT) == S_IFDIR { walk(path) } else { files.insert(path) }
            }
        }
        walk("/")
        let paths = fixture.paths
        let expected: Set<String> = [
            "/lib", "/lib64", vmm, guest, paths.vmmConfig("jailed"), paths.consoleLog("jailed"),
            fixture.root + "/pool/jailed-root.raw", paths.controlSocket("jailed"),
            paths.serialSocket("jailed"), "/dev/kvm", "/dev/null", "/dev/urandom",
        ]
        #expect(files == expected, "unexpected: \(files.subtracting(expected)), missing: \(expected.subtracting(files))")
        #expect(!FileManager.default.fileExists(atPath: root + "/etc/shadow"))
        #expect(!FileManager.default.fileExists(atPath: root + fixture.root + "/pool/other-root.raw"))
        #expect(
            (try? FileManager.default.contentsOfDirectory(atPath: paths.jailRoot("jailed"))) == [],
            "the jail's tmpfs exists only in the VMM's mount namespace")
        // Its root is read-only, also to root: nothing can be added beside what it was given.
        #expect(access(root + "/usr", W_OK) != 0 || errno == EROFS)
        #expect(mkdir(root + "/added", 0o700) != 0 && errno == EROFS)

        // Its cgroup: 16 MiB of guest RAM + the overhead, 1 vCPU + the spare tasks, 2 CPUs' time.
        let cgroup = try #require(Self.memoryCgroup(pid), "the VMM is in a memory cgroup")
        #expect(cgroup.name == "vmm-jailed", "a cgroup of its own: \(cgroup)")
        let limits = VMCgroup.Limits(vcpus: 1, memoryMiB: 16)
        #expect(limits.memoryBytes == (16 << 20) + VMCgroup.Limits.memoryOverhead)
        switch cgroup.hierarchy {
        case .unified(let directory):
            #expect(Self.read(directory + "/memory.max") == "\(limits.memoryBytes)")
            #expect(Self.read(directory + "/pids.max") == "\(limits.tasks)")
            #expect(Self.read(directory + "/cpu.max") == "200000 100000")
        case .legacy(let memory, let pids, let cpu):
            #expect(Self.read(memory + "/memory.limit_in_bytes") == "\(limits.memoryBytes)")
            if let pids { #expect(Self.read(pids + "/pids.max") == "\(limits.tasks)") }
            if let cpu { #expect(Self.read(cpu + "/cpu.cfs_quota_us") == "200000") }
        }

        let stopped = try cli("vm", "stop", "jailed")
        #expect(stopped.status == 0, "\(stopped.stderr)")
        let directory: String
        switch cgroup.hierarchy {
        case .unified(let path): directory = path
        case .legacy(let memory, _, _): directory = memory
        }
        #expect(!FileManager.default.fileExists(atPath: directory), "the runner removes the VMM's cgroup")
    }

    static func read(_ path: String) -> String? {
        (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The cgroup `pid` is in, with the memory controller: the v2 directory or the v1 ones.
    static func memoryCgroup(_ pid: pid_t) -> (hierarchy: VMCgroup.Hierarchy, name: String)? {
        let lines = (read("/proc/\(pid)/cgroup") ?? "").split(separator: "\n")
            .map { $0.split(separator: ":", maxSplits: 2).map(String.init) }.filter { $0.count == 3 }
        func path(_ controller: String) -> String? {
            lines.first { $0[1].split(separator: ",").contains { $0 == controller } }
                .map { "/sys/fs/cgroup/\(controller)\($0[2])" }
        }
        if let memory = path("memory") {
            return (.legacy(memory: memory, pids: path("pids"), cpu: path("cpu")), (memory as NSString).lastPathComponent)
        }
        guard let unified = lines.first(where: { $0[0] == "0" }).map({ "/sys/fs/cgroup\($0[2])" }),
            FileManager.default.fileExists(atPath: unified + "/memory.max")
        else { return nil }
        return (.unified(unified), (unified as NSString).lastPathComponent)
    }

    /// The host's SIGTERM to a jailed VMM, pid 1 of its PID namespace (where the kernel drops
    /// a signal without a handler), stops the VM in order: the VMM ends with "stopped" (exit
    /// code 4), the runner logs it and ends, and `vm show` names no problem.
    @Test func sigtermStopsTheJailedVMMInOrder() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "sigterm")
        let martlet = TestSupport.product("martlet")
        func cli(_ arguments: String...) throws -> ChildProcess.Output {
            try TestSupport.run(martlet, arguments, environment: fixture.environment)
        }
        let created = try cli(
            "vm", "create", "term", "--kernel", guest, "--cmdline", "test=halt", "--memory", "16MiB", "--on-crash", "stop")
        #expect(created.status == 0, "\(created.stderr)")
        #expect(try cli("vm", "start", "term").status == 0)
        #expect(try cli("vm", "console", "term", "--expect", "halting", "--timeout", "10").status == 0)
        let pid = try Self.vmmPID(fixture, "term")
        #expect(Self.status(pid, "NSpid") == "\(pid)\t1", "pid 1 of a PID namespace of its own")
        #expect(kill(pid, SIGTERM) == 0)
        #expect(Poll.until(timeout: 30) { fixture.host.runnerPID("term") == nil }, "the VMM did not act on SIGTERM")
        let log = (try? String(contentsOfFile: fixture.paths.runnerLog("term"), encoding: .utf8)) ?? ""
        #expect(log.contains("VM 'term' stopped"), "\(log)")
        #expect(try fixture.host.status("term").problem == nil)
    }

    @Test func jailFalseRunsTheVMMInTheHostsNamespaces() throws {
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "nojail")
        let martlet = VMLifecycleTests.CLI(fixture: fixture, namespace: nil)
        try martlet.json(
            "vm", "create", "open", "--kernel", guest, "--cmdline", "test=halt", "--memory", "16MiB", "--no-jail")
        #expect(try fixture.host.definition("open").jail == false)
        #expect(try String(contentsOfFile: fixture.paths.definition("open"), encoding: .utf8).contains("jail = false"))
        #expect(try martlet("vm", "start", "open").status == 0)
        let pid = try Self.vmmPID(fixture, "open")
        #expect(Self.namespace("\(pid)", "mnt") == Self.namespace("self", "mnt"))
        #expect(Self.status(pid, "NSpid") == "\(pid)")
        let log = try String(contentsOfFile: fixture.paths.runnerLog("open"), encoding: .utf8)
        #expect(log.contains("without a jail (jail = false)"), "\(log)")
        #expect(try martlet("vm", "stop", "open").status == 0)
    }
}

/// `VMCgroup` on this machine's real cgroup filesystem, below the test's own cgroups.
@Suite(.serialized) struct VMCgroupTests {
    /// An installed host's layout: cgroup v2 only, the runner in its unit's cgroup, whose
    /// /proc/self/cgroup line is "0::PATH" (an empty controllers field). On a tree of plain
    /// files the runner moves itself into its `martlet-runner` leaf and enables the
    /// controllers for the unit's children, where the VMM's cgroup goes. (A parse that dropped
    /// the empty field found no cgroup on every v2 host; the e2e saw VMMs without limits.)
    @Test func unifiedTreeUnderSystemd() throws {
        let root = try TestSupport.temporaryDirectory("cgroup2")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let unit = "/system.slice/system-martlet\\x2dvm.slice/martlet-vm@web.service"
        try FileManager.default.createDirectory(atPath: root + unit, withIntermediateDirectories: true)
        // On cgroupfs the kernel makes a new cgroup's files with its directory; here the
        // runner's leaf is made beforehand (the runner tolerates an existing one).
        try FileManager.default.createDirectory(atPath: root + unit + "/martlet-runner", withIntermediateDirectories: true)
        for file in ["/cgroup.controllers", unit + "/cgroup.subtree_control", unit + "/martlet-runner/cgroup.procs"] {
            #expect(FileManager.default.createFile(atPath: root + file, contents: Data()))
        }
        let hierarchy = try VMCgroup.hierarchy(forRunnerOf: "web", cgroupRoot: root, ownCgroups: "0::\(unit)\n")
        #expect(hierarchy == .unified(root + unit))
        #expect(try String(contentsOfFile: root + unit + "/martlet-runner/cgroup.procs", encoding: .utf8) == "\(getpid())")
        #expect(try String(contentsOfFile: root + unit + "/cgroup.subtree_control", encoding: .utf8) == "+memory +pids +cpu")
        // A runner that is already in its leaf (a restart of the VM) finds the same place.
        #expect(try VMCgroup.hierarchy(forRunnerOf: "web", cgroupRoot: root, ownCgroups: "0::\(unit)/martlet-runner\n") == .unified(root + unit))
        // Outside its unit (e.g. run by hand) nothing is moved, and without the memory
        // controller enabled there is no place for limits.
        let shell = "/user.slice/session-1.scope"
        try FileManager.default.createDirectory(atPath: root + shell, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: root + shell + "/cgroup.subtree_control", contents: Data()))
        #expect(try VMCgroup.hierarchy(forRunnerOf: "web", cgroupRoot: root, ownCgroups: "0::\(shell)\n") == nil)
        #expect(!FileManager.default.fileExists(atPath: root + shell + "/martlet-runner"))
    }

    /// On cgroup v2 the child is created in its cgroup (clone3's CLONE_INTO_CGROUP) rather
    /// than joining it after the fork: with no `cgroup.procs` to write, only clone3 can have
    /// put it there. A directory that is not a cgroup is refused by name.
    @Test func aJailedChildIsBornInItsV2Cgroup() throws {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        let own = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
        let mountFields: [[Substring]] = mounts.split(separator: "\n").map { $0.split(separator: " ") }
        let ownLine: Substring? = own.split(separator: "\n").first { $0.hasPrefix("0::") }
        guard let fields = mountFields.first(where: { $0.count > 2 && $0[2] == "cgroup2" }), let ownLine else {
            Issue.record("skipped: no cgroup v2 hierarchy mounted here")
            return
        }
        let mount = String(fields[1])
        let ownPath = String(ownLine.dropFirst(3))
        let name = "jail-born-\(UUID().uuidString.prefix(8).lowercased())"
        let relative = (ownPath == "/" ? "" : ownPath) + "/" + name
        let directory = mount + relative
        guard mkdir(directory, 0o755) == 0 else {
            Issue.record("mkdir \(directory): \(String(cString: strerror(errno)))")
            return
        }
        defer { _ = Poll.until(timeout: 10) { rmdir(directory) == 0 } }
        let root = try TestSupport.temporaryDirectory("cgroup2-root")
        defer { try? FileManager.default.removeItem(atPath: root) }
        var layout = JailLayout(root: root, entries: VMJail.systemEntries(), credentials: nil)
        layout.cgroupDirectory = directory
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        let output = try FileDescriptor.pipe()
        let pid = try ChildProcess.spawnJailed(
            ["/usr/bin/cat", "/proc/self/cgroup"], jail: layout, stdin: null.raw, stdout: output.write.raw, stderr: null.raw)
        output.write.close()
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while case let count = output.read.read(into: &buffer), count > 0 {
            text += String(decoding: buffer.prefix(count), as: UTF8.self)
        }
        #expect(ChildProcess.wait(pid) == .exited(0))
        #expect(text.split(separator: "\n").contains("0::\(relative)"), "the child's cgroups: \(text)")

        layout.cgroupDirectory = root
        #expect {
            try ChildProcess.spawnJailed(["/usr/bin/true"], jail: layout, stdin: null.raw, stdout: null.raw, stderr: null.raw)
        } throws: { "\($0)".contains(root) && "\($0)".contains("clone") }
    }

    /// Moved by its parent while it starts (cgroup v1, or a kernel without clone3): a child
    /// given `cgroupJoinedDescriptor` finds "1" there, and is in every cgroup by then; without
    /// it, the child waits before execve and is in them when it runs. A `cgroup.procs` the
    /// parent cannot write is refused by name, and the child does not run on.
    @Test func aJailedChildIsMovedIntoItsCgroupsWhileItStarts() throws {
        guard let hierarchy = try VMCgroup.hierarchy(forRunnerOf: "cgroup-test") else {
            Issue.record("skipped: no cgroup with the memory controller below this process's own")
            return
        }
        let name = "vmm-move-\(UUID().uuidString.prefix(8).lowercased())"
        let cgroup = try VMCgroup(
            name: name, limits: VMCgroup.Limits(memoryBytes: 256 << 20, tasks: 16, cpuQuota: 100_000), under: hierarchy)
        defer { cgroup.remove() }
        let root = try TestSupport.temporaryDirectory("cgroup-move-root")
        defer { try? FileManager.default.removeItem(atPath: root) }
        var layout = JailLayout(root: root, entries: VMJail.systemEntries(), credentials: nil)
        layout.cgroupProcs = cgroup.procsFiles
        layout.cgroupDirectory = cgroup.unifiedDirectory
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        // The word on fd 3 (or "none" without it) and how many of the child's cgroups are this
        // VM's by then.
        let script = """
            import os, sys
            word = os.read(3, 8).decode() if sys.argv[1] == 'fd' else 'none'
            print(word, sum(1 for line in open('/proc/self/cgroup') if line.rstrip().endswith('/\(name)')))
            """
        for descriptor in [Int32(3), nil] {
            layout.cgroupJoinedDescriptor = descriptor
            let output = try FileDescriptor.pipe()
            let pid = try ChildProcess.spawnJailed(
                ["/usr/bin/python3", "-c", script, descriptor == nil ? "none" : "fd"],
                jail: layout, stdin: null.raw, stdout: output.write.raw, stderr: null.raw)
            output.write.close()
            var text = ""
            var buffer = [UInt8](repeating: 0, count: 4096)
            while case let count = output.read.read(into: &buffer), count > 0 {
                text += String(decoding: buffer.prefix(count), as: UTF8.self)
            }
            #expect(ChildProcess.wait(pid) == .exited(0))
            let expected = "\(descriptor == nil ? "none" : "1") \(cgroup.directories.count)"
            #expect(text.trimmingCharacters(in: .whitespacesAndNewlines) == expected, "fd \(String(describing: descriptor)): \(text)")
        }

        layout.cgroupJoinedDescriptor = 3
        layout.cgroupDirectory = nil
        layout.cgroupProcs = [root + "/not-a-cgroup/cgroup.procs"]
        #expect {
            try ChildProcess.spawnJailed(["/usr/bin/true"], jail: layout, stdin: null.raw, stdout: null.raw, stderr: null.raw)
        } throws: { "\($0)".contains(root + "/not-a-cgroup/cgroup.procs") && "\($0)".contains("moving the child into the cgroup") }
    }

    /// A process over its memory limit is ended by the kernel's OOM killer, alone: the test
    /// (its parent) lives on and `memoryLimitKilled` says what happened.
    @Test func aProcessOverItsMemoryLimitEndsAlone() throws {
        guard let hierarchy = try VMCgroup.hierarchy(forRunnerOf: "cgroup-test") else {
            Issue.record("skipped: no cgroup with the memory controller below this process's own")
            return
        }
        let name = "vmm-test-\(UUID().uuidString.prefix(8).lowercased())"
        let cgroup = try VMCgroup(
            name: name, limits: VMCgroup.Limits(memoryBytes: 32 << 20, tasks: 8, cpuQuota: 100_000),
            under: hierarchy)
        defer { cgroup.remove() }
        #expect(!cgroup.memoryLimitKilled)
        let root = try TestSupport.temporaryDirectory("cgroup-root")
        defer { try? FileManager.default.removeItem(atPath: root) }
        var layout = JailLayout(root: root, entries: VMJail.systemEntries(), credentials: nil)
        layout.cgroupProcs = cgroup.procsFiles
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        // 256 MiB written byte by byte into fresh pages: far over the 32 MiB limit.
        let pid = try ChildProcess.spawnJailed(
            ["/usr/bin/python3", "-c", "data = b'\\x01' * (256 << 20); print(len(data))"], jail: layout,
            stdin: null.raw, stdout: null.raw, stderr: null.raw)
        let termination = ChildProcess.wait(pid)
        #expect(termination == .signaled(SIGKILL), "\(termination)")
        #expect(cgroup.memoryLimitKilled, "the cgroup's OOM count")
        let own = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
        #expect(!own.contains(name), "the parent stayed outside the limited cgroup: \(own)")
    }

    /// Two VMs under their runners, on the real VMM: the one whose VMM goes over its memory
    /// limit (the debug build's test-only allocation of 256 MiB beside 16 MiB of guest RAM) is
    /// OOM-killed; its runner and `vm show` say "out of memory"; the other VM keeps running
    /// and answers on its control socket; the test process, the host here, carries on.
    @Test func aVMOverItsMemoryLimitEndsAloneAndTheOtherKeepsRunning() throws {
        #if DEBUG
            guard try VMCgroup.hierarchy(forRunnerOf: "cgroup-test") != nil else {
                Issue.record("skipped: no cgroup with the memory controller below this process's own")
                return
            }
            let guest = try TestSupport.guest.get()
            let fixture = try HostFixture(label: "oom")
            let martlet = TestSupport.product("martlet")
            // Names of their own: cgroups are named after the VM, beside other tests' VMs.
            let suffix = UUID().uuidString.prefix(6).lowercased()
            let (hog, bystander) = ("hog-\(suffix)", "calm-\(suffix)")
            func cli(_ arguments: [String], _ extra: [String: String] = [:]) throws -> ChildProcess.Output {
                try TestSupport.run(martlet, arguments, environment: fixture.environment.merging(extra) { $1 })
            }
            for vm in [hog, bystander] {
                let created = try cli([
                    "vm", "create", vm, "--kernel", guest, "--cmdline", "test=halt", "--memory", "16MiB",
                    "--on-crash", "stop",
                ])
                #expect(created.status == 0, "\(created.stderr)")
            }
            #expect(try cli(["vm", "start", bystander]).status == 0)
            #expect(try cli(["vm", "console", bystander, "--expect", "halting", "--timeout", "10"]).status == 0)
            _ = try cli(["vm", "start", hog, "--timeout", "10"], ["MARTLET_VMM_TEST_ALLOCATE_MIB": "256"])
            #expect(Poll.until(timeout: 60) { fixture.host.runnerPID(hog) == nil }, "the hog's runner did not end")

            let log = (try? String(contentsOfFile: fixture.paths.runnerLog(hog), encoding: .utf8)) ?? ""
            #expect(log.contains("out of memory: the VMM went over its memory limit"), "\(log)")
            let shown = try cli(["vm", "show", hog])
            #expect(shown.stdout.contains("out of memory"), "\(shown.stdout)")

            #expect(fixture.host.runnerPID(bystander) != nil, "the other VM's runner still runs")
            let reply = try ControlClient.send(.state, to: fixture.paths.controlSocket(bystander), timeout: 5)
            #expect(reply.ok && reply.state == .running, "\(reply)")
            #expect(try cli(["vm", "stop", bystander]).status == 0)
        #else
            Issue.record("skipped: the test-only allocation exists only in debug builds of martlet-vmm")
        #endif
    }
}
