/// ACPI tables describing the machine to the guest (RSDP, XSDT, FADT, MADT, DSDT): the vCPUs,
/// the IOAPIC, COM1, the virtio-mmio devices as LNRO0005 and the fixed-feature power button,
/// much like QEMU microvm and Firecracker describe theirs.
public struct ACPITables {
    public static let ioapicAddress: UInt32 = 0xFEC0_0000
    public static let lapicAddress: UInt32 = 0xFEE0_0000

    public let vcpus: Int
    public let virtio: [(base: UInt64, size: UInt64, irq: UInt32)]

    public init(vcpus: Int, virtio: [(base: UInt64, size: UInt64, irq: UInt32)]) {
        self.vcpus = vcpus
        self.virtio = virtio
    }

    /// The standard 36-byte header followed by `body`, with length and checksum filled in.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var bytes = Array(signature.utf8)
        bytes += [UInt8](repeating: 0, count: 4)
        bytes.append(revision)
        bytes.append(0)
        bytes += Array("MRTLET".utf8)
        bytes += Array("MARTLETV".utf8)
        bytes += [1, 0, 0, 0]
        bytes += Array("MRTL".utf8)
        bytes += [1, 0, 0, 0]
        bytes += body
        bytes.put(UInt32(bytes.count), at: 4)
        bytes[9] = checksum(bytes)
        return bytes
    }

    /// The byte that makes `bytes` sum to zero.
    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }

    /// A Generic Address Structure for a system I/O port block.
    static func ioAddress(_ port: UInt16, bits: UInt8) -> [UInt8] {
        var bytes: [UInt8] = [1, bits, 0, bits == 8 ? 1 : bits == 16 ? 2 : 3]
        bytes += [UInt8](repeating: 0, count: 8)
        bytes.put(UInt64(port), at: 4)
        return bytes
    }

    public func fadt(dsdtAddress: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: 276 - 36)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) { body.put(value, at: offset - 36) }
        put(UInt32(truncatingIfNeeded: dsdtAddress), 40)
        put(UInt16(PowerManagement.sciIRQ), 46)
        put(UInt32(PowerManagement.eventBlock), 56)
        put(UInt32(PowerManagement.controlBlock), 64)
        body[88 - 36] = 4  // PM1_EVT_LEN
        body[89 - 36] = 2  // PM1_CNT_LEN
        put(UInt16(0x2C), 109)  // IAPC_BOOT_ARCH: no VGA, no MSI, no CMOS RTC; no 8042 to probe
        put(UInt32(0x1 | 0x20 | 0x400), 112)  // WBINVD, no sleep button, RESET_REG_SUP
        body.replaceSubrange(116 - 36..<128 - 36, with: ACPITables.ioAddress(0x64, bits: 8))
        body[128 - 36] = 0xFE  // RESET_VALUE: the i8042 reset command
        body[131 - 36] = 0  // minor version
        put(dsdtAddress, 140)
        body.replaceSubrange(148 - 36..<160 - 36, with: ACPITables.ioAddress(PowerManagement.eventBlock, bits: 32))
        body.replaceSubrange(172 - 36..<184 - 36, with: ACPITables.ioAddress(PowerManagement.controlBlock, bits: 16))
        body.replaceSubrange(268 - 36..<276 - 36, with: Array("MARTLET\0".utf8))
        return ACPITables.table("FACP", revision: 6, body: body)
    }

    public var madt: [UInt8] {
        var body: [UInt8] = []
        body.append(contentsOf: [0, 0, 0, 0])
        body.put(ACPITables.lapicAddress, at: 0)
        body += [1, 0, 0, 0]  // PCAT_COMPAT: the 8259 PICs exist
        for index in 0..<vcpus {
            body += [0, 8, UInt8(index), UInt8(index), 1, 0, 0, 0]  // local APIC, enabled
        }
        var ioapic: [UInt8] = [1, 12, UInt8(vcpus), 0, 0, 0, 0, 0, 0, 0, 0, 0]
        ioapic.put(ACPITables.ioapicAddress, at: 4)
        body += ioapic
        // No IRQ0 -> GSI2 override: KVM's default routing wires the in-kernel PIT to IOAPIC
        // pin 0 (QEMU re-routes it to pin 2 with KVM_SET_GSI_ROUTING; we keep the default).
        body += [2, 10, 0, UInt8(PowerManagement.sciIRQ), UInt8(PowerManagement.sciIRQ), 0, 0, 0, 0x0D, 0]  // SCI: level, active high
        body += [4, 6, 0xFF, 0, 0, 1]  // local APIC NMI on LINT1 of every processor
        return ACPITables.table("APIC", revision: 5, body: body)
    }

    public var dsdt: [UInt8] {
        var devices: [UInt8] = []
        devices += AML.device("COM1", [
            AML.name("_HID", AML.eisaID("PNP0501")),
            AML.name("_UID", AML.integer(0)),
            AML.name("_CRS", AML.resourceTemplate([
                AML.io(base: Serial.base, length: 8),
                AML.irqNoFlags(Serial.irq),
            ])),
        ])
        devices += AML.device("PWRB", [
            AML.name("_HID", AML.eisaID("PNP0C0C")),
            AML.name("_UID", AML.integer(0)),
        ])
        for (index, device) in virtio.enumerated() {
            devices += AML.device(String(format4: "VR", index), [
                AML.name("_HID", AML.string("LNRO0005")),
                AML.name("_UID", AML.integer(UInt64(index))),
                AML.name("_CRS", AML.resourceTemplate([
                    AML.memory32Fixed(base: UInt32(device.base), length: UInt32(device.size)),
                    AML.interrupt(device.irq),
                ])),
            ])
        }
        var body = AML.scope("\\_SB_", devices)
        body += AML.name("_S5_", AML.package([AML.integer(UInt64(PowerManagement.sleepTypeS5)), AML.integer(0), AML.integer(0), AML.integer(0)]))
        return ACPITables.table("DSDT", revision: 2, body: body)
    }

    /// Writes all tables at `address` and returns the RSDP's address.
    public func write(to memory: GuestMemory, at address: UInt64) throws -> UInt64 {
        func align(_ value: UInt64) -> UInt64 { (value + 15) & ~15 }
        let rsdpAddress = address
        let dsdtAddress = align(rsdpAddress + 36)
        let dsdt = self.dsdt
        let fadtAddress = align(dsdtAddress + UInt64(dsdt.count))
        let fadt = self.fadt(dsdtAddress: dsdtAddress)
        let madtAddress = align(fadtAddress + UInt64(fadt.count))
        let madt = self.madt
        let xsdtAddress = align(madtAddress + UInt64(madt.count))
        var entries: [UInt8] = [UInt8](repeating: 0, count: 16)
        entries.put(fadtAddress, at: 0)
        entries.put(madtAddress, at: 8)
        let xsdt = ACPITables.table("XSDT", revision: 1, body: entries)
        guard xsdtAddress + UInt64(xsdt.count) <= BootLayout.highMemory else {
            throw VMMError(.boot, "ACPI tables for \(vcpus) vCPUs and \(virtio.count) devices do not fit below 1 MiB")
        }
        try memory.write(ACPITables.rsdp(xsdtAddress: xsdtAddress), at: rsdpAddress)
        try memory.write(dsdt, at: dsdtAddress)
        try memory.write(fadt, at: fadtAddress)
        try memory.write(madt, at: madtAddress)
        try memory.write(xsdt, at: xsdtAddress)
        return rsdpAddress
    }

    static func rsdp(xsdtAddress: UInt64) -> [UInt8] {
        var bytes = Array("RSD PTR ".utf8) + [0] + Array("MRTLET".utf8) + [2]
        bytes += [0, 0, 0, 0]  // RSDT: none, the XSDT is used
        bytes += [36, 0, 0, 0]
        bytes += [UInt8](repeating: 0, count: 8)
        bytes.put(xsdtAddress, at: 24)
        bytes += [0, 0, 0, 0]
        bytes[8] = checksum(bytes[0..<20])
        bytes[32] = checksum(bytes)
        return bytes
    }
}

