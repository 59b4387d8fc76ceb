/// A guest kernel ready to be copied into guest memory: a Linux bzImage, an ELF vmlinux
/// (also how the test guests are built), or a flat binary (the built-in selftest guest).
public struct KernelImage {
    public enum Format: Equatable, Sendable {
        case bzImage(protocolVersion: UInt16)
        case elf
        case flat
    }

    /// Physical address of the 64-bit kernel (bzImage and flat images).
    public static let loadAddress: UInt64 = 0x10_0000

    public let format: Format
    public let segments: [(address: UInt64, bytes: ArraySlice<UInt8>)]
    /// The 64-bit entry point (bzImage: load address + 0x200).
    public let entry: UInt64
    /// The bzImage setup header (zero page offsets 0x1f1 up to its end), copied into the zero page.
    public let setupHeader: [UInt8]
    /// Highest address the initrd may end at.
    public let initrdAddressMax: UInt64
    /// Memory the kernel needs from its load address while decompressing.
    public let initSize: UInt64

    /// Parses `bytes`, recognising bzImage by its "HdrS" magic and ELF by its magic.
    public init(bytes: [UInt8], path: String) throws {
        if bytes.count > 0x264, bytes.le(UInt32.self, at: 0x202) == 0x5372_6448 {
            try self.init(bzImage: bytes, path: path)
        } else if bytes.count > 64, bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 {
            try self.init(elf: bytes, path: path)
        } else {
            throw VMMError(.boot, "kernel '\(path)' is neither a bzImage (no 'HdrS' at 0x202) nor an ELF vmlinux")
        }
    }

    /// A flat 64-bit binary loaded and entered at `KernelImage.loadAddress`.
    public init(flat bytes: [UInt8]) {
        format = .flat
        segments = [(KernelImage.loadAddress, bytes[...])]
        entry = KernelImage.loadAddress
        setupHeader = []
        initrdAddressMax = 0xFFFF_FFFF
        initSize = UInt64(bytes.count)
    }

    private init(bzImage bytes: [UInt8], path: String) throws {
        let version = bytes.le(UInt16.self, at: 0x206)
        guard version >= 0x020C else {
            throw VMMError(.boot, "kernel '\(path)' uses boot protocol \(version >> 8).\(version & 0xFF); 2.12 or newer is needed for the 64-bit entry")
        }
        let xloadflags = bytes.le(UInt16.self, at: 0x236)
        guard xloadflags & 1 != 0 else {
            throw VMMError(.boot, "kernel '\(path)' has no 64-bit entry point (XLF_KERNEL_64 not set); build it for x86-64")
        }
        var setupSectors = Int(bytes[0x1F1])
        if setupSectors == 0 { setupSectors = 4 }
        let kernelOffset = (setupSectors + 1) * 512
        guard kernelOffset < bytes.count else {
            throw VMMError(.boot, "kernel '\(path)' is truncated: setup of \(setupSectors) sectors exceeds its \(bytes.count) bytes")
        }
        let headerEnd = min(0x202 + Int(bytes[0x201]), bytes.count, 0x1F1 + 0x80)
        format = .bzImage(protocolVersion: version)
        segments = [(KernelImage.loadAddress, bytes[kernelOffset...])]
        entry = KernelImage.loadAddress + 0x200
        setupHeader = Array(bytes[0x1F1..<max(headerEnd, 0x26C)])
        initrdAddressMax = UInt64(bytes.le(UInt32.self, at: 0x22C))
        initSize = UInt64(bytes.le(UInt32.self, at: 0x260))
    }

    private init(elf bytes: [UInt8], path: String) throws {
        guard bytes[4] == 2, bytes[5] == 1, bytes.le(UInt16.self, at: 18) == 62 else {
            throw VMMError(.boot, "kernel '\(path)' is not a little-endian x86-64 ELF file")
        }
        let phoff = Int(bytes.le(UInt64.self, at: 32))
        let phentsize = Int(bytes.le(UInt16.self, at: 54))
        let phnum = Int(bytes.le(UInt16.self, at: 56))
        guard phentsize >= 56, phoff > 0, phoff + phnum * phentsize <= bytes.count else {
            throw VMMError(.boot, "kernel '\(path)': program headers lie outside the file")
        }
        var segments: [(UInt64, ArraySlice<UInt8>)] = []
        var top: UInt64 = 0
        for i in 0..<phnum {
            let header = phoff + i * phentsize
            guard bytes.le(UInt32.self, at: header) == 1 else { continue }  // PT_LOAD
            let offset = Int(bytes.le(UInt64.self, at: header + 8))
            let physical = bytes.le(UInt64.self, at: header + 24)
            let fileSize = Int(bytes.le(UInt64.self, at: header + 32))
            let memorySize = bytes.le(UInt64.self, at: header + 40)
            guard offset >= 0, fileSize >= 0, offset + fileSize <= bytes.count else {
                throw VMMError(.boot, "kernel '\(path)': segment \(i) lies outside the file")
            }
            segments.append((physical, bytes[offset..<offset + fileSize]))
            top = max(top, physical + memorySize)
        }
        guard !segments.isEmpty else { throw VMMError(.boot, "kernel '\(path)' has no loadable segment") }
        format = .elf
        self.segments = segments
        entry = bytes.le(UInt64.self, at: 24)
        setupHeader = []
        initrdAddressMax = 0xFFFF_FFFF
        initSize = top > KernelImage.loadAddress ? top - KernelImage.loadAddress : 0
    }
}
