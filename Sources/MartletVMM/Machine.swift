import CKVM
import MartletSystem
import MartletVMMProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A running virtual machine: KVM handles, guest memory, devices and one thread per vCPU.
///
/// Shared by the vCPU threads, the control server and the caller of `run`. It stays
/// `@unchecked Sendable` because it holds guest memory and KVM handles, which every vCPU thread
/// uses at once by design; everything that changes after `init` is in `control` (run state,
/// behind a lock) or atomic (`ioExitCount`, `firstExit`), and the devices lock themselves.
public final class Machine: @unchecked Sendable {
    /// How the guest ended.
    public enum Exit: Equatable, Sendable {
        case powerOff
        case reset
        case stopped
        case crashed(String)
        /// The firmware found nothing to boot on any disk ("No bootable device.").
        case noBootableDevice
    }

    /// Base of the virtio-mmio windows (one 4 KiB window per device) inside the MMIO hole.
    public static let virtioBase: UInt64 = GuestMemory.mmioHoleStart
    /// IOAPIC pins of the virtio devices: ISA-free lines, avoiding COM1 (4), RTC (8), SCI (9).
    public static let virtioIRQs: [UInt32] = [5, 6, 7, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]

    public let config: VMConfig
    let kvm: KVMSystem
    let vm: VirtualMachineHandle
    public let memory: GuestMemory
    let vcpus: [VCPUHandle]
    let serial: Serial
    let powerManagement: PowerManagement
    let virtio: [VirtioMMIOTransport]
    /// The I/O threads of the devices whose queue notifications KVM turns into eventfds.
    private let notifiers: [QueueNotifier]
    private let portDevices: [(range: ClosedRange<UInt16>, device: PortIODevice)]
    /// The BIOS image mapped at the top of 4 GiB in firmware mode (kept for its mapping).
    private let firmware: FirmwareImage?
    /// Ports already reported as unhandled (each is logged once).
    private let unhandledPorts = Mutex<Set<UInt16>>([])
    /// Pages of unhandled MMIO already reported with `traceIO`.
    private let unhandledPages = Mutex<Set<UInt64>>([])

    /// What the vCPU threads and the controlling threads share while the guest runs.
    private struct RunState {
        var started = false
        var exit: Exit?
        var paused = false
        var stopping = false
        var parkedVCPUs = 0
        var parkedIOThreads = 0
        var threads: [pthread_t] = []
        var ioThreads: [pthread_t] = []
        /// The vCPU threads must leave their loops.
        var ending: Bool { stopping || exit != nil }
    }
    private let control = ConditionLock(RunState())
    /// `serial: "file:PATH"` and `serial_log`; owned here so a failing init closes them.
    private let serialFile: FileDescriptor?
    private let serialLog: FileDescriptor?
    private let serialSocket: SerialSocket?
    private let ioExitCount = Atomic<Int>(0)
    /// The exits by kind, when `MARTLET_VMM_EXIT_STATS` is set (printed when the guest ends).
    let exitStatistics: ExitStatistics? = getenv(ExitStatistics.variable) != nil ? ExitStatistics() : nil
    /// CLOCK_MONOTONIC nanoseconds of the first VM exit (the guest has run), 0 before it.
    public var firstExitNanoseconds: UInt64 { firstExit.load(ordering: .acquiring) }
    private let firstExit = Atomic<UInt64>(0)

