import CKVM
import MartletVMMProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A BIOS image (SeaBIOS's `bios-microvm.bin`) as the VMM maps it: read-only at the top of
/// 4 GiB, where the reset vector at 0xFFFFFFF0 lands in it. Its last 128 KiB also appear at
/// 0xE0000 as ordinary, writable RAM: on QEMU's microvm the BIOS is RAM too, and SeaBIOS
/// keeps its variables in that segment (there is no chipset to unlock shadow RAM).
public final class FirmwareImage {
    /// The part of the image that also appears below 1 MiB.
    public static let legacyAliasSize = 128 << 10
    /// KVM_SET_TSS_ADDR in firmware mode: four pages below 0xFF000000 (the TSS and the
    /// real-mode identity map), clear of any image up to `FirmwareRules.maxSize`.
    public static let tssAddress: UInt64 = 0xFEFF_9000
    public static let tssSize: UInt64 = 0x4000

    public let path: String
    public let bytes: [UInt8]
    let host: UnsafeMutableRawPointer

    /// Reads and checks the image; errors name the file and say what a usable one looks like.
    public init(path: String) throws {
        let bytes = try readWholeFile(path, what: "firmware")
        if let problem = FirmwareRules.problem(path: path, size: bytes.count) { throw VMMError(.config, "firmware: \(problem)") }
        let mapping = mmap(nil, bytes.count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapping, mapping != MAP_FAILED else {
            throw VMMError(.memory, "cannot map \(bytes.count) bytes for firmware '\(path)': \(errnoText(errno))")
        }
        bytes.withUnsafeBytes { _ = memcpy(mapping, $0.baseAddress!, bytes.count) }
        self.path = path
        self.bytes = bytes
        self.host = mapping
    }

    deinit { munmap(host, bytes.count) }

    /// Guest address of the image's first byte.
    public var guestAddress: UInt64 { GuestMemory.fourGiB - UInt64(bytes.count) }

    /// The bytes that appear at 0x100000 - their count (0xE0000 for images of 128 KiB and up).
    public var legacyAlias: ArraySlice<UInt8> { bytes.suffix(FirmwareImage.legacyAliasSize) }
}

/// The ACPI tables as fw_cfg files plus the table-loader script (QEMU's BIOS linker/loader,
/// hw/acpi/bios-linker-loader.c) that tells SeaBIOS where to put them, how to patch the
/// pointers between them and which checksums to recompute.
public struct ACPITableFiles {
    public static let tablesFile = "etc/acpi/tables"
    public static let rsdpFile = "etc/acpi/rsdp"
    public static let loaderFile = "etc/table-loader"

    /// Table-loader command numbers and allocation zones (SeaBIOS src/fw/romfile_loader.h).
    public enum Command: UInt32 { case allocate = 1, addPointer = 2, addChecksum = 3 }
    public enum Zone: UInt8 { case high = 1, fseg = 2 }
    public static let commandSize = 128
    static let nameSize = 56

    /// DSDT, FADT, MADT, XSDT back to back; pointers hold offsets inside this blob.
    public var tables: [UInt8] = []
    /// The RSDP; its XSDT pointer is an offset in `tables`.
    public var rsdp: [UInt8] = []
    /// The loader script: 128-byte commands.
    public var loader: [UInt8] = []

    public init(_ acpi: ACPITables) {
        func align(_ blob: inout [UInt8]) { blob += [UInt8](repeating: 0, count: (8 - blob.count % 8) % 8) }
        let dsdtOffset = 0
        tables = acpi.dsdt
        align(&tables)
        let fadtOffset = tables.count
        tables += acpi.fadt(dsdtAddress: UInt64(dsdtOffset))
        align(&tables)
        let madtOffset = tables.count
        tables += acpi.madt
        align(&tables)
        let xsdtOffset = tables.count
        var entries = [UInt8](repeating: 0, count: 16)
        entries.put(UInt64(fadtOffset), at: 0)
        entries.put(UInt64(madtOffset), at: 8)
        tables += ACPITables.table("XSDT", revision: 1, body: entries)
        rsdp = ACPITables.rsdp(xsdtAddress: UInt64(xsdtOffset))

        append(.allocate, file: ACPITableFiles.rsdpFile, fields: [(16, 4), (UInt64(Zone.fseg.rawValue), 1)])
        append(.allocate, file: ACPITableFiles.tablesFile, fields: [(64, 4), (UInt64(Zone.high.rawValue), 1)])
        addPointer(in: ACPITableFiles.tablesFile, at: fadtOffset + 40, size: 4)  // FADT.DSDT
        addPointer(in: ACPITableFiles.tablesFile, at: fadtOffset + 140, size: 8)  // FADT.X_DSDT
        addPointer(in: ACPITableFiles.tablesFile, at: xsdtOffset + 36, size: 8)
        addPointer(in: ACPITableFiles.tablesFile, at: xsdtOffset + 44, size: 8)
        addPointer(in: ACPITableFiles.rsdpFile, at: 24, size: 8)  // RSDP.XsdtAddress
        for (offset, length) in [(dsdtOffset, acpi.dsdt.count), (fadtOffset, madtOffset - fadtOffset), (madtOffset, xsdtOffset - madtOffset), (xsdtOffset, tables.count - xsdtOffset)] {
            let tableLength = Int(tables.le(UInt32.self, at: offset + 4))
            precondition(tableLength <= length)
            tables[offset + 9] = 0
            addChecksum(in: ACPITableFiles.tablesFile, at: offset + 9, start: offset, length: tableLength)
        }
        rsdp[8] = 0
        rsdp[32] = 0
        addChecksum(in: ACPITableFiles.rsdpFile, at: 8, start: 0, length: 20)
        addChecksum(in: ACPITableFiles.rsdpFile, at: 32, start: 0, length: rsdp.count)
    }

    private mutating func append(_ command: Command, file: String, second: String? = nil, fields: [(UInt64, Int)]) {
        var entry = [UInt8](repeating: 0, count: ACPITableFiles.commandSize)
        entry.put(command.rawValue, at: 0)
        var offset = 4
        for name in [file] + (second.map { [$0] } ?? []) {
            entry.replaceSubrange(offset..<offset + name.utf8.count, with: Array(name.utf8))
            offset += ACPITableFiles.nameSize
        }
        for (value, size) in fields {
            for byte in 0..<size { entry[offset + byte] = UInt8(truncatingIfNeeded: value >> (8 * byte)) }
            offset += size
        }
        loader += entry
    }

    /// Adds the address of `etc/acpi/tables` to the `size`-byte offset at `at` in `file`.
    private mutating func addPointer(in file: String, at offset: Int, size: Int) {
        append(.addPointer, file: file, second: ACPITableFiles.tablesFile, fields: [(UInt64(offset), 4), (UInt64(size), 1)])
    }

    private mutating func addChecksum(in file: String, at offset: Int, start: Int, length: Int) {
        append(.addChecksum, file: file, fields: [(UInt64(offset), 4), (UInt64(start), 4), (UInt64(length), 4)])
    }
}

extension FwCfg {
    /// The fw_cfg contents SeaBIOS reads on QEMU's microvm: CPU counts, RAM size, the e820
    /// map, the serial console, no boot menu, boot from the first disk, and the ACPI tables.
    func describePlatform(memory: GuestMemory, vcpus: Int, acpi: ACPITables, firstDisk: UInt64?) throws {
        set(Key.cpuCount, integer: UInt16(vcpus))
        set(Key.maxCPUs, integer: UInt16(vcpus))
        set(Key.ramSize, integer: memory.totalSize)
        set(Key.noGraphic, integer: UInt16(1))
        set(Key.bootMenu, integer: UInt16(0))
        set(Key.numa, integer: UInt64(0))
        set(Key.irq0Override, integer: UInt8(0))  // the in-kernel PIT is wired to IOAPIC pin 0
        var e820: [UInt8] = []
        func add(_ address: UInt64, _ size: UInt64, _ type: BootLayout.E820Type) {
            var entry = [UInt8](repeating: 0, count: 20)
            entry.put(address, at: 0)
            entry.put(size, at: 8)
            entry.put(type.rawValue, at: 16)
            e820 += entry
        }
        for region in memory.regions { add(region.guestAddress, region.size, .ram) }
        add(FirmwareImage.tssAddress, FirmwareImage.tssSize, .reserved)
        try addFile("etc/e820", e820)
        var port = [UInt8](repeating: 0, count: 2)
        port.put(Serial.base, at: 0)
        try addFile("etc/sercon-port", port)
        try addFile("etc/boot-menu-wait", [0, 0])
        if let firstDisk {
            // SeaBIOS matches "/virtio-mmio@%016x/*" against these lines.
            let hex = String(firstDisk, radix: 16)
            try addFile("bootorder", Array("/virtio-mmio@\(String(repeating: "0", count: 16 - hex.count) + hex)/disk@0,0\n".utf8) + [0])
        }
        let files = ACPITableFiles(acpi)
        try addFile(ACPITableFiles.tablesFile, files.tables)
        try addFile(ACPITableFiles.rsdpFile, files.rsdp)
        try addFile(ACPITableFiles.loaderFile, files.loader)
    }
}

/// Recognises SeaBIOS's "No bootable device." on the serial console. SeaBIOS prints it when
/// no disk holds a boot sector, then waits 60 s and resets, for ever; the VMM ends the run
/// instead, so the host can report the reason rather than a VM that seems to run.
/// `@unchecked Sendable`: the match state is in a Mutex; `onFailure` relays to the machine
/// through a variable `Machine.init` sets once, before any vCPU runs.
final class BootFailureWatch: @unchecked Sendable {
    static let message = Array("No bootable device.".utf8)
    /// Bytes of `message` matched so far; nil once it was seen.
    private let matched = Mutex<Int?>(0)
    private let onFailure: () -> Void

    init(onFailure: @escaping () -> Void) { self.onFailure = onFailure }

    /// Takes one byte of console output; calls `onFailure` once, when the message completes.
    func observe(_ byte: UInt8) {
        let complete: Bool = matched.withLock { matched in
            guard let count = matched else { return false }
            // No proper prefix of the message recurs inside it, so a mismatch restarts the
            // match at this byte.
            let message = BootFailureWatch.message
            let next = byte == message[count] ? count + 1 : (byte == message[0] ? 1 : 0)
            matched = next == message.count ? nil : next
            return matched == nil
        }
        if complete { onFailure() }
    }
}

/// QEMU's debug console (port 0x402, "debugcon"): SeaBIOS detects it by reading 0xE9 there
/// and then writes its debug log to it. Only present when I/O tracing is on.
final class DebugConsole: PortIODevice {
    static let port: UInt16 = 0x402
    private let sink: (UInt8) -> Void
    init(sink: @escaping (UInt8) -> Void) { self.sink = sink }
    func read(port: UInt16, size: Int) -> UInt32 { 0xE9 }
    func write(port: UInt16, size: Int, value: UInt32) { sink(UInt8(truncatingIfNeeded: value)) }
}

extension VCPUHandle {
    /// The state of a CPU after reset: real mode, CS base 0xFFFF0000, IP 0xFFF0, so the first
    /// instruction is the firmware's at 0xFFFFFFF0.
    func setupResetVector() throws {
        var sregs = try specialRegisters()
        sregs.cs.selector = 0xF000
        sregs.cs.base = 0xFFFF_0000
        sregs.cs.limit = 0xFFFF
        try setSpecialRegisters(sregs)
        var regs = kvm_regs()
        regs.rflags = 0x2
        regs.rip = 0xFFF0
        try setRegisters(regs)
    }
}

extension Machine {
    /// Maps `image`, describes the platform through fw_cfg and the CMOS, and puts vCPU 0 at
    /// the reset vector; the other vCPUs keep waiting for INIT/SIPI in the in-kernel LAPIC.
    /// Returns the port devices the firmware needs.
    static func startFirmware(
        _ image: FirmwareImage, kvm: KVMSystem, vm: VirtualMachineHandle, memory: GuestMemory, config: VMConfig,
        virtio: [VirtioMMIOTransport], bootVCPU: VCPUHandle
    ) throws -> [(range: ClosedRange<UInt16>, device: PortIODevice)] {
        guard kvm.has(KVM_CAP_READONLY_MEM) else {
            throw VMMError(.kvmCapability, "KVM lacks KVM_CAP_READONLY_MEM, needed to map the firmware '\(image.path)' as ROM; a newer host kernel is needed")
        }
        try vm.setMemoryRegion(
            slot: UInt32(memory.regions.count), guestAddress: image.guestAddress, size: UInt64(image.bytes.count), host: image.host,
            flags: UInt32(KVM_MEM_READONLY))
        let alias = image.legacyAlias
        try memory.write(alias, at: BootLayout.highMemory - UInt64(alias.count))

        let fwCfg = FwCfg(memory: memory)
        let acpi = ACPITables(vcpus: config.vcpus, virtio: virtio.map { ($0.mmioBase, $0.mmioSize, $0.irq) })
        let firstDisk = config.disks.isEmpty ? nil : virtio.first?.mmioBase
        try fwCfg.describePlatform(memory: memory, vcpus: config.vcpus, acpi: acpi, firstDisk: firstDisk)
        let low = memory.regions.first { $0.guestAddress == 0 }?.size ?? 0
        let cmos = CMOS(lowMemory: low, highMemory: memory.totalSize - low, vcpus: config.vcpus)
        try bootVCPU.setupResetVector()
        return [
            (FwCfg.selectorPort...FwCfg.lastPort, fwCfg),
            (CMOS.indexPort...CMOS.dataPort, cmos),
        ]
    }

    /// Writes a trace line (or a debug-console byte) to stderr.
    static func trace(_ text: String) {
        _ = text.withCString { write(2, $0, strlen($0)) }
    }

    static func trace(_ byte: UInt8) {
        var byte = byte
        _ = write(2, &byte, 1)
    }
}
