import MartletValidation

/// Where the guest's serial console goes: output to stdout (input from stdin), nowhere, a
/// file, or a unix listening socket (output to the client, input from it).
public enum SerialOutput: Equatable, Sendable {
    case stdout
    case none
    case file(String)
    case socket(String)
}

/// Everything needed to start a VM; built from JSON (`VMConfig(json:)`) or from flags, and
/// written by the host (`jsonText`) for the VMM it starts.
public struct VMConfig: Equatable, Sendable {
    public struct Disk: Equatable, Sendable {
        public var path: String
        public var readOnly = false
        /// The virtio-blk serial (GET_ID), at most 20 bytes.
        public var id = ""
        public var cache: Cache = .writeback
        /// virtio-blk request queues (VIRTIO_BLK_F_MQ); nil: one per vCPU.
        public var queues: Int?
        public init(path: String, readOnly: Bool = false, id: String = "", cache: Cache = .writeback, queues: Int? = nil) {
            self.path = path
            self.readOnly = readOnly
            self.id = id
            self.cache = cache
            self.queues = queues
        }

        /// The most request queues a disk may have.
        public static let maxQueues = 16

        /// The queues the disk gets on a machine with `vcpus` vCPUs: `queues`, else one per
        /// vCPU up to `maxQueues`.
        public func queueCount(vcpus: Int) -> Int { queues ?? min(vcpus, Disk.maxQueues) }

        /// How the disk uses the host's page cache: `writeback` goes through it (FLUSH makes
        /// the data durable), `none` opens the image with O_DIRECT and bypasses it.
        public enum Cache: String, Sendable, CaseIterable { case writeback, none }
    }

    public struct NIC: Equatable, Sendable {
        /// Name of the tap device (created if missing, with a virtio-net header).
        public var tap: String
        /// "52:54:00:12:34:56"; derived from the tap name when nil.
        public var mac: String?
        /// virtio-net queue pairs (VIRTIO_NET_F_MQ), each on its own queue of a multi-queue
        /// tap; nil: one.
        public var queues: Int?
        public init(tap: String, mac: String? = nil, queues: Int? = nil) {
            self.tap = tap
            self.mac = mac
            self.queues = queues
        }

        /// The most queue pairs a NIC may have.
        public static let maxQueues = 8

        /// The queue pairs the NIC gets: `queues`, else one. Not one per vCPU as for disks:
        /// more than one pair needs a tap made with `multi_queue` (a tap made without it
        /// cannot be opened that way), and each pair costs a tap queue and, with vhost-net, a
        /// kernel worker thread, so it is asked for where the traffic needs it.
        public var queuePairs: Int { queues ?? 1 }

        /// The six bytes of "52:54:00:12:34:56", nil when `text` is not such an address.
        public static func parseMAC(_ text: String) -> [UInt8]? { MACAddress.bytes(text) }
    }

    /// What a guest-requested reset does.
    public enum RebootPolicy: String, Sendable, CaseIterable { case exit, restart }

    /// How application processors start: waiting for INIT/SIPI like on a PC (Linux), or all
    /// at the kernel entry in 64-bit mode (the tiny test guests, which have no trampoline).
    public enum APStart: String, Sendable, CaseIterable { case sipi, entry }

    /// The VMM's seccomp filters: `on` ends the VMM with SIGSYS at the first syscall outside
    /// a thread's allow-list, `log` only logs it (to the kernel's audit log, for finding what a
    /// new code path needs), `off` installs none (debugging only).
    public enum SeccompMode: String, Sendable, CaseIterable { case on, off, log }

    public var vcpus = 1
    public var memoryMiB = 256
    public var kernel = ""
    /// A BIOS image booted instead of `kernel` (firmware boot from the first disk).
    public var firmware: String?
    /// Logs unhandled ports and MMIO pages (once each) and the firmware's debug port
    /// (0x402) on stderr. Set by `--trace-io`, not a configuration key.
    public var traceIO = false
    public var initrd: String?
    public var cmdline = "console=ttyS0"
    public var disks: [Disk] = []
    public var nics: [NIC] = []
    public var rng = false
    public var serial: SerialOutput = .stdout
    /// A file that also receives the guest's serial output (appended), whatever `serial` is.
    public var serialLog: String?
    public var onReboot: RebootPolicy = .exit
    public var controlSocket: String?
    public var apStart: APStart = .sipi
    public var seccomp: SeccompMode = .on

    public init() {}

    public static let maxVCPUs = 64
    /// The VMM has this many IOAPIC pins for virtio devices (disks, NICs and the rng).
    public static let maxVirtioDevices = 16
    /// Kept under the 4 KiB the boot layout reserves for the command line.
    public static let maxCommandLineBytes = 3840

