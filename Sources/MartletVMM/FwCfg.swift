import MartletSystem

/// QEMU's firmware configuration device (fw_cfg) on the x86 I/O ports, the way SeaBIOS reads
/// its platform: a 16-bit selector at 0x510, a byte-wide data port at 0x511 and the DMA
/// interface at 0x514 (high half of the big-endian descriptor address) / 0x518 (low half,
/// which starts the transfer). Items are numbered keys; files get keys from 0x20 on and are
/// listed, sorted by name, in the big-endian directory at key 0x19. Public so the fuzzer
/// (Sources/martlet-fuzz) can drive it the way a guest does.
public final class FwCfg: PortIODevice {
    public static let selectorPort: UInt16 = 0x510
    public static let dataPort: UInt16 = 0x511
    public static let dmaPort: UInt16 = 0x514
    public static let lastPort: UInt16 = 0x51B

    /// The well-known keys (QEMU's include/standard-headers/linux/qemu_fw_cfg.h).
    enum Key {
        static let signature: UInt16 = 0x00
        static let id: UInt16 = 0x01
        static let ramSize: UInt16 = 0x03
        static let noGraphic: UInt16 = 0x04
        static let cpuCount: UInt16 = 0x05
        static let numa: UInt16 = 0x0D
        static let bootMenu: UInt16 = 0x0E
        static let maxCPUs: UInt16 = 0x0F
        static let fileDirectory: UInt16 = 0x19
        static let firstFile: UInt16 = 0x20
        static let irq0Override: UInt16 = 0x8002
    }

    /// ID bits: the port interface and the DMA interface.
    static let featureTraditional: UInt32 = 1
    static let featureDMA: UInt32 = 2

    /// DMA control bits (big-endian in the guest's descriptor).
    enum DMAControl {
        static let error: UInt32 = 0x01
        static let read: UInt32 = 0x02
        static let skip: UInt32 = 0x04
        static let select: UInt32 = 0x08
        static let write: UInt32 = 0x10
    }

    /// Length of a directory entry's name field, including its terminating zero.
    static let fileNameSize = 56

    private let lock = ConditionLock()
    private var items: [UInt16: [UInt8]] = [:]
    private(set) var fileNames: [String] = []
    private let memory: GuestMemory?
    private var selected: UInt16 = 0
    private var offset = 0
    private var dmaAddressHigh: UInt32 = 0

    /// `memory` is where DMA descriptors and buffers live; without it only the port
    /// interface is advertised.
    public init(memory: GuestMemory?) {
        self.memory = memory
        items[Key.signature] = Array("QEMU".utf8)
        var id = [UInt8](repeating: 0, count: 4)
        id.put(FwCfg.featureTraditional | (memory == nil ? 0 : FwCfg.featureDMA), at: 0)
        items[Key.id] = id
    }

    /// Sets a numbered item.
    public func set(_ key: UInt16, _ bytes: [UInt8]) {
        lock.withLock { items[key] = bytes }
    }

    /// Sets a numbered item to a little-endian integer.
    func set<T: FixedWidthInteger>(_ key: UInt16, integer value: T) {
        var bytes = [UInt8](repeating: 0, count: MemoryLayout<T>.size)
        bytes.put(value, at: 0)
        set(key, bytes)
    }

    /// Adds (or replaces) a named file and rebuilds the directory: files keep the keys of
    /// their sorted position, as QEMU assigns them.
    public func addFile(_ name: String, _ bytes: [UInt8]) throws {
        guard !name.isEmpty, name.utf8.count < FwCfg.fileNameSize else {
            throw VMMError(.device, "fw_cfg: file name '\(name)' must be 1 to \(FwCfg.fileNameSize - 1) bytes")
        }
        lock.withLock {
            var files: [String: [UInt8]] = [:]
            for (index, existing) in fileNames.enumerated() {
                files[existing] = items[Key.firstFile + UInt16(index)]
            }
            files[name] = bytes
            fileNames = files.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            var directory = [UInt8](repeating: 0, count: 4)
            directory.putBigEndian(UInt32(fileNames.count), at: 0)
            for (index, fileName) in fileNames.enumerated() {
                let key = Key.firstFile + UInt16(index)
                let contents = files[fileName]!
                items[key] = contents
                var entry = [UInt8](repeating: 0, count: 8 + FwCfg.fileNameSize)
                entry.putBigEndian(UInt32(contents.count), at: 0)
                entry.putBigEndian(key, at: 4)
                entry.replaceSubrange(8..<8 + fileName.utf8.count, with: Array(fileName.utf8))
                directory += entry
            }
            items[Key.fileDirectory] = directory
        }
    }

