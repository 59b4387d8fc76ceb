import MartletSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A device on the port I/O bus.
protocol PortIODevice: AnyObject {
    func read(port: UInt16, size: Int) -> UInt32
    func write(port: UInt16, size: Int, value: UInt32)
}

/// A device on the MMIO bus; offsets are relative to its base.
protocol MMIODevice: AnyObject {
    var mmioBase: UInt64 { get }
    var mmioSize: UInt64 { get }
    func read(offset: UInt64, size: Int) -> UInt64
    func write(offset: UInt64, size: Int, value: UInt64)
}

/// A 16550A-compatible UART (COM1 at 0x3f8, IRQ 4): transmit to a sink, receive from a
/// byte queue, THR-empty and data-ready interrupts.
final class Serial: PortIODevice {
    static let base: UInt16 = 0x3F8
    static let irq: UInt32 = 4

    private let lock = ConditionLock()
    private let sink: (UInt8) -> Void
    private let raiseIRQ: () -> Void
    private var ier: UInt8 = 0
    private var lcr: UInt8 = 0
    private var mcr: UInt8 = 0
    private var scratch: UInt8 = 0
    private var divisor: UInt16 = 12
    private var thrEmptyPending = false
    private var input: [UInt8] = []

    init(sink: @escaping (UInt8) -> Void, raiseIRQ: @escaping () -> Void) {
        self.sink = sink
        self.raiseIRQ = raiseIRQ
    }

    /// Queues bytes typed on the console.
    func receive(_ bytes: [UInt8]) {
        let raise = lock.withLock { () -> Bool in
            input.append(contentsOf: bytes)
            return ier & 0x01 != 0
        }
        if raise { raiseIRQ() }
    }

    func read(port: UInt16, size: Int) -> UInt32 {
        var raise = false
        let value: UInt8 = lock.withLock {
            let dlab = lcr & 0x80 != 0
            switch port - Serial.base {
            case 0 where dlab: return UInt8(divisor & 0xFF)
            case 0:
                let byte = input.isEmpty ? 0 : input.removeFirst()
                raise = !input.isEmpty && ier & 0x01 != 0
                return byte
            case 1 where dlab: return UInt8(divisor >> 8)
            case 1: return ier
            case 2:
                if ier & 0x01 != 0 && !input.isEmpty { return 0xC4 }
                if thrEmptyPending {
                    thrEmptyPending = false
                    return 0xC2
                }
                return 0xC1
            case 3: return lcr
            case 4: return mcr
            case 5: return 0x60 | (input.isEmpty ? 0 : 0x01)  // THRE | TEMT | DR
            case 6: return mcr & 0x10 != 0 ? ((mcr & 0x0C) << 4) | ((mcr & 0x03) << 4) : 0xB0
            default: return scratch
            }
        }
        if raise { raiseIRQ() }
        return UInt32(value)
    }

    func write(port: UInt16, size: Int, value: UInt32) {
        let byte = UInt8(truncatingIfNeeded: value)
        var transmit: UInt8?
        let raise: Bool = lock.withLock {
            let dlab = lcr & 0x80 != 0
            switch port - Serial.base {
            case 0 where dlab: divisor = (divisor & 0xFF00) | UInt16(byte)
            case 0:
                if mcr & 0x10 != 0 {
                    input.append(byte)
                } else {
                    transmit = byte
                }
                thrEmptyPending = ier & 0x02 != 0
                return thrEmptyPending
            case 1 where dlab: divisor = (divisor & 0x00FF) | (UInt16(byte) << 8)
            case 1:
                let enablingTHRE = ier & 0x02 == 0 && byte & 0x02 != 0
                ier = byte & 0x0F
                if enablingTHRE { thrEmptyPending = true }
                return thrEmptyPending || (ier & 0x01 != 0 && !input.isEmpty)
            case 3: lcr = byte
            case 4: mcr = byte & 0x1F
            case 7: scratch = byte
            default: break
            }
            return false
        }
        if let transmit { sink(transmit) }
        if raise { raiseIRQ() }
    }
}

/// What the guest asked for through the platform devices.
enum PlatformEvent {
    case reset
    case powerOff
}

/// The i8042 keyboard controller, reduced to what a VMM needs: the CPU reset command.
final class I8042: PortIODevice {
    private let onEvent: (PlatformEvent) -> Void
    init(onEvent: @escaping (PlatformEvent) -> Void) { self.onEvent = onEvent }

    func read(port: UInt16, size: Int) -> UInt32 { 0 }

    func write(port: UInt16, size: Int, value: UInt32) {
        if port == 0x64 && value & 0xFF == 0xFE { onEvent(.reset) }
    }
}

/// ACPI fixed hardware: the PM1a event block (0x600: status, enable) with the power button,
/// and the PM1a control block (0x604) whose SLP_EN with SLP_TYP 5 powers the guest off.
final class PowerManagement: PortIODevice {
    static let eventBlock: UInt16 = 0x600
    static let controlBlock: UInt16 = 0x604
    static let sciIRQ: UInt32 = 9
    static let sleepTypeS5: UInt32 = 5

    private let lock = ConditionLock()
    private var status: UInt16 = 0
    private var enable: UInt16 = 0
    private let onEvent: (PlatformEvent) -> Void
    private let raiseSCI: (Bool) -> Void

    init(onEvent: @escaping (PlatformEvent) -> Void, raiseSCI: @escaping (Bool) -> Void) {
        self.onEvent = onEvent
        self.raiseSCI = raiseSCI
    }

    /// Presses the power button: sets PWRBTN_STS and raises the SCI if the guest enabled it.
    func pressPowerButton() {
        let raise = lock.withLock { () -> Bool in
            status |= 0x100
            return enable & 0x100 != 0
        }
        if raise { raiseSCI(true) }
    }

    func read(port: UInt16, size: Int) -> UInt32 {
        lock.withLock {
            switch port {
            case PowerManagement.eventBlock: return UInt32(status)
            case PowerManagement.eventBlock + 2: return UInt32(enable)
            case PowerManagement.controlBlock: return 1  // SCI_EN: always in ACPI mode
            default: return 0
            }
        }
    }

    func write(port: UInt16, size: Int, value: UInt32) {
        switch port {
        case PowerManagement.eventBlock:
            let lower = lock.withLock { () -> Bool in
                status &= ~UInt16(truncatingIfNeeded: value)  // write 1 to clear
                return status & enable == 0
            }
            if lower { raiseSCI(false) }
        case PowerManagement.eventBlock + 2:
            let raise = lock.withLock { () -> Bool in
                enable = UInt16(truncatingIfNeeded: value)
                return status & enable != 0
            }
            raiseSCI(raise)
        case PowerManagement.controlBlock:
            if value & 0x2000 != 0 && (value >> 10) & 7 == PowerManagement.sleepTypeS5 {
                onEvent(.powerOff)
            }
        default:
            break
        }
    }
}
