#if canImport(Glibc)
    import Glibc
#endif

/// Guest physical memory: anonymous mappings laid out around the MMIO hole below 4 GiB.
/// Every access is bounds-checked, because addresses and lengths often come from the guest.
public final class GuestMemory {
    /// One contiguous range of guest RAM.
    public struct Region {
        public let guestAddress: UInt64
        public let size: UInt64
        public let host: UnsafeMutableRawPointer
    }

    /// Start of the 32-bit MMIO hole (virtio-mmio devices, IOAPIC, LAPIC); RAM resumes at 4 GiB.
    public static let mmioHoleStart: UInt64 = 0xD000_0000
    public static let fourGiB: UInt64 = 0x1_0000_0000

    public let regions: [Region]
    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// Maps `size` bytes of RAM: below the hole first, the rest from 4 GiB on.
    public init(size: UInt64) throws {
        guard size >= 2 << 20 else { throw VMMError(.memory, "guest memory must be at least 2 MiB, got \(size) bytes") }
        var ranges: [(UInt64, UInt64)] = [(0, min(size, GuestMemory.mmioHoleStart))]
        if size > GuestMemory.mmioHoleStart {
            ranges.append((GuestMemory.fourGiB, size - GuestMemory.mmioHoleStart))
        }
        var mapped: [Region] = []
        for (start, length) in ranges {
            // The first 2 MiB stays with 4 KiB pages: the loader writes a few pages there (boot
            // structures, the test guests, the BIOS), and a huge page would be zeroed whole on
            // the first write, 0.5-9 ms of the start-up measured on this nested host
            // (scripts/bench-vmm --trace, phase machine.guest); a guest's use of it costs at
            // most 512 more nested page faults beside the tens of thousands of a Linux boot.
            guard let pointer = GuestMemory.mapHugePageAligned(Int(length), smallPages: start == 0 ? GuestMemory.hugePageSize : 0) else {
                let code = errno
                for region in mapped { munmap(region.host, Int(region.size)) }
                throw VMMError(.memory, "cannot map \(length >> 20) MiB of guest memory: \(errnoText(code)); lower 'memory_mib'")
            }
            mapped.append(Region(guestAddress: start, size: length, host: pointer))
        }
        regions = mapped
    }

    /// The size of a transparent huge page on x86-64.
    static let hugePageSize = 2 << 20

    /// Maps `length` bytes of anonymous memory starting on a 2 MiB boundary and asks for
    /// transparent huge pages, as QEMU does for guest RAM. KVM maps guest memory with 2 MiB
    /// pages only where the host backs it with huge pages and host and guest addresses agree
    /// modulo 2 MiB; every region starts 2 MiB-aligned in the guest (0 and 4 GiB). With 4 KiB
    /// pages a booting Linux guest takes tens of thousands more nested page faults, which
    /// under nested virtualization cost a large part of its boot. nil (errno set) on failure.
    /// The first `smallPages` bytes get no MADV_HUGEPAGE.
    static func mapHugePageAligned(_ length: Int, smallPages: Int = 0) -> UnsafeMutableRawPointer? {
        let slack = hugePageSize
        let raw = mmap(nil, length + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let raw, raw != MAP_FAILED else { return nil }
        let address = UInt(bitPattern: raw)
        let head = Int((UInt(slack) - address % UInt(slack)) % UInt(slack))
        if head > 0 { munmap(raw, head) }
        let aligned = raw + head
        munmap(aligned + length, slack - head)
        // Only a hint: without THP in the host kernel the memory works with 4 KiB pages.
        if length > smallPages { _ = madvise(aligned + smallPages, length - smallPages, MADV_HUGEPAGE) }
        return aligned
    }

    deinit {
        for region in regions { munmap(region.host, Int(region.size)) }
    }

    /// Whether [address, address+length) lies inside one RAM region.
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        region(for: address, length: length) != nil
    }

    private func region(for address: UInt64, length: UInt64) -> Region? {
        let (end, overflow) = address.addingReportingOverflow(length)
        if overflow { return nil }
        for region in regions where address >= region.guestAddress && end <= region.guestAddress + region.size {
            return region
        }
        return nil
    }

    /// The host bytes backing [address, address+length), or an error naming the range.
    public func buffer(at address: UInt64, length: UInt64) throws -> UnsafeMutableRawBufferPointer {
        guard let region = region(for: address, length: length), length <= UInt64(Int.max) else {
            throw VMMError(.memory, "guest range 0x\(String(address, radix: 16))+0x\(String(length, radix: 16)) is outside guest RAM")
        }
        return UnsafeMutableRawBufferPointer(start: region.host.advanced(by: Int(address - region.guestAddress)), count: Int(length))
    }

    /// Reads a little-endian integer at `address`.
    public func read<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: UInt64) throws -> T {
        let bytes = try buffer(at: address, length: UInt64(MemoryLayout<T>.size))
        return T(littleEndian: bytes.loadUnaligned(as: T.self))
    }

    /// Writes a little-endian integer at `address`.
    public func write<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws {
        let bytes = try buffer(at: address, length: UInt64(MemoryLayout<T>.size))
        bytes.storeBytes(of: value.littleEndian, as: T.self)
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: some Collection<UInt8>, at address: UInt64) throws {
        let target = try buffer(at: address, length: UInt64(bytes.count))
        _ = target.initializeMemory(as: UInt8.self, from: bytes)
    }

    /// Copies `length` bytes out of guest memory.
    public func bytes(at address: UInt64, length: Int) throws -> [UInt8] {
        Array(try buffer(at: address, length: UInt64(length)))
    }
}
