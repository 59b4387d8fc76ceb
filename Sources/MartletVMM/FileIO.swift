import MartletSystem
import MartletValidation

#if canImport(Glibc)
    import Glibc
#endif

/// Reads a whole regular file (kernel, initrd, firmware) with read(2); a FIFO or device is
/// refused without blocking. Errors name the path.
func readWholeFile(_ path: String, what: String) throws -> [UInt8] {
    let file: FileDescriptor
    do {
        file = try FilePath.open(path, O_RDONLY, field: what, kind: .regularFile)
    } catch {
        throw VMMError(.io, error.problem)
    }
    let fd = file.raw
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw VMMError.syscall("fstat", path: path, errno: errno) }
    var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
    var done = 0
    while done < bytes.count {
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else {
            throw VMMError(.io, "reading \(what) '\(path)' failed: \(count == 0 ? "unexpected end of file" : errnoText(errno))")
        }
        done += count
    }
    return bytes
}

extension Array where Element == UInt8 {
    func le<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size where offset + i < count {
            value |= T(self[offset + i]) << (8 * i)
        }
        return value
    }

    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0..<MemoryLayout<T>.size {
            self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i))
        }
    }
}
