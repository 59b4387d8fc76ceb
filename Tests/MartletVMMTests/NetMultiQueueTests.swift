import Foundation
import Testing

import MartletSystem
import MartletVMMProtocol

@testable import MartletVMM

#if canImport(Glibc)
    import Glibc
#endif

/// Multi-queue virtio-net (VIRTIO_NET_F_MQ): the control queue's command handled against
/// hostile chains, over plain guest memory; and a device with two pairs on a real
/// multi-queue tap in a network namespace this test creates, driven the way a driver would.
@Suite(.serialized)
struct NetMultiQueueTests {
    static let next: UInt16 = 1
    static let write: UInt16 = 2
    static let size: UInt16 = 16

    /// A control queue at fixed rings in 4 MiB of guest memory (`BareRing`).
    final class ControlRing {
        let ring: BareRing
        var memory: GuestMemory { ring.memory }
        var pairs: [Int] = []

        init() throws { ring = try BareRing(size: NetMultiQueueTests.size) }

        func descriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) throws {
            try ring.descriptor(index, address: address, length: length, flags: flags, next: next)
        }

        /// Makes `head` available and runs the control queue with at most `maxPairs`.
        func submit(head: UInt16, maxPairs: Int = 4) throws -> Bool {
            try ring.makeAvailable(head)
            let used = try VirtioNet.control(ring.queue, memory: memory, maxPairs: maxPairs) { pairs.append($0) }
            _ = try ring.queue.publishUsed(memory)
            return used
        }