    /// Creates the VM: validates `config`, loads the kernel (or `kernelOverride`) and initrd,
    /// builds devices and vCPUs. `serialSink` replaces `config.serial` (tests capture output);
    /// `blockEngine` `.sync` keeps the disks off io_uring (tests compare both engines).
    public init(config: VMConfig, kernelOverride: KernelImage? = nil, blockEngine: BlockEngine = .ioUring, serialSink: ((UInt8) -> Void)? = nil) throws {
        do {
            try config.validate()
        } catch let error as ProtocolError {
            throw VMMError(.config, error.message)
        }
        self.config = config
        // Files named by the configuration are checked before any KVM resource exists; a
        // problem with one is a configuration error naming the field.
        func field<T>(_ name: String, _ body: () throws -> T) throws -> T {
            do {
                return try body()
            } catch let error as VMMError {
                throw VMMError(.config, "\(name): \(error.message)")
            }
        }
        let firmware = try config.firmware.map { path in try field("firmware") { try FirmwareImage(path: path) } }
        let kernel = try firmware != nil ? nil : kernelOverride ?? field("kernel") { try KernelImage(bytes: readWholeFile(config.kernel, what: "kernel"), path: config.kernel) }
        let initrd = try config.initrd.map { path in try field("initrd") { try readWholeFile(path, what: "initrd") } }
        StartupTrace.mark("machine.files")
        var disks: [VirtioBlock] = []
        for (index, disk) in config.disks.enumerated() {
            disks.append(try field("disks[\(index)]") { try VirtioBlock(path: disk.path, readOnly: disk.readOnly, serial: disk.id, direct: disk.cache == .none, queues: disk.queueCount(vcpus: config.vcpus), engine: blockEngine) })
            if let refusal = disks.last?.ringRefusal, blockEngine == .ioUring {
                Machine.reportOnce(&Machine.ioUringRefused, "martlet-vmm: \(refusal); disk transfers use preadv/pwritev instead\n")
            }
        }

        kvm = try KVMSystem()
        vm = try VirtualMachineHandle(system: kvm)
        StartupTrace.mark("machine.create-vm")
        memory = try GuestMemory(size: UInt64(config.memoryMiB) << 20)
        for (slot, region) in memory.regions.enumerated() {
            try vm.setMemoryRegion(slot: UInt32(slot), guestAddress: region.guestAddress, size: region.size, host: region.host)
        }
        StartupTrace.mark("machine.memory")
        try vm.createPlatform(tssAddress: firmware == nil ? BootLayout.tss : FirmwareImage.tssAddress)
        StartupTrace.mark("machine.irqchip")

        func openFile(_ path: String, _ flags: Int32, mode: mode_t, field: String) throws -> FileDescriptor {
            do {
                return try FileDescriptor.open(path, O_WRONLY | O_CREAT | flags, mode: mode)
            } catch let error as SystemError {
                throw VMMError(.config, "\(field): cannot open '\(path)': \(SystemError.text(error.errno))")
            }
        }
        var file: FileDescriptor?
        var socket: SerialSocket?
        switch config.serial {
        case .stdout, .none: break
        case .file(let path): file = try openFile(path, O_TRUNC, mode: 0o644, field: "serial")
        case .socket(let path): socket = try SerialSocket(path: path)
        }
        serialFile = file
        serialSocket = socket
        // A start that fails from here on leaves no socket file behind.
        var initialized = false
        defer { if !initialized { socket?.close() } }
        // Appended, so the log keeps earlier boots when `on_reboot: restart` re-executes the VMM.
        let log = try config.serialLog.map { try openFile($0, O_APPEND, mode: 0o640, field: "serial_log") }
        serialLog = log
        let vm = self.vm
        let toStdout = config.serial == .stdout
        let sink: (UInt8) -> Void = serialSink ?? { byte in
            if let socket {
                socket.send(byte)
            } else if let file {
                file.writeAll(CollectionOfOne(byte))
            } else if toStdout {
                var byte = byte
                _ = Glibc.write(1, &byte, 1)
            }
            log?.writeAll(CollectionOfOne(byte))
        }
        var onBootFailure: () -> Void = {}
        let bootFailure = firmware.map { _ in BootFailureWatch(onFailure: { onBootFailure() }) }
        let console: (UInt8) -> Void =
            bootFailure.map { watch in { byte in sink(byte); watch.observe(byte) } } ?? sink
        serial = Serial(sink: console, raiseIRQ: { vm.pulseIRQ(Serial.irq) })
        let serial = self.serial
        try socket?.start(receive: { serial.receive($0) })
        var onEvent: (PlatformEvent) -> Void = { _ in }
        let eventRelay: (PlatformEvent) -> Void = { onEvent($0) }
        powerManagement = PowerManagement(onEvent: eventRelay, raiseSCI: { try? vm.setIRQLine(PowerManagement.sciIRQ, level: $0) })

        var transports: [VirtioMMIOTransport] = []
        var devices: [VirtioDevice] = disks
        for (index, nic) in config.nics.enumerated() {
            let mac = nic.mac.flatMap(VMConfig.NIC.parseMAC) ?? VirtioNet.defaultMAC(for: nic.tap)
            // One vhost-net device per queue pair (it serves one rx and one tx ring); all or none.
            var vhost: [VhostNet] = []
            do {
                for _ in 0..<nic.queuePairs { vhost.append(try VhostNet(path: Machine.vhostNetPath, memory: memory)) }
            } catch {
                Machine.reportOnce(&Machine.vhostNetUnavailable, "martlet-vmm: \(error); virtio-net runs in userspace\n")
                vhost = []
            }
            devices.append(try field("nics[\(index)]") { try VirtioNet(tap: nic.tap, mac: mac, pairs: nic.queuePairs, vhost: vhost) })
        }
        if config.rng { devices.append(try VirtioRNG()) }
        var irqFDs: [Int32?] = []
        for (index, device) in devices.enumerated() {
            let irq = Machine.virtioIRQs[index]
            let interrupter = Machine.interrupter(vm: vm, irq: irq)
            irqFDs.append(interrupter.irqFD)
            transports.append(VirtioMMIOTransport(
                device: device, base: Machine.virtioBase + UInt64(index) * 0x1000, irq: irq,
                memory: memory, interrupt: interrupter.signal))
        }
        virtio = transports
        var notifiers: [QueueNotifier] = []
        for (index, transport) in transports.enumerated() {
            var notifier: QueueNotifier?
            do {
                notifier = try QueueNotifier(transport: transport, vm: vm)
                notifiers.append(notifier!)
            } catch {
                Machine.reportOnce(&Machine.ioEventFDRefused, "martlet-vmm: \(error); queue notifications exit to the VMM instead\n")
                (transport.device as? VirtioBlock)?.useSynchronousTransfers(reason: "no ioeventfd: requests run on the vCPU threads")
            }
            if let net = transport.device as? VirtioNet {
                // Weak: the notifier holds the transport, which holds the device.
                net.attachKernelEngine(kicks: notifier?.queueEventFDs, call: irqFDs[index], engineChanged: { [weak notifier] in notifier?.wake() })
            }
        }
        self.notifiers = notifiers
        StartupTrace.mark("machine.devices")

        let supportedCPUID = try kvm.supportedCPUID()
        var vcpus: [VCPUHandle] = []
        for index in 0..<config.vcpus {
            let vcpu = try VCPUHandle(vm: vm, index: index)
            try vcpu.setCPUID(VCPUHandle.cpuid(supportedCPUID, index: index, count: config.vcpus))
            try vcpu.setupLAPIC()
            vcpus.append(vcpu)
        }
        self.vcpus = vcpus
        StartupTrace.mark("machine.vcpus")
        // The PIT's creation waits for the scheduler (`startPIT`); the firmware's or the
        // guest's loading and the vCPUs' registers run meanwhile.
        let waitForPIT = try vm.startPIT()
        defer { try? waitForPIT() }

        var ports: [(range: ClosedRange<UInt16>, device: PortIODevice)] = [
            (Serial.base...Serial.base + 7, serial),
            (0x60...0x64, I8042(onEvent: eventRelay)),
            (PowerManagement.eventBlock...PowerManagement.controlBlock + 1, powerManagement),
        ]
        if let firmware {
            ports += try Machine.startFirmware(
                firmware, kvm: kvm, vm: vm, memory: memory, config: config, virtio: transports, bootVCPU: vcpus[0])
        }
        if config.traceIO {
            ports.append((DebugConsole.port...DebugConsole.port, DebugConsole(sink: { byte in Machine.trace(byte) })))
        }
        portDevices = ports
        self.firmware = firmware
        if let kernel {
            try loadGuest(kernel: kernel, initrd: initrd)
            for vcpu in vcpus {
                if vcpu.index == 0 || config.apStart == .entry {
                    let stack = vcpu.index == 0 ? BootLayout.bootStack : BootLayout.apStackTop - UInt64(vcpu.index - 1) * 0x1000
                    try vcpu.setupLongMode(entry: kernel.entry, stack: stack)
                    if vcpu.index > 0 { try vcpu.setMPState(runnable: true) }
                }
            }
        }
        StartupTrace.mark("machine.guest")
        try waitForPIT()
        StartupTrace.mark("machine.pit")
        onEvent = { [unowned self] event in
            finish(event == .powerOff ? .powerOff : .reset)
        }
        onBootFailure = { [unowned self] in finish(.noBootableDevice) }
        initialized = true
    }