extension String {
    /// "VR" + 2 hex digits: a 4-character AML name segment.
    init(format4 prefix: String, _ index: Int) {
        let hex = Array("0123456789ABCDEF")
        self = prefix + String(hex[(index >> 4) & 0xF]) + String(hex[index & 0xF])
    }
}

/// The few AML encodings the DSDT needs.
enum AML {
    static func packageLength(_ contentLength: Int) -> [UInt8] {
        if contentLength + 1 < 0x40 { return [UInt8(contentLength + 1)] }
        for extra in 1...3 {
            let total = contentLength + 1 + extra
            if total < 1 << (4 + 8 * extra) {
                var bytes = [UInt8(extra << 6) | UInt8(total & 0xF)]
                for i in 0..<extra { bytes.append(UInt8((total >> (4 + 8 * i)) & 0xFF)) }
                return bytes
            }
        }
        fatalError("AML package too large")
    }

    static func nameString(_ name: String) -> [UInt8] { Array(name.utf8) }

    static func scope(_ name: String, _ body: [UInt8]) -> [UInt8] {
        let content = nameString(name) + body
        return [0x10] + packageLength(content.count) + content
    }

    static func device(_ name: String, _ terms: [[UInt8]]) -> [UInt8] {
        let content: [UInt8] = nameString(name) + terms.flatMap { $0 }
        return [0x5B, 0x82] + packageLength(content.count) + content
    }