    /// Checks ranges and combinations before any resource is created; errors name the field.
    public func validate() throws {
        guard (1...VMConfig.maxVCPUs).contains(vcpus) else {
            throw ProtocolError("vcpus: \(vcpus) is out of range; use 1 to \(VMConfig.maxVCPUs)")
        }
        guard (4...(1 << 20)).contains(memoryMiB) else {
            throw ProtocolError("memory_mib: \(memoryMiB) is out of range; use 4 to 1048576")
        }
        if let firmware {
            guard kernel.isEmpty else {
                throw ProtocolError("kernel, firmware: both given; boot either a kernel directly or the firmware from the first disk")
            }
            guard !firmware.isEmpty else { throw ProtocolError("firmware: empty path; give a BIOS image or leave the key out") }
        } else {
            guard !kernel.isEmpty else {
                throw ProtocolError("kernel: missing; give the path of a bzImage or ELF vmlinux (or \"firmware\" to boot a disk)")
            }
        }
        guard cmdline.utf8.count < VMConfig.maxCommandLineBytes else {
            throw ProtocolError("cmdline: \(cmdline.utf8.count) bytes is too long; keep it under \(VMConfig.maxCommandLineBytes)")
        }
        for (index, disk) in disks.enumerated() {
            if let queues = disk.queues, !(1...Disk.maxQueues).contains(queues) {
                throw ProtocolError("disks[\(index)].queues: \(queues) is out of range; use 1 to \(Disk.maxQueues), or leave it out for one per vCPU")
            }
        }
        for (index, nic) in nics.enumerated() {
            if let queues = nic.queues, !(1...NIC.maxQueues).contains(queues) {
                throw ProtocolError("nics[\(index)].queues: \(queues) is out of range; use 1 to \(NIC.maxQueues) queue pairs, or leave it out for one")
            }
        }
        guard disks.count + nics.count + (rng ? 1 : 0) <= VMConfig.maxVirtioDevices else {
            throw ProtocolError("disks, nics: at most \(VMConfig.maxVirtioDevices) virtio devices fit")
        }
        do {
            try checkText()
        } catch {
            throw ProtocolError(error.description)
        }
    }

    /// Every string of the configuration: no NUL (which would cut a path short at the system
    /// call), no control characters, tap names from the one name pattern (no '%', which
    /// would let the kernel pick the name), unicast MACs, and paths that are not empty (an
    /// empty socket path would become an abstract socket anyone can connect to).
    private func checkText() throws(InvalidInput) {
        try Text.check(cmdline, field: "cmdline")
        if firmware == nil { try FilePath.checkText(kernel, field: "kernel") }
        if let firmware { try FilePath.checkText(firmware, field: "firmware") }
        if let initrd { try FilePath.checkText(initrd, field: "initrd") }
        for (index, nic) in nics.enumerated() {
            try Name.check(nic.tap, field: "nics[\(index)].tap", what: "tap device name", maxLength: Name.maxInterfaceLength)
            if let mac = nic.mac { _ = try MACAddress.parseUnicast(mac, field: "nics[\(index)].mac") }
        }
        for (index, disk) in disks.enumerated() {
            try FilePath.checkText(disk.path, field: "disks[\(index)].path")
            try Text.check(disk.id, field: "disks[\(index)].id", maxBytes: 20)
        }
        switch serial {
        case .file(let path), .socket(let path): try FilePath.checkText(path, field: "serial")
        case .stdout, .none: break
        }
        if let serialLog { try FilePath.checkText(serialLog, field: "serial_log") }
        if let controlSocket { try FilePath.checkText(controlSocket, field: "control_socket") }
    }

    /// What the files named by the configuration are, checked before anything is opened or
    /// created: kernel, initrd and firmware regular files, disks image files or block
    /// devices (never a FIFO, a directory or /dev/null), output files absent or regular,
    /// socket paths free or holding a socket. stat(2) only, so nothing blocks.
    public func checkFiles() throws {
        do {
            if let firmware {
                try FilePath.check(firmware, field: "firmware", kind: .regularFile)
            } else {
                try FilePath.check(kernel, field: "kernel", kind: .regularFile)
            }
            if let initrd { try FilePath.check(initrd, field: "initrd", kind: .regularFile) }
            for (index, disk) in disks.enumerated() {
                try FilePath.check(disk.path, field: "disks[\(index)].path", kind: .disk)
            }
            switch serial {
            case .file(let path): try FilePath.checkOutput(path, field: "serial", kind: .regularFile)
            case .socket(let path): try FilePath.checkOutput(path, field: "serial", kind: .socket)
            case .stdout, .none: break
            }
            if let serialLog { try FilePath.checkOutput(serialLog, field: "serial_log", kind: .regularFile) }
            if let controlSocket { try FilePath.checkOutput(controlSocket, field: "control_socket", kind: .socket) }
        } catch {
            throw ProtocolError(error.description)
        }
    }
}