    /// Whether KVM_IOEVENTFD, KVM_IRQFD or vhost-net failed already (each fallback is logged
    /// once per process).
    nonisolated(unsafe) private static var ioEventFDRefused = false
    nonisolated(unsafe) private static var irqFDRefused = false
    nonisolated(unsafe) private static var ioUringRefused = false
    nonisolated(unsafe) private static var vhostNetUnavailable = false

    /// The vhost-net device NICs use; a debug build takes another from
    /// MARTLET_VMM_TEST_VHOST_NET, so tests can prove what a wrong one does.
    static var vhostNetPath: String {
        #if DEBUG
            if let path = getenv("MARTLET_VMM_TEST_VHOST_NET") { return String(cString: path) }
        #endif
        return VhostNet.defaultPath
    }

    private static func reportOnce(_ reported: inout Bool, _ text: String) {
        guard !reported else { return }
        reported = true
        trace(text)
    }

    /// How a device interrupts the guest: through an irqfd, so KVM pulses the GSI without an
    /// ioctl from this process, or with KVM_IRQ_LINE when KVM refuses the irqfd.
    /// Also returns the irqfd, which a kernel engine (vhost-net) signals itself; the closure owns it.
    private static func interrupter(vm: VirtualMachineHandle, irq: UInt32) -> (signal: (UInt32) -> Void, irqFD: Int32?) {
        do {
            let event = try EventFD()
            try vm.addIRQFD(event.raw, gsi: irq)
            return ({ _ in event.signal() }, event.raw)
        } catch {
            reportOnce(&irqFDRefused, "martlet-vmm: \(error); device interrupts go through KVM_IRQ_LINE instead\n")
            return ({ vm.pulseIRQ($0) }, nil)
        }
    }

