import MartletCore

extension Command {
    /// `name` with `arguments`, run with LVM_SUPPRESS_FD_WARNINGS=1. LVM warns on stderr about
    /// every descriptor it inherits (Foundation's pipes), and the installer runs LVM directly
    /// and through chroot, so every installer command sets it and stderr keeps only real errors.
    static func quietLVM(_ name: String, _ arguments: [String]) -> Command {
        Command(name, arguments, environment: ["LVM_SUPPRESS_FD_WARNINGS": "1"])
    }
}
