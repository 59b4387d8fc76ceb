import CMartletSystem

#if canImport(Glibc)
    import Glibc
#endif

/// What a jailed child sees as its whole filesystem, and who it runs as.
public struct JailLayout: Sendable, Equatable {
    /// One thing in the child's new root, at the same absolute path as on the host unless
    /// said otherwise.
    public enum Entry: Sendable, Equatable {
        /// The host's file, device or directory `source`, bind-mounted at `target`.
        case bind(source: String, target: String, readOnly: Bool)
        /// A symbolic link at `path` to `destination` (/lib -> usr/lib on merged-/usr hosts).
        case symlink(path: String, destination: String)

        var target: String {
            switch self {
            case .bind(_, let target, _): target
            case .symlink(let path, _): path
            }
        }
    }

    /// The uid, gid and supplementary groups the child switches to after pivot_root.
    public struct Credentials: Sendable, Equatable {
        public var uid: uid_t
        public var gid: gid_t
        public var groups: [gid_t]

        public init(uid: uid_t, gid: gid_t, groups: [gid_t]) {
            self.uid = uid
            self.gid = gid
            self.groups = groups
        }
    }

    /// An existing, empty host directory: the child mounts its own tmpfs there (visible only
    /// in its mount namespace) and makes it its `/`.
    public var root: String
    public var entries: [Entry]
    /// nil: the child keeps the caller's uid and gid.
    public var credentials: Credentials?
    /// The `cgroup.procs` files of the cgroups the child joins first.
    public var cgroupProcs: [String] = []
    /// A cgroup v2 directory the child is created in (clone3's CLONE_INTO_CGROUP), which
    /// spares the join's wait; `cgroupProcs` then serve only kernels without it (< 5.7).
    public var cgroupDirectory: String?
    /// Where the program finds the word that it is in its cgroups (a socket yielding "1"; EOF
    /// without it: the move failed and it must end), so its own start-up overlaps the move,
    /// which on cgroup v1 waits for an RCU grace period; nil: the child waits before execve.
    /// Must be above 2 (fds 0-2 are the child's stdio).
    public var cgroupJoinedDescriptor: Int32?

    public init(root: String, entries: [Entry], credentials: Credentials?) {
        self.root = root
        self.entries = entries
        self.credentials = credentials
    }
}