        /// A command in one readable buffer at 0x10000 and the ack at 0x11000 (set to 0xEE first).
        func command(_ bytes: [UInt8], maxPairs: Int = 4) throws -> UInt8 {
            try memory.write(bytes, at: 0x10000)
            try memory.write(UInt8(0xEE), at: 0x11000)
            try descriptor(0, address: 0x10000, length: UInt32(bytes.count), flags: NetMultiQueueTests.next, next: 1)
            try descriptor(1, address: 0x11000, length: 1, flags: NetMultiQueueTests.write)
            #expect(try submit(head: 0, maxPairs: maxPairs))
            return try memory.read(at: 0x11000)
        }
    }

    @Test func pairsSetAnswersOKWithinRangeAndErrOtherwise() throws {
        let ring = try ControlRing()
        #expect(try ring.command([4, 0, 2, 0]) == VirtioNet.controlOK)
        #expect(try ring.command([4, 0, 4, 0]) == VirtioNet.controlOK)
        #expect(ring.pairs == [2, 4])
        for bad: [UInt8] in [[4, 0, 5, 0], [4, 0, 0, 0], [4, 0, 2, 1], [4, 1, 2, 0], [0, 0, 1], [4, 0, 2], [4, 0, 2, 0, 0], [4]] {
            #expect(try ring.command(bad) == VirtioNet.controlError, "\(bad)")
        }
        #expect(ring.pairs == [2, 4], "no refused command changed the pairs")
        // The used ring says one byte was written for each command.
        #expect(try ring.memory.read(UInt16.self, at: 0x3002) == 10)
        #expect(try ring.memory.read(UInt32.self, at: 0x3004 + 4) == 1)
    }

    @Test func commandSplitOverBuffersIsRead() throws {
        let ring = try ControlRing()
        try ring.memory.write([UInt8(4), 0], at: 0x10000)
        try ring.memory.write([UInt8(3), 0], at: 0x10800)
        try ring.descriptor(0, address: 0x10000, length: 2, flags: Self.next, next: 1)
        try ring.descriptor(1, address: 0x10800, length: 2, flags: Self.next, next: 2)
        try ring.descriptor(2, address: 0x11000, length: 1, flags: Self.write)
        #expect(try ring.submit(head: 0))
        #expect(try ring.memory.read(UInt8.self, at: 0x11000) == VirtioNet.controlOK)
        #expect(ring.pairs == [3])
    }

    /// A huge readable length is answered ERR without reading it all.
    @Test func oversizedCommandIsRefused() throws {
        let ring = try ControlRing()
        try ring.memory.write([UInt8(4), 0, 2, 0], at: 0x10000)
        try ring.descriptor(0, address: 0x10000, length: 3 << 20, flags: Self.next, next: 1)
        try ring.descriptor(1, address: 0x3F_F000, length: 1, flags: Self.write)
        #expect(try ring.submit(head: 0))
        #expect(try ring.memory.read(UInt8.self, at: 0x3F_F000) == VirtioNet.controlError)
        #expect(ring.pairs.isEmpty)
    }

    @Test func chainsWithoutAnAckOrOutsideRAMOrLoopingThrow() throws {
        let noAck = try ControlRing()
        try noAck.memory.write([UInt8(4), 0, 2, 0], at: 0x10000)
        try noAck.descriptor(0, address: 0x10000, length: 4, flags: 0)
        #expect(throws: VMMError.self) { try noAck.submit(head: 0) }
        let emptyAck = try ControlRing()
        try emptyAck.descriptor(0, address: 0x10000, length: 4, flags: Self.next, next: 1)
        try emptyAck.descriptor(1, address: 0x11000, length: 0, flags: Self.write)
        #expect(throws: VMMError.self) { try emptyAck.submit(head: 0) }
        let outside = try ControlRing()
        try outside.descriptor(0, address: 0x10000, length: 4, flags: Self.next, next: 1)
        try outside.descriptor(1, address: 4 << 20, length: 1, flags: Self.write)
        #expect(throws: VMMError.self) { try outside.submit(head: 0) }
        let loop = try ControlRing()
        try loop.descriptor(0, address: 0x10000, length: 4, flags: Self.next, next: 1)
        try loop.descriptor(1, address: 0x11000, length: 1, flags: Self.next | Self.write, next: 1)
        #expect(throws: VMMError.self) { try loop.submit(head: 0) }
        let readableAfterAck = try ControlRing()
        try readableAfterAck.descriptor(0, address: 0x11000, length: 1, flags: Self.next | Self.write, next: 1)
        try readableAfterAck.descriptor(1, address: 0x10000, length: 4, flags: 0)
        #expect(throws: VMMError.self) { try readableAfterAck.submit(head: 0) }
        for ring in [noAck, emptyAck, outside, loop, readableAfterAck] { #expect(ring.pairs.isEmpty) }
    }

    @Test func queuesKeyIsValidatedAndDefaultsToOnePair() throws {
        #expect(VMConfig.NIC(tap: "t").queuePairs == 1)
        let config = try VMConfig(json: #"{"kernel": "k", "nics": [{"tap": "tap0", "queues": 8}]}"#, source: "vm.json")
        #expect(config.nics[0].queuePairs == 8)
        #expect(try VMConfig(json: config.json.text, source: "again") == config)
        #expect(throws: ProtocolError("vm.json: nics[0].queues: 9 is out of range; use 1 to 8 queue pairs, or leave it out for one")) {
            try VMConfig(json: #"{"kernel": "k", "nics": [{"tap": "tap0", "queues": 9}]}"#, source: "vm.json")
        }
        #expect(throws: ProtocolError("vm.json: nics[0].queues: 0 is out of range; use 1 to 8 queue pairs, or leave it out for one")) {
            try VMConfig(json: #"{"kernel": "k", "nics": [{"tap": "tap0", "queues": 0}]}"#, source: "vm.json")
        }
    }

    // MARK: - A real multi-queue tap

    static let available = NetTests.available
    static var ip: String { NetTests.ip }

    /// A network namespace with the tap `mtap0` (multi_queue when `multiQueue`), up, no IPv6.
    final class Namespace {
        let name = "martlet-mq-\(getpid())-\(UUID().uuidString.prefix(8))"

        init(multiQueue: Bool) throws {
            try #require(try TestSupport.run(ip, ["netns", "add", name]).status == 0)
            _ = try TestSupport.run(ip, ["netns", "exec", name, "/sbin/sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            for command in [
                ["tuntap", "add", "dev", "mtap0", "mode", "tap", "vnet_hdr"] + (multiQueue ? ["multi_queue"] : []),
                ["link", "set", "mtap0", "up"],
            ] {
                let result = try TestSupport.run(ip, ["-n", name] + command)
                try #require(result.status == 0, "ip \(command.joined(separator: " ")): \(result.output)")
            }
        }

        deinit { _ = try? TestSupport.run(NetMultiQueueTests.ip, ["netns", "del", name]) }

        /// Packets the tap received from the device (the host side of the wire).
        func tapReceivedPackets() throws -> Int {
            let stats = try TestSupport.run(NetMultiQueueTests.ip, ["-n", name, "-j", "-s", "link", "show", "mtap0"])
            let json = try JSON(parsing: stats.output.trimmingCharacters(in: .whitespacesAndNewlines))
            guard case .array(let links) = json, case .number(let packets)? = links.first?["stats64"]?["rx"]?["packets"]
            else { throw VMMError(.io, "unexpected ip -j output: \(stats.output)") }
            return Int(packets)
        }

        /// setns(2), which Glibc's module does not export: looked up in libc.
        static let setns = unsafeBitCast(dlsym(nil, "setns"), to: (@convention(c) (Int32, Int32) -> Int32).self)
        static let newNet: Int32 = 0x4000_0000  // CLONE_NEWNET

        /// The tap's queues the kernel steers frames to: tx-N in its sysfs folder (the
        /// attached ones; a detached queue is taken out of the count).
        func attachedTapQueues() throws -> Int {
            let list = try TestSupport.run(NetMultiQueueTests.ip, ["netns", "exec", name, "/bin/ls", "/sys/class/net/mtap0/queues"])
            return list.output.split(whereSeparator: \.isWhitespace).filter { $0.hasPrefix("tx-") }.count
        }

        /// Runs `body` on a thread of its own that entered the namespace (setns changes only
        /// the calling thread's), so the tap opened there is this namespace's.
        func inside<T>(_ body: @escaping () throws -> T) throws -> T {
            let path = "/var/run/netns/\(name)"
            var result: Result<T, Error>?
            let thread = try startThread {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0, Namespace.setns(fd, Namespace.newNet) == 0 else {
                    result = .failure(VMMError(.io, "cannot enter \(path): \(errnoText(errno))"))
                    return
                }
                close(fd)
                result = Result { try body() }
            }
            pthread_join(thread, nil)
            return try result!.get()
        }
    }

    /// Queue rings for `count` queues, 0x4000 apart from 0x100000.
    static func rings(_ index: Int) -> (descriptors: UInt64, available: UInt64, used: UInt64) {
        let base = 0x10_0000 + UInt64(index) * 0x4000
        return (base, base + 0x1000, base + 0x2000)
    }

    /// Sets the device up as a driver that accepted `features` and every queue.
    static func driver(_ device: VirtioNet, memory: GuestMemory, features: UInt64) -> VirtioMMIOTransport {
        let transport = VirtioMMIOTransport(device: device, base: 0xD000_0000, irq: 5, memory: memory) { _ in }
        transport.write(offset: 0x70, size: 4, value: 0)
        transport.write(offset: 0x70, size: 4, value: 3)
        transport.write(offset: 0x24, size: 4, value: 0)
        transport.write(offset: 0x20, size: 4, value: features & 0xFFFF_FFFF)
        transport.write(offset: 0x24, size: 4, value: 1)
        transport.write(offset: 0x20, size: 4, value: 1)  // VIRTIO_F_VERSION_1
        transport.write(offset: 0x70, size: 4, value: 11)
        for index in device.queueSizes.indices {
            let rings = Self.rings(index)
            transport.write(offset: 0x30, size: 4, value: UInt64(index))
            transport.write(offset: 0x38, size: 4, value: UInt64(Self.size))
            transport.write(offset: 0x80, size: 4, value: rings.descriptors)
            transport.write(offset: 0x90, size: 4, value: rings.available)
            transport.write(offset: 0xA0, size: 4, value: rings.used)
            transport.write(offset: 0x44, size: 4, value: 1)
        }
        transport.write(offset: 0x70, size: 4, value: 15)
        return transport
    }

    /// Makes a one-descriptor chain available on `queue` (its own descriptor table) and notifies.
    static func submit(_ transport: VirtioMMIOTransport, memory: GuestMemory, queue: Int, address: UInt64, length: UInt32, flags: UInt16) throws {
        let rings = Self.rings(queue)
        let index: UInt16 = try memory.read(at: rings.available + 2)
        let slot = index % Self.size
        try memory.writeDescriptor(UInt64(slot), in: rings.descriptors, address: address, length: length, flags: flags)
        try memory.write(slot, at: rings.available + 4 + 2 * UInt64(slot))
        try memory.write(index &+ 1, at: rings.available + 2)
        transport.notify(queue: queue)
    }

    /// A broadcast ARP request behind a zeroed 12-byte virtio-net header, at `address`.
    static func frame(_ memory: GuestMemory, at address: UInt64) throws -> UInt32 {
        let header = [UInt8](repeating: 0, count: VirtioNet.headerSize)
        let ethernet: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x52, 0x54, 0x00, 0xAA, 0xBB, 0xCD, 0x08, 0x06]
        let arp: [UInt8] = [0, 1, 8, 0, 6, 4, 0, 1, 0x52, 0x54, 0x00, 0xAA, 0xBB, 0xCD, 10, 78, 0, 2] + [UInt8](repeating: 0, count: 6) + [10, 78, 0, 1]
        let bytes = header + ethernet + arp
        try memory.write(bytes, at: address)
        return UInt32(bytes.count)
    }

    @Test(.enabled(if: available)) func framesOnTheSecondPairReachTheTapOnceTheDriverSetTwoPairs() throws {
        let namespace = try Namespace(multiQueue: true)
        let mac: [UInt8] = [0x52, 0x54, 0x00, 0xAA, 0xBB, 0xCD]
        let device = try namespace.inside { try VirtioNet(tap: "mtap0", mac: mac, pairs: 2) }
        #expect(device.queueSizes.count == 5, "rx0, tx0, rx1, tx1, control")
        #expect(device.features & (VirtioNet.featureMultiQueue | VirtioNet.featureControlQueue) == VirtioNet.featureMultiQueue | VirtioNet.featureControlQueue)
        let memory = try GuestMemory(size: 4 << 20)
        let transport = Self.driver(device, memory: memory, features: VirtioNet.featureMAC | VirtioNet.featureMultiQueue | VirtioNet.featureControlQueue)
        #expect(transport.read(offset: 0x100 + 8, size: 2) == 2, "max_virtqueue_pairs")
        #expect(transport.read(offset: 0x100, size: 4) == 0xAA00_5452, "mac")
        #expect(transport.read(offset: 0x100 + 6, size: 2) == 0, "status (not offered)")
        #expect(!transport.needsReset)
        #expect(transport.report.queuePairs == 1)

        // Until the driver asks for two pairs, the second pair's tap queue is detached: the
        // tap steers no frame to a receive queue the driver does not fill.
        #expect(try namespace.attachedTapQueues() == 1)

        try memory.write([UInt8(4), 0, 2, 0], at: 0x21_0000)
        let control = Self.rings(4)
        try memory.write(UInt64(0x21_0000), at: control.descriptors)
        try memory.write(UInt32(4), at: control.descriptors + 8)
        try memory.write(Self.next, at: control.descriptors + 12)
        try memory.write(UInt16(1), at: control.descriptors + 14)
        try memory.write(UInt64(0x21_1000), at: control.descriptors + 16)
        try memory.write(UInt32(1), at: control.descriptors + 24)
        try memory.write(Self.write, at: control.descriptors + 28)
        try memory.write(UInt16(0), at: control.available + 4)
        try memory.write(UInt16(1), at: control.available + 2)
        transport.notify(queue: 4)
        #expect(try memory.read(UInt8.self, at: 0x21_1000) == VirtioNet.controlOK)
        #expect(device.activePairs == 2)
        #expect(transport.report.queuePairs == 2, "info shows the pairs in use")
        #expect(try namespace.attachedTapQueues() == 2)

        let before = try namespace.tapReceivedPackets()
        let length = try Self.frame(memory, at: 0x20_0000)
        try Self.submit(transport, memory: memory, queue: 3, address: 0x20_0000, length: length, flags: 0)
        #expect(try memory.read(UInt16.self, at: Self.rings(3).used + 2) == 1, "the chain came back")
        #expect(try namespace.tapReceivedPackets() == before + 1, "the frame sent on tx1 reached the tap")
        #expect(!transport.needsReset)

        // A count beyond max_virtqueue_pairs is refused and changes nothing.
        try memory.write([UInt8(4), 0, 3, 0], at: 0x21_0000)
        try memory.write(UInt16(0), at: control.available + 6)
        try memory.write(UInt16(2), at: control.available + 2)
        transport.notify(queue: 4)
        #expect(try memory.read(UInt8.self, at: 0x21_1000) == VirtioNet.controlError)
        #expect(device.activePairs == 2)

        // A reset goes back to one pair.
        transport.write(offset: 0x70, size: 4, value: 0)
        #expect(device.activePairs == 1)
        #expect(try namespace.attachedTapQueues() == 1)
    }

    @Test(.enabled(if: available)) func onePairOffersNoMultiQueueAndOpensAMultiQueueTapToo() throws {
        let namespace = try Namespace(multiQueue: true)
        let device = try namespace.inside { try VirtioNet(tap: "mtap0", mac: [0x52, 0x54, 0, 1, 2, 3]) }
        #expect(device.queueSizes.count == 2)
        #expect(device.features & (VirtioNet.featureMultiQueue | VirtioNet.featureControlQueue) == 0)
    }

    @Test(.enabled(if: available)) func twoPairsOnASingleQueueTapAreRefusedNamingMultiQueue() throws {
        let namespace = try Namespace(multiQueue: false)
        #expect {
            _ = try namespace.inside { try VirtioNet(tap: "mtap0", mac: [0x52, 0x54, 0, 1, 2, 3], pairs: 2) }
        } throws: { error in
            "\(error)".contains("cannot open tap 'mtap0'") && "\(error)".contains("multi_queue")
        }
    }
}