    /// Removes the serial socket of a machine that will not run (a later start-up step, such
    /// as the control socket, failed); `run` does this itself when the guest ends.
    public func closeSockets() {
        serialSocket?.close()
    }

    /// The kernel command line with the virtio-mmio devices appended, for kernels built with
    /// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (others find them in the DSDT).
    var commandLine: String {
        var line = config.cmdline
        for transport in virtio {
            line += " virtio_mmio.device=4K@0x\(String(transport.mmioBase, radix: 16)):\(transport.irq)"
        }
        return line
    }

    private func loadGuest(kernel: KernelImage, initrd: [UInt8]?) throws {
        for segment in kernel.segments {
            guard memory.contains(segment.address, length: UInt64(segment.bytes.count)) else {
                throw VMMError(.boot, "kernel: segment at 0x\(String(segment.address, radix: 16)) (\(segment.bytes.count) bytes) does not fit in \(config.memoryMiB) MiB of memory; raise memory_mib")
            }
            try memory.write(segment.bytes, at: segment.address)
        }
        var initrdPlacement: (UInt64, UInt64)?
        if let initrd {
            let lowEnd = memory.regions[0].size
            let top = min(lowEnd, kernel.initrdAddressMax + 1)
            let size = UInt64(initrd.count)
            let kernelEnd = KernelImage.loadAddress + max(kernel.initSize, UInt64(kernel.segments.map(\.bytes.count).max() ?? 0))
            guard size < top, (top - size) & ~0xFFF > kernelEnd else {
                throw VMMError(.boot, "initrd: \(initrd.count) bytes do not fit between the kernel and the top of low memory; raise memory_mib")
            }
            let address = (top - size) & ~0xFFF
            try memory.write(initrd, at: address)
            initrdPlacement = (address, size)
        }
        let line = commandLine
        try memory.write(Array(line.utf8) + [0], at: BootLayout.commandLine)
        try BootLayout.writePageTables(memory)
        try BootLayout.writeGDT(memory)
        let rsdp = try ACPITables(vcpus: config.vcpus, virtio: virtio.map { ($0.mmioBase, $0.mmioSize, $0.irq) }).write(to: memory, at: BootLayout.acpiStart)
        let zeroPage = ZeroPage(kernel: kernel, commandLine: line, initrd: initrdPlacement, e820: BootLayout.e820(memory), rsdp: rsdp)
        try memory.write(zeroPage.bytes, at: BootLayout.zeroPage)
    }

