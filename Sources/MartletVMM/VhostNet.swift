import CKVM
import MartletSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The kernel's virtio-net data path (/dev/vhost-net, the engine QEMU uses): a kernel thread
/// moves frames between the guest's rings and the tap, woken by the queues' ioeventfds and
/// interrupting the guest through the device's irqfd, so no frame passes through this process.
///
/// Opened, owned and told the guest's memory when the machine is made (on the main thread);
/// each time the driver sets DRIVER_OK the rings are handed over (`start`, on the vCPU thread
/// that saw the write), and a device reset takes them back (`stop`).
final class VhostNet {
    /// Where the vhost_net module puts its device.
    static let defaultPath = "/dev/vhost-net"
    /// VHOST_NET_F_VIRTIO_NET_HDR: vhost itself would add and strip the virtio-net header.
    /// Never acked: the tap keeps it (IFF_VNET_HDR), which is what carries the offloads.
    static let featureVirtioNetHeader: UInt64 = 1 << 27

    let path: String
    private let file: FileDescriptor
    /// The virtio feature bits this vhost-net can serve (VHOST_GET_FEATURES).
    let features: UInt64
    private var running = false

    /// Opens `path` (refusing anything but a character device), binds it to this process
    /// (VHOST_SET_OWNER) and gives it every RAM region of `memory` (VHOST_SET_MEM_TABLE).
    init(path: String, memory: GuestMemory) throws {
        self.path = path
        let fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw VMMError(.io, "cannot open '\(path)': \(errnoText(errno))") }
        file = FileDescriptor(fd)
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFCHR else {
            throw VMMError(.io, "'\(path)' is not a character device; vhost-net is \(VhostNet.defaultPath), made by the vhost_net module")
        }
        try VhostNet.check("VHOST_SET_OWNER", path, ckvm_ioctl(fd, CKVM_VHOST_SET_OWNER, 0))
        var features: UInt64 = 0
        try VhostNet.check("VHOST_GET_FEATURES", path, withUnsafeMutablePointer(to: &features) { ckvm_ioctl(fd, CKVM_VHOST_GET_FEATURES, UInt(bitPattern: $0)) })
        self.features = features
        let regions = memory.regions
        let result = ckvm_vhost_set_mem_table(
            fd, UInt32(regions.count), regions.map(\.guestAddress), regions.map(\.size),
            regions.map { UInt64(UInt(bitPattern: $0.host)) })
        try VhostNet.check("VHOST_SET_MEM_TABLE", path, result)
    }

    private static func check(_ request: String, _ path: String, _ result: Int) throws {
        guard result >= 0 else { throw VMMError(.io, "\(request) on '\(path)' failed: \(errnoText(Int32(-result)))") }
    }

    private func check(_ request: String, _ result: Int) throws {
        try VhostNet.check(request, path, result)
    }

    /// Hands the rings of `queues` to the kernel with the driver's `features`: each queue's
    /// size, its next available entry, its rings' host addresses, `kicks[index]` (the queue's
    /// ioeventfd) to wake it and `call` (the device's irqfd) to interrupt the guest; then
    /// attaches `tap` to every queue. A failure leaves no queue attached.
    func start(features driverFeatures: UInt64, queues: [VirtQueue], memory: GuestMemory, kicks: [Int32], call: Int32, tap: Int32) throws {
        let fd = file.raw
        // The ring and header layout the driver chose must be one the kernel serves; the
        // offload bits are the tap's business, not vhost's.
        let layout = driverFeatures & (VirtioMMIOTransport.versionOne | VirtQueue.featureEventIndex | VirtQueue.featureIndirect | VirtioNet.featureMergeableBuffers)
        guard layout & ~features == 0 else {
            throw VMMError(.io, "'\(path)' lacks the features 0x\(String(layout & ~features, radix: 16)) the driver accepted")
        }
        var acked = driverFeatures & features & ~VhostNet.featureVirtioNetHeader
        try check("VHOST_SET_FEATURES", withUnsafeMutablePointer(to: &acked) { ckvm_ioctl(fd, CKVM_VHOST_SET_FEATURES, UInt(bitPattern: $0)) })
        for (index, queue) in queues.enumerated() {
            let number = UInt32(index)
            let size = UInt64(queue.size)
            func host(_ address: UInt64, _ length: UInt64) throws -> UInt64 {
                UInt64(UInt(bitPattern: try memory.buffer(at: address, length: length).baseAddress))
            }
            try check("VHOST_SET_VRING_NUM", ckvm_vhost_set_vring(fd, CKVM_VHOST_SET_VRING_NUM, number, UInt32(queue.size)))
            try check("VHOST_SET_VRING_BASE", ckvm_vhost_set_vring(fd, CKVM_VHOST_SET_VRING_BASE, number, UInt32(queue.nextAvailable)))
            try check(
                "VHOST_SET_VRING_ADDR",
                ckvm_vhost_set_vring_addr(
                    fd, number, try host(queue.descriptorTable, 16 * size), try host(queue.availableRing, 6 + 2 * size),
                    try host(queue.usedRing, 6 + 8 * size)))
            try check("VHOST_SET_VRING_KICK", ckvm_vhost_set_vring_file(fd, CKVM_VHOST_SET_VRING_KICK, number, kicks[index]))
            try check("VHOST_SET_VRING_CALL", ckvm_vhost_set_vring_file(fd, CKVM_VHOST_SET_VRING_CALL, number, call))
        }
        running = true
        for index in queues.indices {
            let result = ckvm_vhost_set_vring_file(fd, CKVM_VHOST_NET_SET_BACKEND, UInt32(index), tap)
            guard result >= 0 else {
                stop(queueCount: queues.count)
                try check("VHOST_NET_SET_BACKEND", result)
                return
            }
        }
    }

    /// Detaches the tap from every queue (VHOST_NET_SET_BACKEND with -1): the kernel finishes
    /// the frame it is moving and touches the rings no more. For a device reset and the VM's end.
    func stop(queueCount: Int) {
        guard running else { return }
        running = false
        for index in 0..<queueCount {
            _ = ckvm_vhost_set_vring_file(file.raw, CKVM_VHOST_NET_SET_BACKEND, UInt32(index), -1)
        }
    }
}
