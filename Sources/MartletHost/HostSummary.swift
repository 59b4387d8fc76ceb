import Foundation
import MartletCore

/// What the web UI's first page shows about the host: `GET /v1/host`.
public struct HostSummary: Codable, Equatable, Sendable {
    public var hostname: String
    /// `VERSION` from /etc/martlet/release; nil off a Martlet host.
    public var version: String?
    public var uptimeSeconds: Int
    public var cpus: Int
    public var memoryBytes: UInt64
    /// Whether /dev/kvm opens: without it no VM starts.
    public var kvm: Bool
    /// br0's addresses (the bridge the VMs and the management network share).
    public var addresses: [String]
    public var pools: [PoolStatus]

    /// The summary of this machine, its pools from `host`.
    public static func current(host: VMHost, release: String = "/etc/martlet/release") throws -> HostSummary {
        let identity = APICertificate.localIdentity(interface: "br0")
        // /proc, as Glibc's module leaves sysinfo(2) out.
        let uptime = (try? String(contentsOfFile: "/proc/uptime", encoding: .utf8))?
            .split(separator: " ").first.flatMap { Double($0) } ?? 0
        let memoryKiB = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("MemTotal:") }?
            .split(separator: " ").dropFirst().first.flatMap { UInt64($0) } ?? 0
        let kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if kvm >= 0 { close(kvm) }
        let version = (try? String(contentsOfFile: release, encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("VERSION=") }
            .map { String($0.dropFirst("VERSION=".count)) }
        return HostSummary(
            hostname: identity.hostName, version: version, uptimeSeconds: Int(uptime),
            cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), memoryBytes: memoryKiB * 1024,
            kvm: kvm >= 0, addresses: identity.addresses, pools: try host.pools().map { try $0.status() })
    }
}
