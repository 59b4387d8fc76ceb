import Foundation
import MartletCore

@testable import MartletBuilder

/// A temporary folder removed when the fixture goes away.
final class ScratchDirectory {
    let path: String

    init(_ prefix: String = "martlet-test") throws {
        var template = Array((QEMUMachine.temporaryDirectory + "/\(prefix).XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw MartletError.system("mkdtemp", path: NSTemporaryDirectory())
        }
        path = String(cString: made)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ relative: String) -> String { path + "/" + relative }

    /// Writes `contents` at `relative`, creating folders on the way.
    @discardableResult
    func write(_ relative: String, _ contents: String) throws -> String {
        try write(relative, Data(contents.utf8))
    }

    @discardableResult
    func write(_ relative: String, _ contents: Data) throws -> String {
        let target = file(relative)
        try FileManager.default.createDirectory(
            atPath: (target as NSString).deletingLastPathComponent,
            withIntermediateDirectories: true)
        try contents.write(to: URL(fileURLWithPath: target))
        return target
    }
}

/// Tiny hybrid ISOs made with grub-mkrescue: El Torito BIOS + EFI, MBR + GPT with an ESP.
enum GrubTestISO {
    /// An ISO whose GRUB prints `marker` on the serial console and sleeps. `prepare` may add
    /// files to the ISO tree (its argument) before the image is written.
    static func make(
        in directory: ScratchDirectory, marker: String, label: String = "MARTLET_TEST",
        name: String = "test.iso", prepare: ((String) throws -> Void)? = nil
    ) throws -> String {
        let tree = directory.file("tree")
        try directory.write(
            "tree/boot/grub/grub.cfg",
            """
            serial --unit=0 --speed=115200
            terminal_output serial console
            echo \(marker)
            sleep 60

            """)
        try prepare?(tree)
        let iso = directory.file(name)
        try Command("grub-mkrescue", ["-o", iso, tree, "--", "-volid", label]).run(
            hint: "grub-mkrescue needs grub-pc-bin, grub-efi-amd64-bin, xorriso and mtools")
        return iso
    }
}
