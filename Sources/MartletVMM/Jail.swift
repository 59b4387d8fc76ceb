import CSeccomp
import MartletVMMProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What the VMM gives up once its VM exists, besides seccomp: no_new_privs, every capability
/// (per thread: the threads started earlier drop theirs when they confine themselves), and
/// resource limits that bound what a guest can make it consume on the host.
public enum Jail {
    private static let active = Atomic<Bool>(false)

    /// True once `forbidNewPrivileges` ran (the executable, never a test running a `Machine`
    /// in-process): threads drop their capabilities when they confine themselves.
    public static var isActive: Bool { active.load(ordering: .acquiring) }

    /// Descriptors the VMM may open beyond those it holds once the VM exists: accepted
    /// serial and control clients, the re-executed VMM's start-up.
    public static let spareDescriptors = 32
    /// The least file size limit: the serial log grows by whatever the guest prints.
    public static let minimumFileSize: UInt64 = 1 << 30

    /// Sets no_new_privs; called first, before the seccomp filters (which require it).
    public static func forbidNewPrivileges() throws {
        let result = cseccomp_set_no_new_privs()
        guard result == 0 else { throw VMMError(.io, "jail: prctl(PR_SET_NO_NEW_PRIVS) failed: \(errnoText(Int32(-result)))") }
        active.store(true, ordering: .releasing)
    }

    /// Drops the calling thread's capabilities and sets RLIMIT_NOFILE (descriptors open now +
    /// `spareDescriptors`) and RLIMIT_FSIZE (the largest disk, at least `minimumFileSize`;
    /// beyond it writes fail with EFBIG instead of SIGXFSZ). Call once the VM's files, taps
    /// and KVM handles are open, before the first guest instruction.
    public static func lockDown(config: VMConfig) throws {
        try dropCapabilities()
        var largestDisk: UInt64 = 0
        for disk in config.disks {
            var info = stat()
            if stat(disk.path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG {
                largestDisk = max(largestDisk, UInt64(info.st_size))
            }
        }
        signal(SIGXFSZ, SIG_IGN)
        try limit(RLIMIT_FSIZE, to: max(largestDisk, minimumFileSize), name: "RLIMIT_FSIZE")
        try limit(RLIMIT_NOFILE, to: UInt64(highestOpenDescriptor() + 1 + spareDescriptors), name: "RLIMIT_NOFILE")
    }

    /// Drops the calling thread's capabilities (every set, and the bounding set where allowed).
    static func dropCapabilities() throws {
        let result = cseccomp_drop_capabilities()
        guard result == 0 else { throw VMMError(.io, "jail: dropping capabilities failed: \(errnoText(Int32(-result)))") }
    }

    private static func limit(_ resource: __rlimit_resource, to value: UInt64, name: String) throws {
        let resource = __rlimit_resource_t(resource.rawValue)
        var current = rlimit()
        getrlimit(resource, &current)
        // Never raise: a supervisor's tighter limit stays.
        let value = min(value, UInt64(current.rlim_max))
        var limit = rlimit(rlim_cur: rlim_t(value), rlim_max: rlim_t(value))
        guard setrlimit(resource, &limit) == 0 else {
            throw VMMError(.io, "jail: setrlimit(\(name), \(value)) failed: \(errnoText(errno))")
        }
    }

    private static func highestOpenDescriptor() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return 64 }
        defer { closedir(directory) }
        var highest = 2
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if let fd = Int(name) { highest = max(highest, fd) }
        }
        return highest
    }
}