    // MARK: Running

    /// Starts the vCPU threads and blocks until the guest ends (or `timeout` seconds pass,
    /// which stops it and reports `.crashed("timeout")`).
    public func run(timeout: Double? = nil) throws -> Exit {
        Machine.installKickHandler()
        try control.withLock { state in
            guard !state.started else { throw VMMError(.guest, "the machine already ran") }
            state.started = true
            // Started with the lock held: a vCPU's first look at the run state waits until
            // the list of threads (which `pause` counts) is complete.
            for vcpu in vcpus {
                do {
                    state.threads.append(try startThread { [self] in vcpuLoop(vcpu) })
                } catch {
                    state.exit = state.exit ?? .crashed("\(error)")
                    break
                }
            }
            for notifier in notifiers where state.exit == nil {
                do {
                    state.ioThreads.append(try startThread { [self] in
                        // Before the first request: the guest's requests are outside input.
                        Seccomp.confineThreadOrExit(.device)
                        notifier.run { shouldContinue(parking: \.parkedIOThreads) }
                    })
                } catch {
                    state.exit = .crashed("\(error)")
                }
            }
        }
        let result = control.wait(until: { $0.exit != nil }, timeout: timeout) { state, ended -> Exit in
            if !ended { state.exit = .crashed("timeout after \(timeout ?? 0) s") }
            state.stopping = true
            return state.exit!
        }
        kickAll()
        for thread in control.withLock({ $0.threads + $0.ioThreads }) { pthread_join(thread, nil) }
        for transport in virtio { transport.device.stop() }
        serialSocket?.close()
        if let exitStatistics { Machine.trace(exitStatistics.table) }
        return result
    }

    /// Ends the run with `exit` (the first reason wins).
    func finish(_ exit: Exit) {
        control.withLock { state in
            if state.exit == nil { state.exit = exit }
        }
    }

    public var state: VMState {
        control.withLock { state in
            if !state.started { return .created }
            if state.exit != nil { return .stopped }
            return state.paused ? .paused : .running
        }
    }