extension ChildProcess {
    /// Spawns `arguments` (argv[0] an absolute path that exists inside the jail) in new mount,
    /// PID, IPC and UTS namespaces as pid 1 of its PID namespace, with only `jail`'s entries
    /// and a /proc of its own under its new root (pivot_root), then `jail`'s credentials and
    /// no_new_privs; fds 0-2 as given, every other fd closed, an empty signal mask and
    /// default dispositions. The network namespace stays the caller's. Returns the pid as
    /// the caller sees it (`termination`/`wait` work as for `spawn`) once the program runs;
    /// a failing step throws naming the step and the path (`martlet_spawn_jailed`).
    public static func spawnJailed(
        _ arguments: [String], jail: JailLayout, stdin: Int32, stdout: Int32, stderr: Int32
    ) throws -> pid_t {
        guard let executable = arguments.first, executable.hasPrefix("/") else {
            throw SystemError("jail: execve", path: arguments.first, errno: EINVAL)
        }
        if let descriptor = jail.cgroupJoinedDescriptor, descriptor < 3 {
            throw SystemError("jail: the cgroup word's descriptor \(descriptor) is one of fds 0-2", path: arguments.first, errno: EINVAL)
        }
        var strings: [UnsafeMutablePointer<CChar>?] = []
        defer { for pointer in strings { free(pointer) } }
        func keep(_ text: String) -> UnsafeMutablePointer<CChar>? {
            let pointer = strdup(text)
            strings.append(pointer)
            return pointer
        }
        let entries = jail.entries.map { entry in
            switch entry {
            case .bind(let source, let target, let readOnly):
                martlet_jail_entry(
                    kind: Int32(MARTLET_JAIL_BIND), source: keep(source), target: keep(target),
                    read_only: readOnly ? 1 : 0)
            case .symlink(let path, let destination):
                martlet_jail_entry(
                    kind: Int32(MARTLET_JAIL_SYMLINK), source: keep(destination), target: keep(path),
                    read_only: 0)
            }
        }
        let argv = arguments.map(keep) + [nil]
        let cgroupProcs = jail.cgroupProcs.map { UnsafePointer(keep($0)) }
        var cgroup: FileDescriptor?
        if let directory = jail.cgroupDirectory {
            cgroup = try FileDescriptor.open(directory, O_RDONLY | O_DIRECTORY)
        }
        defer { cgroup?.close() }
        var failure = martlet_jail_failure()
        let groups = jail.credentials?.groups ?? []
        let stdio: [Int32] = [stdin, stdout, stderr]
        let pid = entries.withUnsafeBufferPointer { entries in
            groups.withUnsafeBufferPointer { groups in
                cgroupProcs.withUnsafeBufferPointer { cgroupProcs in
                    stdio.withUnsafeBufferPointer { stdio in
                        martlet_spawn_jailed(
                            jail.root, entries.baseAddress, Int32(entries.count),
                            jail.credentials?.uid ?? uid_t.max, jail.credentials?.gid ?? gid_t.max,
                            groups.baseAddress, Int32(groups.count), cgroup?.raw ?? -1, cgroupProcs.baseAddress,
                            Int32(cgroupProcs.count), jail.cgroupJoinedDescriptor ?? -1, stdio.baseAddress, executable,
                            argv, environ, &failure)
                    }
                }
            }
        }
        guard pid < 0 else { return pid }
        let step = Int(failure.step)
        let path: String
        if step == MARTLET_JAIL_STEP_CGROUP, failure.entry >= 0 {
            path = jail.cgroupProcs[Int(failure.entry)]
        } else if step == MARTLET_JAIL_STEP_CLONE, let directory = jail.cgroupDirectory {
            path = directory
        } else if failure.entry >= 0 {
            path = jail.entries[Int(failure.entry)].target
        } else {
            path = step == MARTLET_JAIL_STEP_EXEC ? executable : jail.root
        }
        throw SystemError("jail: " + Self.jailStep(failure.step), path: path, errno: failure.error)
    }

    private static func jailStep(_ step: Int32) -> String {
        switch Int(step) {
        case MARTLET_JAIL_STEP_CLONE: "clone (new mount, PID, IPC and UTS namespaces)"
        case MARTLET_JAIL_STEP_PRIVATE: "making the mounts private"
        case MARTLET_JAIL_STEP_TMPFS: "mounting the root's tmpfs"
        case MARTLET_JAIL_STEP_MKDIR: "creating the directories above"
        case MARTLET_JAIL_STEP_MOUNTPOINT: "creating the mount point"
        case MARTLET_JAIL_STEP_BIND: "bind-mounting"
        case MARTLET_JAIL_STEP_READ_ONLY: "making read-only"
        case MARTLET_JAIL_STEP_SYMLINK: "creating the symbolic link"
        case MARTLET_JAIL_STEP_PROC: "mounting /proc in"
        case MARTLET_JAIL_STEP_PIVOT: "pivot_root into"
        case MARTLET_JAIL_STEP_ROOT_READ_ONLY: "making the root read-only in"
        case MARTLET_JAIL_STEP_GROUPS: "setgroups in"
        case MARTLET_JAIL_STEP_GID: "setresgid in"
        case MARTLET_JAIL_STEP_UID: "setresuid in"
        case MARTLET_JAIL_STEP_NO_NEW_PRIVS: "prctl(PR_SET_NO_NEW_PRIVS) in"
        case MARTLET_JAIL_STEP_EXEC: "execve"
        case MARTLET_JAIL_STEP_STDIO: "dup2 of fds 0-2 in"
        case MARTLET_JAIL_STEP_CGROUP: "moving the child into the cgroup"
        default: "step \(step)"
        }
    }
}