    /// The bytes of an item (unknown keys read as empty).
    func item(_ key: UInt16) -> [UInt8] {
        lock.withLock { items[key] ?? [] }
    }

    public func read(port: UInt16, size: Int) -> UInt32 {
        lock.withLock {
            switch port {
            case FwCfg.dataPort:
                // The data port is byte-wide; a wider read returns successive bytes.
                var value: UInt32 = 0
                for shift in 0..<size { value |= UInt32(nextByte()) << (8 * shift) }
                return value
            case FwCfg.dmaPort...FwCfg.dmaPort + 7 where memory != nil:
                // "QEMU CFG" read as a big-endian 64-bit value: the DMA interface signature.
                let signature = Array("QEMU CFG".utf8)
                let start = Int(port - FwCfg.dmaPort)
                var value: UInt32 = 0
                for index in 0..<size where start + index < 8 { value |= UInt32(signature[start + index]) << (8 * index) }
                return value
            default:
                return 0
            }
        }
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        lock.withLock {
            switch port {
            case FwCfg.selectorPort:
                select(UInt16(truncatingIfNeeded: value))
            case FwCfg.dmaPort where size == 4:
                dmaAddressHigh = UInt32(bigEndian: value)
            case FwCfg.dmaPort + 4 where size == 4:
                let address = UInt64(dmaAddressHigh) << 32 | UInt64(UInt32(bigEndian: value))
                dmaAddressHigh = 0
                runDMA(at: address)
            default:
                break  // writes through the data port are not supported (QEMU ignores them too)
            }
        }
    }

    private func select(_ key: UInt16) {
        // Bit 14 asks for write access, which no item here allows; the rest is the key.
        selected = key & 0xBFFF
        offset = 0
    }

    private func nextByte() -> UInt8 {
        guard let bytes = items[selected], offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    /// Performs the transfer the descriptor at `address` asks for and writes its control
    /// word back: zero when done, the error bit when the descriptor or buffer is bad.
    private func runDMA(at address: UInt64) {
        guard let memory else { return }
        guard let descriptor = try? memory.bytes(at: address, length: 16) else { return }
        let control = descriptor.bigEndian(UInt32.self, at: 0)
        let length = Int(descriptor.bigEndian(UInt32.self, at: 4))
        let target = descriptor.bigEndian(UInt64.self, at: 8)
        var status: UInt32 = 0
        if control & DMAControl.select != 0 { select(UInt16(control >> 16)) }
        if control & DMAControl.write != 0 {
            status = DMAControl.error
        } else if control & DMAControl.read != 0 {
            // The guest's buffer is checked before anything is copied: the length is the
            // guest's (up to 4 GiB), so nothing here is sized by it.
            if let buffer = try? memory.buffer(at: target, length: UInt64(length)) {
                let bytes = items[selected] ?? []
                let available = max(0, min(length, bytes.count - min(offset, bytes.count)))
                if available > 0 {
                    bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + available])) }
                }
                // Past the end of the item the guest reads zeros, as on QEMU.
                if length > available {
                    UnsafeMutableRawBufferPointer(rebasing: buffer[available...]).initializeMemory(as: UInt8.self, repeating: 0)
                }
                offset += length
            } else {
                status = DMAControl.error
            }
        } else if control & DMAControl.skip != 0 {
            offset += length
        }
        try? memory.write(status.bigEndian, at: address)
    }
}

extension Array where Element == UInt8 {
    func bigEndian<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size where offset + i < count {
            value = value << 8 | T(self[offset + i])
        }
        return value
    }

    mutating func putBigEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        let size = MemoryLayout<T>.size
        for i in 0..<size {
            self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * (size - 1 - i)))
        }
    }
}
