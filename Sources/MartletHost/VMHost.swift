import Foundation
import MartletCore
import MartletSystem
import MartletVMMProtocol

/// A VM as `vm list|show` and the API report it.
public struct VMStatus: Codable, Equatable, Sendable {
    public enum State: String, Codable, Sendable { case running, stopped }
    public var name: String
    public var state: State
    /// The runner process (`martlet vm run NAME`) while running.
    public var pid: Int32?
    public var definition: VMDefinition
    /// Why a stopped VM ended on its own, when it did not power off: "no bootable device",
    /// or the runner's failure status. Nil while running and after a clean stop.
    public var problem: String?
    /// When the running VM's runner started, in seconds since 1970 (its pid file's
    /// modification time: the runner writes it once, as it starts, and a guest reboot or an
    /// on-crash restart keeps the runner). Nil while stopped. A time rather than an uptime,
    /// so the live list changes only when the state does.
    public var startedAt: Int?

    public init(
        name: String, state: State, pid: Int32? = nil, definition: VMDefinition,
        problem: String? = nil, startedAt: Int? = nil
    ) {
        self.name = name
        self.state = state
        self.pid = pid
        self.definition = definition
        self.problem = problem
        self.startedAt = startedAt
    }

    /// The runner's exit status when the kernel's OOM killer ended the VMM for its cgroup's
    /// memory limit: a status of its own, since 128 + SIGKILL is also what a forced stop gives.
    public static let outOfMemoryRunnerStatus: Int32 = 10

    /// What a runner's exit status says about how the VM ended (nil: it ended cleanly).
    public static func problem(runnerStatus status: Int32) -> String? {
        switch status {
        case 0: nil
        case VMMExitCode.noBootableDevice.rawValue: "no bootable device"
        case 128 + SIGSYS: "killed by seccomp: the VMM made a syscall outside its allow-list (named in the VM's log)"
        case outOfMemoryRunnerStatus:
            "out of memory: the VMM went over its cgroup's memory limit (guest RAM + \(VMCgroup.Limits.memoryOverhead >> 20) MiB) and the kernel's OOM killer ended it"
        default: "failed (runner status \(status))"
        }
    }
}

/// The operations of the host, shared by the CLI and the REST API: VM definitions, their
/// runtime state, and the volumes of the storage pools, with the refusals that keep them
/// consistent (name taken, VM running, volume in use, pool full).
public struct VMHost: Sendable {
    public let paths: HostPaths

    public init(paths: HostPaths = .fromEnvironment()) {
        self.paths = paths
    }

    // MARK: Pools and volumes

    public func pools() throws -> [any StoragePool] {
        try StorageConfiguration.pools(path: paths.storageConfiguration)
    }

    public func pool(_ name: String) throws -> any StoragePool {
        let all = try pools()
        guard let pool = all.first(where: { $0.name == name }) else {
            throw MartletError(
                .notFound, "no storage pool '\(name)' in \(paths.storageConfiguration)",
                hint: all.isEmpty
                    ? "the installer writes the pools there"
                    : "pools: \(all.map(\.name).joined(separator: ", "))")
        }
        return pool
    }

