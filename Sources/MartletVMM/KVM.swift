import CKVM

#if canImport(Glibc)
    import Glibc
#endif

/// The KVM system handle (`/dev/kvm`), owning its file descriptor.
public final class KVMSystem {
    public let fd: Int32
    /// Size of each vCPU's shared `kvm_run` area.
    public let vcpuMapSize: Int

    /// Opens `/dev/kvm` and checks the API version and the capabilities the VMM relies on.
    public init(path: String = "/dev/kvm") throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            switch code {
            case ENOENT:
                throw VMMError(
                    .kvmUnavailable,
                    "\(path) does not exist: KVM is not available. Enable virtualization (VT-x/AMD-V) in the firmware, load the kvm-intel or kvm-amd module, or enable nested virtualization when this is itself a VM"
                )
            case EACCES, EPERM:
                throw VMMError(
                    .kvmPermission,
                    "cannot open \(path): \(errnoText(code)); run as root or add the user to the 'kvm' group"
                )
            default:
                throw VMMError.syscall("open", path: path, errno: code)
            }
        }
        var fdToClose: Int32? = fd
        defer { if let fdToClose { close(fdToClose) } }
        let version = ckvm_ioctl(fd, CKVM_GET_API_VERSION, 0)
        guard version == 12 else {
            throw VMMError(
                .kvmCapability,
                version < 0
                    ? "\(path) is not a KVM device (KVM_GET_API_VERSION failed: \(errnoText(Int32(-version))))"
                    : "KVM API version \(version) is not the stable version 12; use a mainline Linux KVM")
        }
        for (capability, name) in KVMSystem.requiredCapabilities
        where ckvm_ioctl(fd, CKVM_CHECK_EXTENSION, UInt(capability)) <= 0 {
            throw VMMError(
                .kvmCapability,
                "KVM lacks the capability \(name); a newer host kernel (or an in-kernel irqchip capable KVM module) is needed"
            )
        }
        let size = ckvm_ioctl(fd, CKVM_GET_VCPU_MMAP_SIZE, 0)
        guard size > 0 else { throw VMMError.ioctl("KVM_GET_VCPU_MMAP_SIZE", size) }
        self.fd = fd
        self.vcpuMapSize = size
        fdToClose = nil
    }

    deinit { close(fd) }

    static let requiredCapabilities: [(Int32, String)] = [
        (KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"),
        (KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"),
        (KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"),
        (KVM_CAP_PIT2, "KVM_CAP_PIT2"),
        (KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"),
    ]

    /// Whether KVM_CHECK_EXTENSION reports `capability`.
    public func has(_ capability: Int32) -> Bool {
        ckvm_ioctl(fd, CKVM_CHECK_EXTENSION, UInt(capability)) > 0
    }

    /// The CPUID entries KVM can expose (KVM_GET_SUPPORTED_CPUID).
    public func supportedCPUID() throws -> [kvm_cpuid_entry2] {
        var capacity: UInt32 = 256
        while true {
            var entries = [kvm_cpuid_entry2](repeating: kvm_cpuid_entry2(), count: Int(capacity))
            var count = capacity
            let result = ckvm_get_supported_cpuid(fd, &entries, &count)
            if result == -Int(E2BIG) && capacity < 4096 {
                capacity *= 2
                continue
            }
            guard result >= 0 else { throw VMMError.ioctl("KVM_GET_SUPPORTED_CPUID", result) }
            return Array(entries.prefix(Int(count)))
        }
    }
}

/// A KVM virtual machine (KVM_CREATE_VM), owning its file descriptor.
public final class VirtualMachineHandle {
    public let fd: Int32
    let system: KVMSystem

    public init(system: KVMSystem) throws {
        let result = ckvm_ioctl(system.fd, CKVM_CREATE_VM, 0)
        guard result >= 0 else {
            throw VMMError.ioctl("KVM_CREATE_VM", result, hint: "check dmesg; with nested virtualization make sure the outer hypervisor exposes VMX/SVM")
        }
        self.fd = Int32(result)
        self.system = system
    }

    deinit { close(fd) }

    /// Registers `size` bytes at `host` as guest physical memory at `guestAddress`
    /// (`flags`: KVM_MEM_READONLY makes guest writes exit as MMIO).
    public func setMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, flags: UInt32 = 0) throws {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: flags, guest_phys_addr: guestAddress, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: host)))
        let result = withUnsafeMutablePointer(to: &region) {
            ckvm_ioctl(fd, CKVM_SET_USER_MEMORY_REGION, UInt(bitPattern: $0))
        }
        guard result >= 0 else { throw VMMError.ioctl("KVM_SET_USER_MEMORY_REGION", result) }
    }

    /// The x86 platform pieces KVM emulates in the kernel that must exist before any vCPU:
    /// TSS/identity-map pages and the irqchip (PIC + IOAPIC + LAPICs). The PIT follows with
    /// `startPIT` once the vCPUs exist.
    public func createPlatform(tssAddress: UInt64) throws {
        var result = ckvm_ioctl(fd, CKVM_SET_TSS_ADDR, UInt(tssAddress))
        guard result >= 0 else { throw VMMError.ioctl("KVM_SET_TSS_ADDR", result) }
        var identity = tssAddress + 0x3000
        result = withUnsafeMutablePointer(to: &identity) {
            ckvm_ioctl(fd, CKVM_SET_IDENTITY_MAP_ADDR, UInt(bitPattern: $0))
        }
        guard result >= 0 else { throw VMMError.ioctl("KVM_SET_IDENTITY_MAP_ADDR", result) }
        result = ckvm_ioctl(fd, CKVM_CREATE_IRQCHIP, 0)
        guard result >= 0 else { throw VMMError.ioctl("KVM_CREATE_IRQCHIP", result) }
    }

    /// Creates the in-kernel PIT (KVM_CREATE_PIT2) on a start-up thread of its own and returns
    /// the wait for it, which throws what the ioctl reported; call it before the first
    /// KVM_RUN, and on every path (it joins the thread). The kernel starts the PIT's worker
    /// thread inside the ioctl and waits until that thread is scheduled: 3-4 ms on a busy
    /// host (scripts/bench-vmm --trace), which the guest's loading overlaps instead of
    /// following. Call it after the vCPUs exist: KVM_CREATE_VCPU waits for the VM lock the
    /// ioctl holds. The thread runs under the process filter and ends before `Jail.lockDown`.
    public func startPIT() throws -> () throws -> Void {
        final class Outcome: @unchecked Sendable { var result = 0 }
        let outcome = Outcome()
        let fd = self.fd
        let thread = try startThread {
            var pit = kvm_pit_config()
            pit.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
            outcome.result = withUnsafeMutablePointer(to: &pit) { ckvm_ioctl(fd, CKVM_CREATE_PIT2, UInt(bitPattern: $0)) }
        }
        var joined = false
        return { [self] in
            guard !joined else { return }
            joined = true
            // pthread_join orders the thread's write of `result` before this read.
            pthread_join(thread, nil)
            _ = self  // the VM's descriptor stays open until the ioctl returned
            guard outcome.result >= 0 else { throw VMMError.ioctl("KVM_CREATE_PIT2", outcome.result) }
        }
    }

    /// Sets the level of a GSI of the in-kernel irqchip (KVM_IRQ_LINE).
    public func setIRQLine(_ irq: UInt32, level: Bool) throws {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        let result = withUnsafeMutablePointer(to: &line) { ckvm_ioctl(fd, CKVM_IRQ_LINE, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_IRQ_LINE", result) }
    }

    /// Makes a 4-byte guest write of `datamatch` to the MMIO address `address` signal the
    /// eventfd `eventFD` inside KVM instead of exiting to the VMM (KVM_IOEVENTFD).
    public func addIOEventFD(_ eventFD: Int32, address: UInt64, datamatch: UInt64) throws {
        var event = kvm_ioeventfd()
        event.datamatch = datamatch
        event.addr = address
        event.len = 4
        event.fd = eventFD
        event.flags = UInt32(1 << kvm_ioeventfd_flag_nr_datamatch)
        let result = withUnsafeMutablePointer(to: &event) { ckvm_ioctl(fd, CKVM_IOEVENTFD, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_IOEVENTFD", result) }
    }

    /// Makes a write to the eventfd `eventFD` pulse the GSI `gsi` inside KVM (KVM_IRQFD).
    public func addIRQFD(_ eventFD: Int32, gsi: UInt32) throws {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(eventFD)
        irqfd.gsi = gsi
        let result = withUnsafeMutablePointer(to: &irqfd) { ckvm_ioctl(fd, CKVM_IRQFD, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_IRQFD", result) }
    }

    /// An edge on a GSI: raise then lower the line.
    public func pulseIRQ(_ irq: UInt32) {
        try? setIRQLine(irq, level: true)
        try? setIRQLine(irq, level: false)
    }
}

/// A virtual CPU (KVM_CREATE_VCPU), owning its file descriptor and `kvm_run` mapping.
public final class VCPUHandle {
    public let fd: Int32
    public let index: Int
    let run: UnsafeMutablePointer<kvm_run>
    let runSize: Int

    public init(vm: VirtualMachineHandle, index: Int) throws {
        let result = ckvm_ioctl(vm.fd, CKVM_CREATE_VCPU, UInt(index))
        guard result >= 0 else { throw VMMError.ioctl("KVM_CREATE_VCPU(\(index))", result) }
        let fd = Int32(result)
        let size = vm.system.vcpuMapSize
        let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let mapping, mapping != MAP_FAILED else {
            let code = errno
            close(fd)
            throw VMMError(.memory, "mmap of vCPU \(index)'s kvm_run area failed: \(errnoText(code))")
        }
        self.fd = fd
        self.index = index
        self.run = mapping.bindMemory(to: kvm_run.self, capacity: 1)
        self.runSize = size
    }

    deinit {
        munmap(run, runSize)
        close(fd)
    }

    public func registers() throws -> kvm_regs {
        var regs = kvm_regs()
        let result = withUnsafeMutablePointer(to: &regs) { ckvm_ioctl(fd, CKVM_GET_REGS, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_GET_REGS", result) }
        return regs
    }

    public func setRegisters(_ regs: kvm_regs) throws {
        var regs = regs
        let result = withUnsafeMutablePointer(to: &regs) { ckvm_ioctl(fd, CKVM_SET_REGS, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_SET_REGS", result) }
    }

    public func specialRegisters() throws -> kvm_sregs {
        var sregs = kvm_sregs()
        let result = withUnsafeMutablePointer(to: &sregs) { ckvm_ioctl(fd, CKVM_GET_SREGS, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_GET_SREGS", result) }
        return sregs
    }

    public func setSpecialRegisters(_ sregs: kvm_sregs) throws {
        var sregs = sregs
        let result = withUnsafeMutablePointer(to: &sregs) { ckvm_ioctl(fd, CKVM_SET_SREGS, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_SET_SREGS", result) }
    }

    public func setFPU(_ fpu: kvm_fpu) throws {
        var fpu = fpu
        let result = withUnsafeMutablePointer(to: &fpu) { ckvm_ioctl(fd, CKVM_SET_FPU, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_SET_FPU", result) }
    }

    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws {
        let result = ckvm_set_cpuid2(fd, entries, UInt32(entries.count))
        guard result >= 0 else { throw VMMError.ioctl("KVM_SET_CPUID2", result) }
    }

    public func setMSRs(_ msrs: [(UInt32, UInt64)]) throws {
        let result = ckvm_set_msrs(fd, msrs.map(\.0), msrs.map(\.1), UInt32(msrs.count))
        guard result == msrs.count else {
            throw VMMError.ioctl("KVM_SET_MSRS", result < 0 ? result : -Int(EINVAL), hint: result >= 0 ? "only \(result) of \(msrs.count) MSRs accepted" : nil)
        }
    }

    public func setupLAPIC() throws {
        let result = ckvm_setup_lapic_lint(fd)
        guard result >= 0 else { throw VMMError.ioctl("KVM_GET_LAPIC/KVM_SET_LAPIC", result) }
    }

    public func setMPState(runnable: Bool) throws {
        var state = kvm_mp_state(mp_state: UInt32(runnable ? KVM_MP_STATE_RUNNABLE : KVM_MP_STATE_UNINITIALIZED))
        let result = withUnsafeMutablePointer(to: &state) { ckvm_ioctl(fd, CKVM_SET_MP_STATE, UInt(bitPattern: $0)) }
        guard result >= 0 else { throw VMMError.ioctl("KVM_SET_MP_STATE", result) }
    }

    /// One KVM_RUN; returns the exit, or nil when a signal interrupted it (EINTR/EAGAIN).
    func runOnce() throws -> ckvm_exit? {
        let result = ckvm_ioctl_once(fd, CKVM_RUN, 0)
        if result == -Int(EINTR) || result == -Int(EAGAIN) { return nil }
        guard result >= 0 else { throw VMMError.ioctl("KVM_RUN on vCPU \(index)", result) }
        var exit = ckvm_exit()
        ckvm_read_exit(run, &exit)
        return exit
    }

    /// Pointer to the data of a port I/O exit.
    func ioData(_ exit: ckvm_exit) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(run).advanced(by: Int(exit.io_data_offset))
    }

    func mmioData() -> UnsafeMutablePointer<UInt8> { ckvm_mmio_data(run) }

    func setImmediateExit(_ value: Bool) { ckvm_set_immediate_exit(run, value ? 1 : 0) }
}
