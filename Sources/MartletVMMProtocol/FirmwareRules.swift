/// What a BIOS image given as `firmware` must look like. The VMM checks the bytes it maps; the
/// host checks the file's size before it spawns the VMM, so both refuse the same files with
/// the same words.
public enum FirmwareRules {
    /// Where Debian's `seabios` package puts SeaBIOS built for a PCI-less machine.
    public static let seaBIOSMicrovm = "/usr/share/seabios/bios-microvm.bin"
    /// Images are whole 64 KiB blocks, as QEMU requires of a BIOS image.
    public static let blockSize = 64 << 10
    /// At most 16 MiB, so the image stays above the LAPIC and the TSS pages below it.
    public static let maxSize = 16 << 20

    /// Why a firmware file of `size` bytes at `path` cannot boot, or nil when it can.
    public static func problem(path: String, size: Int) -> String? {
        if size == 0 {
            return "'\(path)' is empty; give a BIOS image such as \(seaBIOSMicrovm) (Debian package seabios)"
        }
        if size > maxSize {
            return "'\(path)' is \(size) bytes, more than the \(maxSize >> 20) MiB a BIOS image may have; is it a disk image?"
        }
        if size % blockSize != 0 {
            return "'\(path)' is \(size) bytes, not a multiple of 64 KiB as BIOS images are; is it the right file?"
        }
        return nil
    }
}
