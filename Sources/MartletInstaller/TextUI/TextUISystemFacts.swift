import Foundation
import MartletCore

/// What the welcome and network screens show about this machine, read from /proc and /sys.
struct MachineFacts {
    var release: String?
    var cpuModel: String
    var cpus: Int
    var memory: ByteSize
    var hardwareVirtualization: Bool
    var kvmDevice: Bool

    static func read(releaseFile: String = "/etc/martlet/release") -> MachineFacts {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let lines = cpuinfo.split(separator: "\n")
        let model = lines.first { $0.hasPrefix("model name") }
            .flatMap { $0.split(separator: ":", maxSplits: 1).last }
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        let flags = lines.first { $0.hasPrefix("flags") }.map { $0.split(separator: " ") } ?? []
        let release = (try? String(contentsOfFile: releaseFile, encoding: .utf8))?
            .split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) }
        return MachineFacts(
            release: release, cpuModel: model, cpus: ProcessInfo.processInfo.activeProcessorCount,
            memory: ByteSize(ProcessInfo.processInfo.physicalMemory),
            hardwareVirtualization: flags.contains("vmx") || flags.contains("svm"),
            kvmDevice: FileManager.default.fileExists(atPath: "/dev/kvm"))
    }

    var text: String {
        var lines = [
            "Martlet \(release ?? "(development build)")",
            "",
            "This installs the Martlet hypervisor host onto the disks you choose.",
            "Nothing is written before you confirm the summary.",
            "",
            "Processor:  \(cpus) CPU(s), \(cpuModel)",
            "Memory:     \(memory)",
            "VT-x/AMD-V: \(hardwareVirtualization ? "available" : "NOT AVAILABLE")",
            "/dev/kvm:   \(kvmDevice ? "present" : "MISSING")",
        ]
        if !hardwareVirtualization || !kvmDevice {
            lines += [
                "",
                "WARNING: virtual machines need VT-x/AMD-V and /dev/kvm. Enable",
                "VT-x or AMD-V (SVM) in the firmware setup: without it the host",
                "installs but cannot start VMs.",
            ]
        }
        return lines.joined(separator: "\n")
    }
}

/// A network interface as listed in /sys/class/net.
struct NetworkInterface: Equatable {
    var name: String
    var mac: String
    var state: String

    /// Physical and virtual NICs except loopback, sorted by name.
    static func list(sysNet: String = "/sys/class/net") -> [NetworkInterface] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: sysNet)) ?? []).sorted()
        return names.filter { $0 != "lo" }.map { name in
            func read(_ file: String) -> String {
                ((try? String(contentsOfFile: "\(sysNet)/\(name)/\(file)", encoding: .utf8)) ?? "")
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            }
            let carrier = read("carrier")
            let state = carrier == "1" ? "link up" : read("operstate") == "up" ? "up" : "no link"
            return NetworkInterface(name: name, mac: read("address"), state: state)
        }
    }
}
