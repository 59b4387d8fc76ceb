import Foundation
import MartletCore

/// The cgroup a VMM runs in, written straight to the cgroup filesystem: `memory.max` (guest
/// RAM + the VMM's own overhead), `pids.max` and `cpu.max` from the definition. On v2 the
/// jailed child is created in it (`JailLayout.cgroupDirectory`), on v1 it joins before
/// `execve` (`JailLayout.cgroupProcs`), so every page the VMM touches is charged to it. cgroup v2 (installed hosts: systemd with `Delegate=yes` on the unit) or the
/// v1 memory, pids and cpu hierarchies (a hybrid layout such as the build machine's).
struct VMCgroup {
    /// What one VMM may use.
    struct Limits: Equatable {
        var memoryBytes: UInt64
        var tasks: Int
        /// CPU time per `cpuPeriod` microseconds, in microseconds.
        var cpuQuota: Int

        static let cpuPeriod = 100_000
        /// The VMM's own memory beside guest RAM: its program and stacks (≈ 8 MiB RSS measured
        /// by scripts/bench-vmm), device buffers, KVM's page tables for guest memory and page
        /// cache of its disks, which the kernel charges to the cgroup too (and reclaims first).
        static let memoryOverhead: UInt64 = 64 << 20
        /// Threads beside the vCPUs: main, control, serial, console and one or two per device.
        static let spareTasks = 32

        /// The limits of a VM with `vcpus` vCPUs and `memoryMiB` of guest RAM: the vCPUs plus
        /// one CPU for device I/O.
        init(vcpus: Int, memoryMiB: Int) {
            memoryBytes = UInt64(memoryMiB) << 20 + Self.memoryOverhead
            tasks = vcpus + Self.spareTasks
            cpuQuota = (vcpus + 1) * Self.cpuPeriod
        }

        init(memoryBytes: UInt64, tasks: Int, cpuQuota: Int) {
            self.memoryBytes = memoryBytes
            self.tasks = tasks
            self.cpuQuota = cpuQuota
        }
    }

    /// Where cgroups are: one v2 tree, or a directory per v1 controller.
    enum Hierarchy: Equatable {
        case unified(String)
        case legacy(memory: String, pids: String?, cpu: String?)
    }

    /// Where this process's VMM cgroups go: the v2 tree when /sys/fs/cgroup is one (under
    /// systemd the runner first moves itself into a `martlet-runner` leaf of its unit's cgroup,
    /// which `Delegate=yes` hands it, and enables the controllers there), else the v1 memory,
    /// pids and cpu hierarchies of its own cgroups; nil when neither can take a child.
    /// `ownCgroups` is the text of /proc/self/cgroup (read when nil; given by tests).
    static func hierarchy(
        forRunnerOf vm: String, cgroupRoot: String = "/sys/fs/cgroup", ownCgroups: String? = nil
    ) throws -> Hierarchy? {
        // "ID:CONTROLLERS:PATH"; v2's line is "0::PATH", so the empty field must stay.
        let own: [[String]] = (ownCgroups ?? (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? "")
            .split(separator: "\n")
            .map { $0.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init) }
            .filter { $0.count == 3 }
        if FileManager.default.fileExists(atPath: cgroupRoot + "/cgroup.controllers") {
            guard var path: String = own.first(where: { $0[0] == "0" })?[2] else { return nil }
            if (path as NSString).lastPathComponent == "martlet-runner" { path = (path as NSString).deletingLastPathComponent }
            let parent = cgroupRoot + (path == "/" ? "" : path)
            if (path as NSString).lastPathComponent == "martlet-vm@\(vm).service" {
                let leaf = parent + "/martlet-runner"
                if mkdir(leaf, 0o755) != 0 && errno != EEXIST { throw MartletError.system("mkdir", path: leaf) }
                try write("\(getpid())", to: leaf + "/cgroup.procs")
                try write("+memory +pids +cpu", to: parent + "/cgroup.subtree_control")
            }
            let enabled = (try? String(contentsOfFile: parent + "/cgroup.subtree_control", encoding: .utf8)) ?? ""
            return enabled.contains("memory") ? .unified(parent) : nil
        }
        func legacy(_ controller: String) -> String? {
            guard let path: String = own.first(where: { $0[1].split(separator: ",").contains { $0 == controller } })?[2]
            else { return nil }
            let directory = cgroupRoot + "/" + controller + (path == "/" ? "" : path)
            return FileManager.default.fileExists(atPath: directory + "/cgroup.procs") ? directory : nil
        }
        guard let memory = legacy("memory") else { return nil }
        return .legacy(memory: memory, pids: legacy("pids"), cpu: legacy("cpu"))
    }

