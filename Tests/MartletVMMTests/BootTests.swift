import Foundation
import Testing

@testable import MartletVMM

struct BootTests {
    @Test(.enabled(if: FileManager.default.fileExists(atPath: TestSupport.debianKernel)))
    func parsesDebiansBzImageHeader() throws {
        let bytes = try readWholeFile(TestSupport.debianKernel, what: "kernel")
        let kernel = try KernelImage(bytes: bytes, path: TestSupport.debianKernel)
        guard case .bzImage(let version) = kernel.format else {
            Issue.record("not recognised as a bzImage: \(kernel.format)")
            return
        }
        #expect(version >= 0x020C)
        #expect(kernel.entry == 0x10_0200)
        let setupSectors = Int(bytes[0x1F1] == 0 ? 4 : bytes[0x1F1])
        #expect(kernel.segments.count == 1)
        #expect(kernel.segments[0].bytes.count == bytes.count - (setupSectors + 1) * 512)
        #expect(kernel.initSize > UInt64(kernel.segments[0].bytes.count))
        #expect(kernel.initrdAddressMax >= 0x37FF_FFFF)
        #expect(Array(kernel.setupHeader[(0x202 - 0x1F1)..<(0x206 - 0x1F1)]) == Array("HdrS".utf8))
    }

    @Test func rejectsWhatIsNotAKernel() {
        #expect(throws: VMMError.self) { try KernelImage(bytes: [UInt8](repeating: 0x90, count: 4096), path: "junk") }
        var old = [UInt8](repeating: 0, count: 4096)
        old.put(UInt32(0x5372_6448), at: 0x202)
        old.put(UInt16(0x0206), at: 0x206)
        #expect(throws: VMMError(.boot, "kernel 'old' uses boot protocol 2.6; 2.12 or newer is needed for the 64-bit entry")) {
            try KernelImage(bytes: old, path: "old")
        }
    }

    @Test func zeroPageCarriesCommandLineInitrdAndE820() throws {
        let memory = try GuestMemory(size: 256 << 20)
        let kernel = KernelImage(flat: [0xF4])
        let e820 = BootLayout.e820(memory)
        let page = ZeroPage(kernel: kernel, commandLine: "console=ttyS0", initrd: (0x0F00_0000, 0x12345), e820: e820, rsdp: 0xE0000)
        let bytes = page.bytes
        #expect(bytes.le(UInt16.self, at: 0x1FE) == 0xAA55)
        #expect(bytes.le(UInt32.self, at: 0x202) == 0x5372_6448)
        #expect(bytes[0x210] == 0xFF)
        #expect(bytes.le(UInt32.self, at: 0x228) == UInt32(BootLayout.commandLine))
        #expect(bytes.le(UInt32.self, at: 0x218) == 0x0F00_0000)
        #expect(bytes.le(UInt32.self, at: 0x21C) == 0x12345)
        #expect(bytes.le(UInt64.self, at: 0x070) == 0xE0000)
        #expect(Int(bytes[0x1E8]) == e820.count)
        #expect(e820 == [
            .init(address: 0, size: 0x9FC00, type: .ram),
            .init(address: 0xE0000, size: 0x20000, type: .reserved),
            .init(address: 0x10_0000, size: (256 << 20) - 0x10_0000, type: .ram),
        ])
        #expect(bytes.le(UInt64.self, at: 0x2D0 + 40) == 0x10_0000)
        #expect(bytes.le(UInt32.self, at: 0x2D0 + 40 + 16) == 1)
    }

    @Test func e820SplitsAroundTheMMIOHole() throws {
        let memory = try GuestMemory(size: 4096 << 20)
        let e820 = BootLayout.e820(memory)
        #expect(e820.last == .init(address: GuestMemory.fourGiB, size: (4096 << 20) - GuestMemory.mmioHoleStart, type: .ram))
        #expect(!e820.contains { $0.type == .ram && $0.address < GuestMemory.fourGiB && $0.address + $0.size > GuestMemory.mmioHoleStart })
    }

    /// The VmFlags of the mapping in /proc/self/smaps text that holds `address`.
    static func mappingFlags(containing address: UInt, smaps: String) -> [Substring]? {
        var inside = false
        for line in smaps.split(separator: "\n") {
            let range = line.prefix { $0 != " " }.split(separator: "-")
            if range.count == 2, let low = UInt(range[0], radix: 16), let high = UInt(range[1], radix: 16) {
                inside = address >= low && address < high
            } else if inside, line.hasPrefix("VmFlags:") {
                return line.split(separator: " ")
            }
        }
        return nil
    }

    @Test func guestRAMStartsOnHugePageBoundariesAndAsksForHugePages() throws {
        // Odd sizes too: the slack the mapping trims must not depend on the length.
        for mib in [3, 67, 256] {
            let memory = try GuestMemory(size: UInt64(mib) << 20)
            // Read to its end: /proc files report no size, and a one-shot read stops early.
            let smaps = String(decoding: try FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/self/smaps")).readToEnd() ?? Data(), as: UTF8.self)
            for region in memory.regions {
                let start = UInt(bitPattern: region.host)
                #expect(start % UInt(GuestMemory.hugePageSize) == 0, "\(mib) MiB: RAM at 0x\(String(start, radix: 16)) is not 2 MiB-aligned")
                // The VmFlags of the mapping holding it carry "hg" once MADV_HUGEPAGE took
                // effect (a neighbouring mapping with the same flags may have merged with it);
                // the first 2 MiB of guest RAM has 4 KiB pages, the rest huge ones.
                let huge = start + (region.guestAddress == 0 ? UInt(GuestMemory.hugePageSize) : 0)
                if region.guestAddress == 0 {
                    #expect(Self.mappingFlags(containing: start, smaps: smaps)?.contains("hg") == false, "\(mib) MiB: the first 2 MiB asks for huge pages")
                }
                if huge < start + UInt(region.size) {
                    #expect(Self.mappingFlags(containing: huge, smaps: smaps)?.contains("hg") == true, "\(mib) MiB: no \"hg\" in the VmFlags of the RAM's mapping at 0x\(String(huge, radix: 16))")
                }
            }
            try memory.write(UInt8(0xA5), at: UInt64(mib << 20) - 1)
            #expect(try memory.read(UInt8.self, at: UInt64(mib << 20) - 1) == 0xA5)
        }
    }

    @Test func pageTablesIdentityMapFourGiB() throws {
        let memory = try GuestMemory(size: 16 << 20)
        try BootLayout.writePageTables(memory)
        // Walk the tables for a few addresses the way the CPU does.
        for address: UInt64 in [0, 0x10_0000, 0x3FFF_FFFF, 0xD000_0000, 0xFEC0_0000, 0xFFFF_FFFF] {
            let pml4e: UInt64 = try memory.read(at: BootLayout.pml4 + 8 * ((address >> 39) & 0x1FF))
            #expect(pml4e & 1 == 1)
            let pdpte: UInt64 = try memory.read(at: (pml4e & ~0xFFF) + 8 * ((address >> 30) & 0x1FF))
            #expect(pdpte & 1 == 1)
            let pde: UInt64 = try memory.read(at: (pdpte & ~0xFFF) + 8 * ((address >> 21) & 0x1FF))
            #expect(pde & 0x81 == 0x81, "2 MiB page present for 0x\(String(address, radix: 16))")
            #expect((pde & ~0x1F_FFFF) | (address & 0x1F_FFFF) == address)
        }
    }

    @Test func gdtHasTheBootProtocolSelectors() {
        let code = BootLayout.segment(index: 2)
        let data = BootLayout.segment(index: 3)
        #expect(code.selector == 0x10 && code.l == 1 && code.type == 0xB && code.present == 1)
        #expect(data.selector == 0x18 && data.db == 1 && data.type == 0x3 && data.limit == 0xFFFF_FFFF)
    }

    @Test func kvmErrorsSayWhatToDo() {
        #expect {
            _ = try KVMSystem(path: "/nonexistent/kvm")
        } throws: { error in
            let error = error as? VMMError
            return error?.code == .kvmUnavailable && error?.message.contains("load the kvm-intel or kvm-amd module") == true
        }
        #expect {
            _ = try KVMSystem(path: "/dev/null")
        } throws: { error in
            let error = error as? VMMError
            return error?.code == .kvmCapability && error?.message.contains("/dev/null is not a KVM device (KVM_GET_API_VERSION failed") == true
        }
    }

    @Test func cpuidCarriesPerVCPUAPICIDs() throws {
        let system = try KVMSystem()
        let supported = try system.supportedCPUID()
        for index in 0..<3 {
            let entries = VCPUHandle.cpuid(supported, index: index, count: 3)
            let leaf1 = try #require(entries.first { $0.function == 1 })
            #expect(leaf1.ebx >> 24 == UInt32(index))
            #expect((leaf1.ebx >> 16) & 0xFF == 3)
            #expect(leaf1.ecx & (1 << 31) != 0)
            for leaf in entries where leaf.function == 0xB { #expect(leaf.edx == UInt32(index)) }
        }
    }
}