    /// Splits `POOL/VOLUME`.
    public static func volumeReference(_ text: String) throws -> (pool: String, volume: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw MartletError(
                .invalidInput, "'\(text)' is not POOL/VOLUME", hint: "write e.g. local/web-root")
        }
        return (parts[0], parts[1])
    }

    /// The VMs whose definitions use `pool/volume` as a disk or boot file.
    public func users(pool: String, volume: String) throws -> [String] {
        try definitions().filter { definition in
            definition.disks.contains { $0.pool == pool && $0.volume == volume }
                || [definition.boot.kernel, definition.boot.initrd].contains(
                    .volume(pool: pool, volume: volume))
        }.map(\.name)
    }

    public func deleteVolume(pool: String, volume: String) throws {
        let users = try users(pool: pool, volume: volume)
        guard users.isEmpty else {
            throw MartletError(
                .refused,
                "volume '\(pool)/\(volume)' is in use by VM \(users.map { "'\($0)'" }.joined(separator: ", "))",
                hint: "detach it (martlet vm edit) or delete the VM first")
        }
        try self.pool(pool).deleteVolume(volume)
    }

    public func resizeVolume(pool: String, volume: String, size: ByteSize) throws -> VolumeInfo {
        for user in try users(pool: pool, volume: volume) where try isRunning(user) {
            throw MartletError(
                .refused, "volume '\(pool)/\(volume)' is in use by the running VM '\(user)'",
                hint: "stop it first: martlet vm stop \(user)")
        }
        return try self.pool(pool).resizeVolume(volume, size: size)
    }

    // MARK: Definitions

    public func definitions() throws -> [VMDefinition] {
        let entries =
            (try? FileManager.default.contentsOfDirectory(atPath: paths.vmsDirectory)) ?? []
        return try entries.filter { $0.hasSuffix(".toml") }.sorted().map {
            try VMDefinition(path: "\(paths.vmsDirectory)/\($0)")
        }
    }

    public func definition(_ name: String) throws -> VMDefinition {
        let path = paths.definition(name)
        guard VMDefinition.isValidName(name), FileManager.default.fileExists(atPath: path) else {
            throw MartletError(
                .notFound, "no VM '\(name)' (no \(path))", hint: "see 'martlet vm list'")
        }
        return try VMDefinition(path: path)
    }

    /// Checks that the disks and boot volumes a definition names exist.
    public func checkReferences(_ definition: VMDefinition) throws {
        for disk in definition.disks { _ = try pool(disk.pool).volume(disk.volume) }
        for case .volume(let pool, let volume)? in [definition.boot.kernel, definition.boot.initrd]
        {
            _ = try self.pool(pool).volume(volume)
        }
        if case .path(let path)? = definition.boot.kernel,
            !FileManager.default.fileExists(atPath: path)
        {
            throw MartletError(
                .notFound, "VM '\(definition.name)': kernel '\(path)' does not exist")
        }
        do {
            _ = try definition.cloudInit?.readUserData()
        } catch let error as MartletError {
            throw MartletError(
                error.code, "VM '\(definition.name)': cloud-init.user-data: \(error.message)",
                hint: "give a cloud-config file of at most \(ByteSize(UInt64(VMDefinition.CloudInit.maxUserDataBytes)))")
        }
        if definition.boot.mode == .disk { try checkFirmware(definition) }
    }

    /// Refuses a firmware file the VMM would refuse, before a VMM is spawned for it.
    func checkFirmware(_ definition: VMDefinition) throws {
        let path = definition.boot.firmwarePath
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else {
            throw MartletError(
                .notFound, "VM '\(definition.name)': firmware '\(path)' does not exist",
                hint: path == VMDefinition.defaultFirmware
                    ? "install Debian's seabios package (apt-get install seabios)"
                    : "give an existing BIOS image as boot.firmware, or leave it out for \(VMDefinition.defaultFirmware)")
        }
        let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
        if let problem = FirmwareRules.problem(path: path, size: size) {
            throw MartletError(.invalidInput, "VM '\(definition.name)': firmware \(problem)")
        }
    }

    /// A volume `create` makes for the new VM (`vm create --new-disk`, the API's `size`).
    public struct NewVolume: Equatable, Sendable {
        public var pool: String
        public var volume: String
        public var size: ByteSize

        public init(pool: String, volume: String, size: ByteSize) {
            self.pool = pool
            self.volume = volume
            self.size = size
        }
    }

    /// Defines a new VM: validates `definition`, refuses a name that is taken, creates
    /// `newVolumes` (each must be one of its disks) and writes the definition. When any step
    /// fails, the volumes this call created are deleted again and nothing is left behind.
    @discardableResult
    public func create(_ definition: VMDefinition, newVolumes: [NewVolume] = []) throws -> VMStatus {
        try definition.validate()
        guard !FileManager.default.fileExists(atPath: paths.definition(definition.name)) else {
            throw MartletError(
                .refused, "a VM named '\(definition.name)' already exists",
                hint: "choose another name, or change it with 'martlet vm edit \(definition.name)'")
        }
        for new in newVolumes
        where !definition.disks.contains(where: { $0.pool == new.pool && $0.volume == new.volume }) {
            throw MartletError(
                .invalidInput,
                "new volume '\(new.pool)/\(new.volume)' is not one of VM '\(definition.name)''s disks",
                hint: "attach every volume the VM creates")
        }
        var created: [NewVolume] = []
        do {
            for new in newVolumes {
                _ = try pool(new.pool).createVolume(new.volume, size: new.size)
                created.append(new)
            }
            try write(definition, exclusive: true)
        } catch {
            for volume in created.reversed() { try? pool(volume.pool).deleteVolume(volume.volume) }
            throw error
        }
        return try status(definition.name)
    }

    /// Replaces a definition (validated by parsing it back) while the VM is stopped.
    public func replace(_ definition: VMDefinition) throws {
        _ = try self.definition(definition.name)
        try refuseWhenRunning(definition.name, action: "changing")
        try write(definition)
    }

    /// Validates TOML text as the definition of `name` and installs it (for `vm edit`).
    @discardableResult
    public func replace(name: String, toml: String) throws -> VMDefinition {
        let parsed = try VMDefinition(path: paths.definition(name), contents: toml)
        _ = try self.definition(name)
        try refuseWhenRunning(name, action: "changing")
        try checkReferences(parsed)
        try Self.atomicWrite(toml, to: paths.definition(name))
        return parsed
    }

    /// Writes the definition file; `exclusive` (a create) fails with "already exists" when
    /// the file appeared meanwhile, so of two racing creates exactly one wins.
    func write(_ definition: VMDefinition, exclusive: Bool = false) throws {
        try definition.validate()
        let text = definition.toml
        try checkReferences(definition)
        try FileManager.default.createDirectory(
            atPath: paths.vmsDirectory, withIntermediateDirectories: true)
        try Self.atomicWrite(text, to: paths.definition(definition.name), exclusive: exclusive)
    }

    /// Writes `text` to a temporary file of its own (mode 0644) and puts it at `path`
    /// whole: renamed over it, or with `exclusive` linked, which fails when `path` exists.
    static func atomicWrite(_ text: String, to path: String, exclusive: Bool = false) throws {
        var template = Array((path + ".tmp.XXXXXX").utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw MartletError.system("mkstemp", path: path) }
        let temporary = String(cString: template)
        defer { unlink(temporary) }
        let file = FileDescriptor(fd)
        guard fchmod(fd, 0o644) == 0, file.writeAll(Array(text.utf8)) else {
            throw MartletError.system("write", path: temporary)
        }
        file.close()
        if exclusive {
            guard link(temporary, path) == 0 else {
                if errno == EEXIST {
                    throw MartletError(
                        .refused, "'\(path)' already exists",
                        hint: "another request created it first; choose another name")
                }
                throw MartletError.system("link", path: path)
            }
        } else {
            guard rename(temporary, path) == 0 else { throw MartletError.system("rename", path: path) }
        }
    }

    /// Deletes a stopped VM's definition and, with `volumes`, its disk volumes.
    public func delete(_ name: String, volumes: Bool = false) throws {
        let definition = try self.definition(name)
        try refuseWhenRunning(name, action: "deleting")
        guard unlink(paths.definition(name)) == 0 else {
            throw MartletError.system("unlink", path: paths.definition(name))
        }
        try? FileManager.default.removeItem(atPath: paths.state(name))
        if volumes {
            for disk in definition.disks
            where try self.users(pool: disk.pool, volume: disk.volume).isEmpty {
                try pool(disk.pool).deleteVolume(disk.volume)
            }
        }
    }

    // MARK: Runtime state

    /// The runner's pid while it is alive.
    public func runnerPID(_ name: String) -> Int32? {
        guard let text = try? String(contentsOfFile: paths.runnerPID(name), encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
            kill(pid, 0) == 0 || errno == EPERM
        else { return nil }
        // A reused pid belongs to some other program: check it is our runner.
        let commandLine =
            (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
        let arguments = commandLine.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard arguments.contains("run"), arguments.last == name else { return nil }
        return pid
    }

    public func isRunning(_ name: String) throws -> Bool { runnerPID(name) != nil }

    public func status(_ name: String) throws -> VMStatus {
        status(of: try definition(name))
    }

    public func statuses() throws -> [VMStatus] {
        try definitions().map(status(of:))
    }

    func status(of definition: VMDefinition) -> VMStatus {
        guard let pid = runnerPID(definition.name) else {
            return VMStatus(
                name: definition.name, state: .stopped, definition: definition,
                problem: runnerExitStatus(definition.name).flatMap(VMStatus.problem(runnerStatus:)))
        }
        var info = stat()
        let started = stat(paths.runnerPID(definition.name), &info) == 0 ? Int(info.st_mtim.tv_sec) : nil
        return VMStatus(name: definition.name, state: .running, pid: pid, definition: definition, startedAt: started)
    }

    /// The status the VM's last runner recorded as it ended (`runner.exit`), if any.
    func runnerExitStatus(_ name: String) -> Int32? {
        (try? String(contentsOfFile: paths.runnerExit(name), encoding: .utf8)).flatMap {
            Int32($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    func refuseWhenRunning(_ name: String, action: String) throws {
        if try isRunning(name) {
            throw MartletError(
                .refused, "VM '\(name)' is running; \(action) it needs it stopped",
                hint: "stop it first: martlet vm stop \(name)")
        }
    }
}
