import MartletCore

/// Tiny hybrid ISOs made with grub-mkrescue: El Torito BIOS + EFI, MBR + GPT with an ESP.
public enum GrubTestISO {
    /// An ISO whose GRUB prints `marker` on the serial console and sleeps. `prepare` may add
    /// files to the ISO tree (its argument) before the image is written.
    public static func make(
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
