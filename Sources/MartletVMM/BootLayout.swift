import CKVM

/// Where the boot path puts things in low guest memory (the layout Firecracker and kvmtool
/// use, widened so the identity map covers the whole 4 GiB including the MMIO hole).
public enum BootLayout {
    public static let gdt: UInt64 = 0x500
    public static let idt: UInt64 = 0x520
    public static let zeroPage: UInt64 = 0x7000
    public static let bootStack: UInt64 = 0x8FF0
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xA000
    /// Four page directories of 2 MiB pages: 0xB000...0xEFFF.
    public static let pageDirectories: UInt64 = 0xB000
    /// Stacks of the application processors when every vCPU enters the kernel (test guests).
    public static let apStackTop: UInt64 = 0x80000
    public static let commandLine: UInt64 = 0x20000
    public static let commandLineMax = 4096
    public static let ebdaStart: UInt64 = 0x9FC00
    /// ACPI tables live in the BIOS area where Linux also scans for the RSDP.
    public static let acpiStart: UInt64 = 0xE0000
    public static let highMemory: UInt64 = 0x10_0000
    /// KVM_SET_TSS_ADDR: three pages (plus the identity-map page) at the top of the hole.
    public static let tss: UInt64 = 0xFFFB_D000

    public enum E820Type: UInt32 { case ram = 1, reserved = 2 }
    public struct E820Entry: Equatable {
        public var address: UInt64
        public var size: UInt64
        public var type: E820Type
    }

    /// The e820 map of `memory`: low RAM up to the EBDA, the BIOS area reserved (ACPI
    /// tables), RAM from 1 MiB to the hole, RAM above 4 GiB.
    public static func e820(_ memory: GuestMemory) -> [E820Entry] {
        var map = [E820Entry(address: 0, size: ebdaStart, type: .ram)]
        map.append(E820Entry(address: acpiStart, size: highMemory - acpiStart, type: .reserved))
        for region in memory.regions {
            if region.guestAddress == 0 {
                map.append(E820Entry(address: highMemory, size: region.size - highMemory, type: .ram))
            } else {
                map.append(E820Entry(address: region.guestAddress, size: region.size, type: .ram))
            }
        }
        return map
    }

    /// Writes the identity map of the first 4 GiB with 2 MiB pages.
    public static func writePageTables(_ memory: GuestMemory) throws {
        let present: UInt64 = 0x3  // present | writable
        try memory.write(pdpt | present, at: pml4)
        for directory in 0..<4 as Range<UInt64> {
            let table = pageDirectories + directory * 0x1000
            try memory.write(table | present, at: pdpt + directory * 8)
            for entry in 0..<512 as Range<UInt64> {
                let address = (directory << 30) | (entry << 21)
                try memory.write(address | present | 0x80, at: table + entry * 8)  // 0x80: 2 MiB page
            }
        }
    }

    /// GDT entries: null, null, code 0x10 (64-bit), data 0x18, TSS 0x20 — the selectors the
    /// Linux boot protocol names (__BOOT_CS, __BOOT_DS).
    public static let gdtEntries: [UInt64] = [
        0,
        0,
        descriptor(flags: 0xA09B, base: 0, limit: 0xFFFFF),
        descriptor(flags: 0xC093, base: 0, limit: 0xFFFFF),
        descriptor(flags: 0x808B, base: 0, limit: 0xFFFFF),
    ]

    static func descriptor(flags: UInt64, base: UInt64, limit: UInt64) -> UInt64 {
        ((base & 0xFF00_0000) << 32) | ((flags & 0xF0FF) << 40) | ((limit & 0xF0000) << 32)
            | ((base & 0x00FF_FFFF) << 16) | (limit & 0xFFFF)
    }

    /// The kvm_segment a GDT entry describes, as the CPU would cache it.
    static func segment(index: Int) -> kvm_segment {
        let entry = gdtEntries[index]
        var segment = kvm_segment()
        segment.base = ((entry >> 16) & 0xFF_FFFF) | (((entry >> 56) & 0xFF) << 24)
        let limit = UInt32((entry & 0xFFFF) | ((entry >> 32) & 0xF0000))
        segment.g = UInt8((entry >> 55) & 1)
        segment.limit = segment.g == 1 ? (limit << 12) | 0xFFF : limit
        segment.selector = UInt16(index * 8)
        segment.type = UInt8((entry >> 40) & 0xF)
        segment.present = UInt8((entry >> 47) & 1)
        segment.dpl = UInt8((entry >> 45) & 3)
        segment.db = UInt8((entry >> 54) & 1)
        segment.s = UInt8((entry >> 44) & 1)
        segment.l = UInt8((entry >> 53) & 1)
        segment.avl = UInt8((entry >> 52) & 1)
        segment.unusable = segment.present == 0 ? 1 : 0
        return segment
    }

    public static func writeGDT(_ memory: GuestMemory) throws {
        for (index, entry) in gdtEntries.enumerated() {
            try memory.write(entry, at: gdt + UInt64(index * 8))
        }
        try memory.write(UInt64(0), at: idt)
    }
}

/// The Linux `boot_params` ("zero page") for a kernel, its command line and initrd.
public struct ZeroPage {
    public var bytes = [UInt8](repeating: 0, count: 4096)

    public init(kernel: KernelImage, commandLine: String, initrd: (address: UInt64, size: UInt64)?, e820: [BootLayout.E820Entry], rsdp: UInt64?) {
        for (i, byte) in kernel.setupHeader.enumerated() where 0x1F1 + i < 0x290 {
            bytes[0x1F1 + i] = byte
        }
        bytes.put(UInt16(0xAA55), at: 0x1FE)
        bytes.put(UInt32(0x5372_6448), at: 0x202)
        bytes[0x210] = 0xFF  // type_of_loader: undefined
        bytes[0x211] |= 0x01 | 0x80  // LOADED_HIGH | CAN_USE_HEAP
        bytes.put(UInt16(0xFE00), at: 0x224)  // heap_end_ptr
        bytes.put(UInt32(BootLayout.commandLine), at: 0x228)
        bytes.put(UInt32(commandLine.utf8.count), at: 0x238)
        if let initrd {
            bytes.put(UInt32(truncatingIfNeeded: initrd.address), at: 0x218)
            bytes.put(UInt32(truncatingIfNeeded: initrd.size), at: 0x21C)
            bytes.put(UInt32(truncatingIfNeeded: initrd.address >> 32), at: 0x0C0)
            bytes.put(UInt32(truncatingIfNeeded: initrd.size >> 32), at: 0x0C4)
        }
        if let rsdp { bytes.put(rsdp, at: 0x070) }
        let entries = e820.prefix(128)
        bytes[0x1E8] = UInt8(entries.count)
        for (i, entry) in entries.enumerated() {
            let offset = 0x2D0 + i * 20
            bytes.put(entry.address, at: offset)
            bytes.put(entry.size, at: offset + 8)
            bytes.put(entry.type.rawValue, at: offset + 16)
        }
    }
}
