import Foundation
import Logging
import MartletSystem

/// The outcome of a finished subprocess.
public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: Data
    public var stderr: String

    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
}

/// A program to run with its arguments. Martlet drives mmdebstrap, xorriso, grub, mkfs and
/// friends through this, so every failure names the command and carries its stderr.
public struct Command: Sendable, CustomStringConvertible {
    public var executable: String
    public var arguments: [String]
    /// Variables added to (or replacing) the inherited environment.
    public var environment: [String: String]
    public var workingDirectory: String?

    public init(
        _ executable: String, _ arguments: [String] = [], environment: [String: String] = [:],
        workingDirectory: String? = nil
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
    }

    public var description: String {
        ([executable] + arguments).map { arg in
            arg.contains(where: { $0 == " " || $0 == "'" || $0 == "\"" }) ? "'\(arg)'" : arg
        }.joined(separator: " ")
    }

    /// Runs to completion and throws when the exit status is not zero.
    @discardableResult
    public func run(
        input: Data? = nil, logger: Logger? = nil, hint: String? = nil
    ) throws -> CommandResult {
        let result = try runAllowingFailure(input: input, logger: logger)
        guard result.status == 0 else {
            throw MartletError(
                .failed, "'\(self)' exited with status \(result.status)", hint: hint,
                cause: Self.tail(result.stderr.isEmpty ? result.stdoutText : result.stderr))
        }
        return result
    }

    /// Runs to completion and returns whatever status it ended with.
    public func runAllowingFailure(input: Data? = nil, logger: Logger? = nil) throws
        -> CommandResult
    {
        let output = try execute(input: input, logger: logger, onOutput: nil)
        return CommandResult(
            status: output.status, stdout: Data(output.stdoutBytes), stderr: output.stderr)
    }

    /// Runs to completion, handing each line of output to `onLine` as it arrives (for
    /// progress); throws with the last lines of stderr when the exit status is not zero.
    public func stream(
        logger: Logger? = nil, hint: String? = nil,
        onLine: @escaping @Sendable (_ line: String, _ isStderr: Bool) -> Void
    ) throws {
        var stderrTail: [String] = []
        let outSplitter = LineSplitter { onLine($0, false) }
        let errSplitter = LineSplitter {
            stderrTail = stderrTail.suffix(19) + [$0]
            onLine($0, true)
        }
        let output = try execute(input: nil, logger: logger) { chunk, isStderr in
            (isStderr ? errSplitter : outSplitter).feed(chunk)
        }
        outSplitter.finish()
        errSplitter.finish()
        guard output.status == 0 else {
            throw MartletError(
                .failed, "'\(self)' exited with status \(output.status)", hint: hint,
                cause: stderrTail.joined(separator: "\n"))
        }
    }

    /// Runs through the process layer (MartletSystem): the child gets no fd but 0, 1 and 2.
    private func execute(
        input: Data?, logger: Logger?, onOutput: ChildProcess.OutputHandler?
    ) throws -> ChildProcess.Output {
        let path = try Tool.resolve(executable)
        let environment =
            self.environment.isEmpty
            ? nil
            : ProcessInfo.processInfo.environment.merging(self.environment) { $1 }.map {
                "\($0.key)=\($0.value)"
            }
        logger?.debug("run: \(self)")
        do {
            return try ChildProcess.run(
                [path] + arguments, input: input.map { [UInt8]($0) } ?? [],
                environment: environment, workingDirectory: workingDirectory, onOutput: onOutput)
        } catch {
            throw MartletError(.failed, "could not start '\(executable)'", cause: "\(error)")
        }
    }

    static func tail(_ text: String, lines: Int = 20) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: true).suffix(lines)
            .joined(separator: "\n")
    }
}

/// Splits a byte stream into lines; carriage returns (progress bars) also end a line.
private final class LineSplitter {
    private var buffer: [UInt8] = []
    private let emit: (String) -> Void
    init(_ emit: @escaping (String) -> Void) { self.emit = emit }

    func feed(_ chunk: [UInt8]) {
        buffer += chunk
        while let index = buffer.firstIndex(where: { $0 == 0x0A || $0 == 0x0D }) {
            let line = buffer[..<index]
            if !line.isEmpty { emit(String(decoding: line, as: UTF8.self)) }
            buffer.removeSubrange(...index)
        }
    }

    func finish() {
        if !buffer.isEmpty { emit(String(decoding: buffer, as: UTF8.self)) }
        buffer.removeAll()
    }
}

/// Finding the external tools Martlet drives, with the Debian package that provides each.
public enum Tool {
    /// Debian packages that provide the tools Martlet calls, for error messages.
    public static let packages: [String: String] = [
        "mmdebstrap": "mmdebstrap", "xorriso": "xorriso", "mksquashfs": "squashfs-tools",
        "unsquashfs": "squashfs-tools", "grub-mkimage": "grub-common",
        "grub-mkstandalone": "grub-common", "grub-install": "grub-pc-bin",
        "mformat": "mtools", "mcopy": "mtools", "mmd": "mtools", "mkfs.vfat": "dosfstools",
        "mkfs.ext4": "e2fsprogs", "mkfs.xfs": "xfsprogs", "qemu-system-x86_64": "qemu-system-x86",
        "qemu-img": "qemu-utils", "sfdisk": "fdisk", "sgdisk": "gdisk", "losetup": "mount",
        "lvm": "lvm2", "pvcreate": "lvm2", "vgcreate": "lvm2", "lvcreate": "lvm2",
        "wipefs": "util-linux", "zstd": "zstd", "cpio": "cpio", "iasl": "acpica-tools",
        "tmux": "tmux", "dpkg-query": "dpkg", "blkid": "util-linux", "udevadm": "udev",
        "partprobe": "parted", "parted": "parted", "strip": "binutils", "readelf": "binutils",
        "depmod": "kmod", "sha256sum": "coreutils",
    ]

    /// The absolute path of `name` on PATH (or `name` itself when it is a path).
    public static func resolve(_ name: String) throws -> String {
        if let found = find(name) { return found }
        let package = packages[name] ?? name
        throw MartletError(
            .missingDependency, "required tool '\(name)' was not found on PATH",
            hint: "install it with: apt-get install \(package)  (or run scripts/setup)")
    }

    /// The absolute path of `name` on PATH (then /usr/sbin and /sbin), or nil.
    public static func find(_ name: String) -> String? {
        ChildProcess.find(name)
    }

    /// Throws a `missingDependency` error naming the apt package of the first missing tool.
    public static func require(_ names: [String]) throws {
        for name in names { _ = try resolve(name) }
    }
}

/// Privilege checks with messages that say what needs root and why.
public enum Privilege {
    public static var isRoot: Bool { geteuid() == 0 }

    public static func requireRoot(for action: String) throws {
        guard isRoot else {
            throw MartletError(
                .permissionDenied, "\(action) needs root",
                hint: "run it again with sudo, or as root")
        }
    }
}