    static func name(_ name: String, _ value: [UInt8]) -> [UInt8] {
        [0x08] + nameString(name) + value
    }

    static func integer(_ value: UInt64) -> [UInt8] {
        switch value {
        case 0: return [0x00]
        case 1: return [0x01]
        case ...0xFF: return [0x0A, UInt8(value)]
        case ...0xFFFF: return [0x0B, UInt8(value & 0xFF), UInt8(value >> 8)]
        case ...0xFFFF_FFFF:
            var bytes: [UInt8] = [0x0C, 0, 0, 0, 0]
            bytes.put(UInt32(value), at: 1)
            return bytes
        default:
            var bytes: [UInt8] = [0x0E] + [UInt8](repeating: 0, count: 8)
            bytes.put(value, at: 1)
            return bytes
        }
    }

    static func string(_ text: String) -> [UInt8] { [0x0D] + Array(text.utf8) + [0] }

    /// A compressed EISA ID such as PNP0501, as a DWordConst.
    static func eisaID(_ id: String) -> [UInt8] {
        let c = Array(id.utf8)
        func hex(_ byte: UInt8) -> UInt32 { UInt32(byte >= 0x41 ? byte - 0x41 + 10 : byte - 0x30) }
        let value = (UInt32(c[0] - 0x40) << 26) | (UInt32(c[1] - 0x40) << 21) | (UInt32(c[2] - 0x40) << 16)
            | (hex(c[3]) << 12) | (hex(c[4]) << 8) | (hex(c[5]) << 4) | hex(c[6])
        let bytes: [UInt8] = [0x0C, UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
        return bytes
    }

    static func package(_ elements: [[UInt8]]) -> [UInt8] {
        let content: [UInt8] = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [0x12] + packageLength(content.count) + content
    }

    static func resourceTemplate(_ descriptors: [[UInt8]]) -> [UInt8] {
        let resources: [UInt8] = descriptors.flatMap { $0 } + [0x79, 0x00]
        let content = integer(UInt64(resources.count)) + resources
        return [0x11] + packageLength(content.count) + content
    }

    static func io(base: UInt16, length: UInt8) -> [UInt8] {
        [0x47, 0x01, UInt8(base & 0xFF), UInt8(base >> 8), UInt8(base & 0xFF), UInt8(base >> 8), 0x01, length]
    }

    static func irqNoFlags(_ irq: UInt32) -> [UInt8] {
        let mask = UInt16(1) << UInt16(irq)
        return [0x22, UInt8(mask & 0xFF), UInt8(mask >> 8)]
    }

    static func memory32Fixed(base: UInt32, length: UInt32) -> [UInt8] {
        var bytes: [UInt8] = [0x86, 0x09, 0x00, 0x01] + [UInt8](repeating: 0, count: 8)
        bytes.put(base, at: 4)
        bytes.put(length, at: 8)
        return bytes
    }

    /// An Extended Interrupt descriptor: consumer, edge-triggered, active high, exclusive.
    static func interrupt(_ irq: UInt32) -> [UInt8] {
        var bytes: [UInt8] = [0x89, 0x06, 0x00, 0x03, 0x01, 0, 0, 0, 0]
        bytes.put(irq, at: 5)
        return bytes
    }
}