    let hierarchy: Hierarchy
    let limits: Limits
    /// The cgroup's directory in each hierarchy (one for v2).
    let directories: [String]

    /// The file a process writes "0" to, to join: `cgroup.procs` in every directory.
    var procsFiles: [String] { directories.map { $0 + "/cgroup.procs" } }
    /// On v2, the one directory a process can be created in (clone3's CLONE_INTO_CGROUP).
    var unifiedDirectory: String? {
        if case .unified = hierarchy { return directories.first }
        return nil
    }

    /// Creates the cgroup `name` below `hierarchy`'s directories and writes `limits`. A
    /// cgroup that still has processes is refused (an earlier VMM of this VM that did not end).
    init(name: String, limits: Limits, under hierarchy: Hierarchy) throws {
        self.hierarchy = hierarchy
        self.limits = limits
        var files: [(directory: String, settings: [(String, String)])] = []
        switch hierarchy {
        case .unified(let parent):
            files.append(
                (
                    parent + "/" + name,
                    [
                        ("memory.max", "\(limits.memoryBytes)"), ("memory.swap.max", "0"),
                        ("pids.max", "\(limits.tasks)"),
                        ("cpu.max", "\(limits.cpuQuota) \(Limits.cpuPeriod)"),
                    ]
                ))
        case .legacy(let memory, let pids, let cpu):
            files.append((memory + "/" + name, [("memory.limit_in_bytes", "\(limits.memoryBytes)")]))
            if let pids { files.append((pids + "/" + name, [("pids.max", "\(limits.tasks)")])) }
            if let cpu {
                files.append(
                    (
                        cpu + "/" + name,
                        [("cpu.cfs_period_us", "\(Limits.cpuPeriod)"), ("cpu.cfs_quota_us", "\(limits.cpuQuota)")]
                    ))
            }
        }
        var created: [String] = []
        do {
            for (directory, settings) in files {
                // An empty one left by a runner that did not end cleanly goes; one in use stays.
                rmdir(directory)
                guard mkdir(directory, 0o755) == 0 else {
                    throw MartletError(
                        errno == EEXIST ? .refused : .failed,
                        "cgroup \(directory): mkdir failed: \(String(cString: strerror(errno)))",
                        hint: errno == EEXIST
                            ? "a VMM of this VM may still run in it; stop it, or rmdir the directory once it is empty"
                            : "the runner needs a writable cgroup (systemd: Delegate=yes on martlet-vm@.service)")
                }
                created.append(directory)
                for (file, value) in settings where !(file == "memory.swap.max" && !FileManager.default.fileExists(atPath: directory + "/" + file)) {
                    try Self.write(value, to: directory + "/" + file)
                }
            }
        } catch {
            for directory in created.reversed() { rmdir(directory) }
            throw error
        }
        directories = created
    }

    static func write(_ value: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MartletError.system("open", path: path) }
        defer { close(fd) }
        guard Glibc.write(fd, value, value.utf8.count) == value.utf8.count else {
            throw MartletError.system("write '\(value)'", path: path)
        }
    }

    /// True when the kernel's OOM killer ended a process of this cgroup for its memory limit.
    var memoryLimitKilled: Bool {
        let file: String
        switch hierarchy {
        case .unified: file = directories[0] + "/memory.events"
        case .legacy: file = directories[0] + "/memory.oom_control"
        }
        let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").contains { line in
            let fields = line.split(separator: " ")
            return fields.count == 2 && fields[0] == "oom_kill" && fields[1] != "0"
        }
    }

    /// Removes the cgroup once its processes have ended (rmdir of an empty cgroup).
    func remove() {
        for directory in directories.reversed() { rmdir(directory) }
    }
}
