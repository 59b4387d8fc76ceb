/// The exit statuses of `martlet-vmm`; the host's runner decides from them whether to
/// restart a VM.
public enum VMMExitCode: Int32, Sendable, CaseIterable {
    /// The guest powered off (or shut down through the control socket); selftest passed.
    case powerOff = 0
    /// A VMM error or a guest crash (the reason is on stderr); selftest failed.
    case failed = 1
    /// Bad arguments or configuration.
    case badConfig = 2
    /// The guest reset with `on_reboot: "exit"`.
    case reset = 3
    /// Stopped through the control socket (`stop`) or by SIGTERM.
    case stopped = 4
    /// This host cannot run VMs: /dev/kvm missing, not permitted, or lacking a capability.
    case hostCannotRunVMs = 5
    /// The firmware found nothing to boot on the VM's disks (SeaBIOS: "No bootable device.").
    case noBootableDevice = 6
}
