import CKVM

extension VCPUHandle {
    /// Puts the vCPU in 64-bit long mode at `entry` with the zero page in RSI, the state the
    /// Linux 64-bit boot protocol expects (flat __BOOT_CS/__BOOT_DS, identity-mapped paging).
    func setupLongMode(entry: UInt64, stack: UInt64) throws {
        var sregs = try specialRegisters()
        let code = BootLayout.segment(index: 2)
        let data = BootLayout.segment(index: 3)
        var tss = BootLayout.segment(index: 4)
        tss.type = 0xB
        sregs.cs = code
        sregs.ds = data
        sregs.es = data
        sregs.fs = data
        sregs.gs = data
        sregs.ss = data
        sregs.tr = tss
        sregs.gdt.base = BootLayout.gdt
        sregs.gdt.limit = UInt16(BootLayout.gdtEntries.count * 8 - 1)
        sregs.idt.base = BootLayout.idt
        sregs.idt.limit = 7
        sregs.cr3 = BootLayout.pml4
        sregs.cr4 |= 0x20  // PAE
        sregs.cr0 |= 0x8000_0001  // PG | PE
        sregs.efer |= 0x500  // LMA | LME
        try setSpecialRegisters(sregs)

        var regs = kvm_regs()
        regs.rflags = 0x2
        regs.rip = entry
        regs.rsi = BootLayout.zeroPage
        regs.rsp = stack
        regs.rbp = stack
        try setRegisters(regs)

        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        try setFPU(fpu)

        try setMSRs([
            (0x174, 0), (0x175, 0), (0x176, 0),  // SYSENTER_CS/ESP/EIP
            (0xC000_0081, 0), (0xC000_0082, 0), (0xC000_0083, 0), (0xC000_0084, 0),  // STAR, LSTAR, CSTAR, SFMASK
            (0xC000_0102, 0),  // KERNEL_GS_BASE
            (0x10, 0),  // TSC
            (0x1A0, 1),  // MISC_ENABLE: fast strings
        ])
    }

    /// CPUID for vCPU `index` of `count`: KVM's supported set, with this vCPU's APIC ID in
    /// leaves 1, 0xB and 0x1F, the logical processor count, and the hypervisor bit.
    static func cpuid(_ supported: [kvm_cpuid_entry2], index: Int, count: Int) -> [kvm_cpuid_entry2] {
        supported.map { original in
            var entry = original
            switch entry.function {
            case 1:
                entry.ebx = (entry.ebx & 0x0000_FFFF) | (UInt32(count & 0xFF) << 16) | (UInt32(index & 0xFF) << 24)
                entry.ecx |= 1 << 31
                if count > 1 { entry.edx |= 1 << 28 }
            case 0xB, 0x1F:
                entry.edx = UInt32(index)
            default:
                break
            }
            return entry
        }
    }
}
