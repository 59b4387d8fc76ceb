import MartletSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The MC146818 CMOS/RTC at 0x70 (index, bit 7 masks NMI) / 0x71 (data), as far as firmware
/// reads it: the current UTC time in BCD (24-hour mode), status registers A–D, and the
/// memory-size, CPU-count and equipment bytes QEMU stores for SeaBIOS. Other bytes are
/// plain battery-backed RAM.
final class CMOS: PortIODevice {
    static let indexPort: UInt16 = 0x70
    static let dataPort: UInt16 = 0x71

    /// Register numbers (SeaBIOS src/hw/rtc.h, QEMU hw/i386/pc.c).
    enum Register {
        static let seconds: UInt8 = 0x00
        static let minutes: UInt8 = 0x02
        static let hours: UInt8 = 0x04
        static let weekday: UInt8 = 0x06
        static let day: UInt8 = 0x07
        static let month: UInt8 = 0x08
        static let year: UInt8 = 0x09
        static let statusA: UInt8 = 0x0A
        static let statusB: UInt8 = 0x0B
        static let statusC: UInt8 = 0x0C
        static let statusD: UInt8 = 0x0D
        static let equipment: UInt8 = 0x14
        static let baseMemoryLow: UInt8 = 0x15
        static let extendedMemoryLow: UInt8 = 0x17
        static let extendedMemoryCopyLow: UInt8 = 0x30
        static let century: UInt8 = 0x32
        /// RAM between 16 MiB and the 32-bit hole, in 64 KiB units.
        static let memoryAbove16MiBLow: UInt8 = 0x34
        /// RAM above 4 GiB, in 64 KiB units, three bytes.
        static let memoryAbove4GiBLow: UInt8 = 0x5B
        /// vCPUs minus one.
        static let cpuCountMinusOne: UInt8 = 0x5F
    }

    private let lock = ConditionLock()
    private var bytes = [UInt8](repeating: 0, count: 128)
    private var index: UInt8 = 0
    /// Seconds since the epoch; replaceable so tests see a fixed time.
    private let now: () -> Int

    /// A CMOS describing `lowMemory` bytes of RAM below 4 GiB, `highMemory` above it, and
    /// `vcpus` processors.
    init(lowMemory: UInt64, highMemory: UInt64, vcpus: Int, now: @escaping () -> Int = { Int(time(nil)) }) {
        self.now = now
        // glibc's first gmtime_r reads /etc/localtime; done here, at start-up, it never
        // happens on a vCPU thread, whose seccomp filter has no openat.
        tzset()
        bytes[Int(Register.statusA)] = 0x26  // 32.768 kHz time base, 1024 Hz periodic rate
        bytes[Int(Register.statusB)] = 0x02  // 24-hour mode, BCD
        bytes[Int(Register.statusD)] = 0x80  // valid RAM and time
        bytes[Int(Register.equipment)] = 0x06  // math coprocessor, PS/2 mouse port, no floppy
        put16(640, at: Register.baseMemoryLow)  // KiB of conventional memory
        let extendedKiB = UInt16(min(65535, lowMemory > 1 << 20 ? (lowMemory - (1 << 20)) >> 10 : 0))
        put16(extendedKiB, at: Register.extendedMemoryLow)
        put16(extendedKiB, at: Register.extendedMemoryCopyLow)
        let above16MiB = UInt16(min(0xFFFF, lowMemory > 16 << 20 ? (lowMemory - (16 << 20)) >> 16 : 0))
        put16(above16MiB, at: Register.memoryAbove16MiBLow)
        let above4GiB = highMemory >> 16
        for byte in 0..<3 { bytes[Int(Register.memoryAbove4GiBLow) + byte] = UInt8(truncatingIfNeeded: above4GiB >> (8 * byte)) }
        bytes[Int(Register.cpuCountMinusOne)] = UInt8(max(0, min(255, vcpus - 1)))
    }

    private func put16(_ value: UInt16, at register: UInt8) {
        bytes[Int(register)] = UInt8(value & 0xFF)
        bytes[Int(register) + 1] = UInt8(value >> 8)
    }

    /// The value of `register` as the guest reads it.
    func value(_ register: UInt8) -> UInt8 {
        lock.withLock { readLocked(register & 0x7F) }
    }

    private func readLocked(_ register: UInt8) -> UInt8 {
        switch register {
        case Register.seconds...Register.year, Register.century:
            return timeField(register)
        case Register.statusC:
            // Reading C acknowledges interrupts; none are raised, so it is always clear.
            return 0
        default:
            return bytes[Int(register)]
        }
    }

    private func timeField(_ register: UInt8) -> UInt8 {
        var seconds = time_t(now())
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let value: Int32
        switch register {
        case Register.seconds: value = parts.tm_sec
        case Register.minutes: value = parts.tm_min
        case Register.hours: value = parts.tm_hour
        case Register.weekday: value = parts.tm_wday + 1
        case Register.day: value = parts.tm_mday
        case Register.month: value = parts.tm_mon + 1
        case Register.year: value = parts.tm_year % 100
        case Register.century: value = (parts.tm_year + 1900) / 100
        default: return bytes[Int(register)]  // the alarm registers between the time fields
        }
        return bytes[Int(Register.statusB)] & 0x04 != 0 ? UInt8(value) : CMOS.bcd(value)
    }

    static func bcd(_ value: Int32) -> UInt8 { UInt8((value / 10) << 4 | value % 10) }

    /// The index port is write-only on the PC and reads as all ones, as on QEMU. That matters
    /// for speed: SeaBIOS reads it at every switch between real and protected mode (several per
    /// int 13h disk read) and, when bit 7 (NMI masked) reads clear, writes it and reads the
    /// data port twice more to mask NMIs and restore them, four more exits each time.
    func read(port: UInt16, size: Int) -> UInt32 {
        lock.withLock { port == CMOS.dataPort ? UInt32(readLocked(index)) : 0xFF }
    }

    func write(port: UInt16, size: Int, value: UInt32) {
        lock.withLock {
            let byte = UInt8(truncatingIfNeeded: value)
            if port == CMOS.indexPort {
                index = byte & 0x7F
                return
            }
            switch index {
            case Register.statusC, Register.statusD:
                break  // read-only
            case Register.statusA:
                bytes[Int(index)] = byte & 0x7F  // update-in-progress is never set
            default:
                bytes[Int(index)] = byte
            }
        }
    }
}