    /// Feeds bytes read from `fd` (the console's stdin) to COM1 on a dedicated thread, for the
    /// life of the process.
    public func attachConsoleInput(fd: Int32) throws {
        let serial = self.serial
        _ = try startThread {
            Seccomp.confineThreadOrExit(.io)
            var buffer = [UInt8](repeating: 0, count: 256)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return }
                serial.receive(Array(buffer.prefix(count)))
            }
        }
    }

    /// Stops every vCPU out of KVM_RUN and waits until all are parked.
    public func pause() {
        control.withLock { $0.paused = true }
        kickAll()
        control.wait(
            until: { ($0.parkedVCPUs == $0.threads.count && $0.parkedIOThreads == $0.ioThreads.count) || $0.exit != nil },
            timeout: 5
        ) { _, _ in }
    }

    public func resume() {
        control.withLock { $0.paused = false }
    }

    /// Stops the VM at once (control API `stop`).
    public func stop() { finish(.stopped) }

    /// Presses the ACPI power button (control API `shutdown`); the guest powers off through S5.
    public func pressPowerButton() { powerManagement.pressPowerButton() }

    /// Port I/O exits handled so far, summed over the vCPUs.
    public var portIOExits: Int { ioExitCount.load(ordering: .relaxed) }

    /// Virtio devices that stopped on malformed guest input, with the reason.
    public var deviceErrors: [String] { virtio.compactMap { $0.lastError?.message } }

    /// The counters of every virtio device, in MMIO window order.
    public var deviceCounters: [ControlReply.Device] { virtio.map(\.report) }

    private func kickAll() {
        let running = control.withLock { $0.threads }
        for (index, thread) in running.enumerated() {
            vcpus[index].setImmediateExit(true)
            pthread_kill(thread, SIGUSR2)
        }
        for notifier in notifiers { notifier.wake() }
    }

    private static let installKick: Void = {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0  // no SA_RESTART: KVM_RUN must return EINTR
        sigaction(SIGUSR2, &action, nil)
    }()

    static func installKickHandler() { _ = installKick }

    /// Parks while paused (counted in `parked`, which `pause` waits for); returns false when
    /// the calling vCPU or I/O thread must leave its loop.
    private func shouldContinue(parking parked: WritableKeyPath<RunState, Int>) -> Bool {
        let parking = control.withLock { state -> Bool? in
            if state.ending { return nil }
            if state.paused { state[keyPath: parked] += 1 }
            return state.paused
        }
        guard let parking else { return false }
        guard parking else { return true }
        return control.wait(until: { !$0.paused || $0.ending }) { state, _ in
            state[keyPath: parked] -= 1
            return !state.ending
        }
    }

    private func vcpuLoop(_ vcpu: VCPUHandle) {
        // The kick signal must reach this thread even if its creator blocked it.
        var kick = sigset_t()
        sigemptyset(&kick)
        sigaddset(&kick, SIGUSR2)
        pthread_sigmask(SIG_UNBLOCK, &kick, nil)
        // Before the first KVM_RUN: no guest instruction runs on an unconfined thread.
        if vcpu.index == 0 { StartupTrace.mark("vcpu.thread") }
        do {
            try Seccomp.confineThread(.vcpu)
        } catch {
            finish(.crashed("vCPU \(vcpu.index): \(error)"))
            return
        }
        if vcpu.index == 0 { StartupTrace.mark("vcpu.filter") }
        #if DEBUG
            // Test-only (never compiled into a release build): proves a violation ends the VMM
            // with SIGSYS and a line naming the syscall. socket(AF_INET) is in no allow-list.
            if getenv("MARTLET_VMM_TEST_SECCOMP_VIOLATION") != nil {
                _ = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            }
            // Test-only: proves a VMM over its cgroup's memory limit is OOM-killed alone. The
            // first vCPU touches this many MiB of fresh pages, as a runaway device buffer would.
            if vcpu.index == 0, let text = getenv("MARTLET_VMM_TEST_ALLOCATE_MIB"), let mib = Int(String(cString: text)),
                mib > 0, let hog = malloc(mib << 20)
            {
                memset(hog, 1, mib << 20)
            }
        #endif
        while shouldContinue(parking: \.parkedVCPUs) {
            do {
                guard let exit = try vcpu.runOnce() else {
                    vcpu.setImmediateExit(false)
                    continue
                }
                if firstExit.load(ordering: .relaxed) == 0 { recordFirstExit() }
                exitStatistics?.record(exit)
                switch Int32(exit.reason) {
                case KVM_EXIT_IO:
                    ioExitCount.add(1, ordering: .relaxed)
                    handlePortIO(vcpu, exit)
                case KVM_EXIT_MMIO:
                    handleMMIO(vcpu, exit)
                case KVM_EXIT_HLT:
                    continue
                case KVM_EXIT_SHUTDOWN:
                    // A triple fault: Linux's last-resort reboot, or a guest that lost its
                    // stack or IDT. The registers tell the two apart after the fact.
                    Machine.trace("martlet-vmm: vCPU \(vcpu.index) triple fault (KVM_EXIT_SHUTDOWN)\(describeFault(vcpu)); treated as a reset\n")
                    finish(.reset)
                case KVM_EXIT_SYSTEM_EVENT:
                    switch Int32(exit.event_type) {
                    case KVM_SYSTEM_EVENT_SHUTDOWN: finish(.powerOff)
                    case KVM_SYSTEM_EVENT_RESET: finish(.reset)
                    default: finish(.crashed("vCPU \(vcpu.index): system event \(exit.event_type)"))
                    }
                case KVM_EXIT_FAIL_ENTRY:
                    finish(.crashed("vCPU \(vcpu.index): VM entry failed, hardware reason 0x\(String(exit.hardware_reason, radix: 16))"))
                case KVM_EXIT_INTERNAL_ERROR:
                    finish(.crashed("vCPU \(vcpu.index): KVM internal error, suberror \(exit.suberror)\(describeRegisters(vcpu))"))
                default:
                    finish(.crashed("vCPU \(vcpu.index): unhandled exit reason \(exit.reason)\(describeRegisters(vcpu))"))
                }
            } catch {
                finish(.crashed("\(error)"))
            }
        }
    }

    private func recordFirstExit() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let nanoseconds = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        if firstExit.compareExchange(expected: 0, desired: nanoseconds, ordering: .releasing).exchanged {
            StartupTrace.mark("first-exit", at: nanoseconds)
        }
    }

    private func describeRegisters(_ vcpu: VCPUHandle) -> String {
        guard let regs = try? vcpu.registers() else { return "" }
        return " at rip 0x\(String(regs.rip, radix: 16))"
    }

    /// The state a triple fault leaves behind: where the guest was, its stack, the last page
    /// fault's address and the tables the CPU could not use. On AMD, KVM puts the vCPU through
    /// INIT before it reports the shutdown (the VMCB is undefined after one): the registers
    /// are then the reset state, and the message says so instead of printing them.
    private func describeFault(_ vcpu: VCPUHandle) -> String {
        guard let regs = try? vcpu.registers() else { return "" }
        guard let sregs = try? vcpu.specialRegisters() else { return describeRegisters(vcpu) }
        if regs.rip == 0xFFF0, sregs.cs.selector == 0xF000, sregs.cr0 & 1 == 0 {
            return " (KVM reset the vCPU before reporting it, as on AMD: where it faulted is lost)"
        }
        let fields: [(String, UInt64)] = [
            ("rip", regs.rip), ("rsp", regs.rsp), ("rflags", regs.rflags), ("cr0", sregs.cr0), ("cr2", sregs.cr2),
            ("cr3", sregs.cr3), ("cr4", sregs.cr4), ("efer", sregs.efer), ("idt", sregs.idt.base), ("gdt", sregs.gdt.base),
            ("cs", UInt64(sregs.cs.selector)),
        ]
        return " at" + fields.map { " \($0.0) 0x\(String($0.1, radix: 16))" }.joined()
    }

    private func handlePortIO(_ vcpu: VCPUHandle, _ exit: ckvm_exit) {
        let port = exit.io_port
        let size = Int(exit.io_size)
        guard let device = portDevices.first(where: { $0.range.contains(port) })?.device else {
            // Firmware probes hardware that is not here: worth one line each, never fatal.
            if firmware != nil || config.traceIO, unhandledPorts.withLock({ $0.insert(port).inserted }) {
                Machine.trace("martlet-vmm: no device at port 0x\(String(port, radix: 16)) (first access: \(exit.io_direction == UInt8(KVM_EXIT_IO_OUT) ? "write" : "read"), \(size) bytes); ignored\n")
            }
            if exit.io_direction == UInt8(KVM_EXIT_IO_IN) {
                memset(vcpu.ioData(exit), 0xFF, size * Int(exit.io_count))
            }
            return
        }
        var data = vcpu.ioData(exit)
        for _ in 0..<max(1, Int(exit.io_count)) {
            if exit.io_direction == UInt8(KVM_EXIT_IO_OUT) {
                var value: UInt32 = 0
                memcpy(&value, data, size)
                device.write(port: port, size: size, value: value)
            } else {
                var value = device.read(port: port, size: size)
                memcpy(data, &value, size)
            }
            data += size
        }
    }

    private func handleMMIO(_ vcpu: VCPUHandle, _ exit: ckvm_exit) {
        let address = exit.mmio_address
        let size = Int(min(exit.mmio_length, 8))
        let data = vcpu.mmioData()
        // Writes to the read-only firmware mapping exit here; like ROM, it ignores them.
        guard let device = virtio.first(where: { address >= $0.mmioBase && address - $0.mmioBase < $0.mmioSize }) else {
            if config.traceIO, unhandledPages.withLock({ $0.insert(address >> 12).inserted }) {
                Machine.trace("martlet-vmm: no device at 0x\(String(address, radix: 16)) (first \(exit.mmio_is_write != 0 ? "write" : "read") in its page, \(size) bytes); ignored\n")
            }
            if exit.mmio_is_write == 0 { memset(data, 0xFF, size) }
            return
        }
        if exit.mmio_is_write != 0 {
            var value: UInt64 = 0
            memcpy(&value, data, size)
            device.write(offset: address - device.mmioBase, size: size, value: value)
        } else {
            var value = device.read(offset: address - device.mmioBase, size: size)
            memcpy(data, &value, size)
        }
    }
}
