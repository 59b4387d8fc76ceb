import Foundation

/// A guest from the images people already have, on the installed host over SSH: a Debian
/// cloud image (qcow2, made by scripts/make-cloud-image) imported from a URL with its
/// SHA-256 and grown to 2 GiB, a VM that boots it through the firmware (SeaBIOS, GRUB, the
/// image's own kernel and initramfs) with a cloud-init seed carrying a key made on the host, a
/// host name and a static address on br0; then the host logs into the guest over SSH through
/// the bridge and finds cloud-init done and the root filesystem grown to the volume.
/// Under QEMU/TCG the guest runs on nested KVM (DESIGN.md, Facts), so every wait is long.
struct CloudJourney {
    let checks: HostChecks
    let scenario: Scenario
    /// Where the host downloads the image (the test host's server, through QEMU's guest forward).
    let imageURL: String
    let sha256: String

    static let vm = "e2e-cloud"
    static let volume = "e2e-cloud-disk"
    static let hostname = "cloudy"
    /// On br0's network (10.0.2.0/24), next to the kernel guest's 10.0.2.50.
    static let address = "10.0.2.60"
    static let key = "/root/.ssh/e2e-cloud"

    func run() throws {
        _ = try? checks.ssh.run(
            "martlet vm delete \(Self.vm) --volumes; martlet volume delete local/\(Self.volume); true", timeout: 120)
        try checks.require(
            "cloud image: volume import of a URL (qcow2, --sha256)",
            "martlet volume import local/\(Self.volume) \(imageURL) --sha256 \(sha256) --json", timeout: 900
        ) { $0.status == 0 && $0.output.contains("\"path\"") }
        scenario.mark("cloud-import")
        // As a person would: room for the guest's data; cloud-init grows the root partition
        // and its filesystem to the volume at the first boot.
        try checks.require(
            "volume resize of the imported image to 2 GiB", "martlet volume resize local/\(Self.volume) --size 2GiB --json")
        try checks.require(
            "a key for the cloud guest",
            "rm -f \(Self.key) \(Self.key).pub; ssh-keygen -q -t ed25519 -N '' -C e2e-cloud -f \(Self.key) && test -s \(Self.key).pub")
        try checks.require(
            "vm create --boot disk --cloud-init (cli)",
            "martlet vm create \(Self.vm) --boot disk --disk local/\(Self.volume) --memory 512MiB --nic br0 --cloud-init --ssh-key \(Self.key).pub --hostname \(Self.hostname) --ip \(Self.address)/24 --json")
        try checks.require("vm start (cloud image)", "martlet vm start \(Self.vm) --json", timeout: 300) {
            $0.status == 0 && $0.output.contains("\"running\"")
        }
        checks.check("the cloud VM's cgroup limits", VMJourney.cgroupLimits(vm: Self.vm, memoryMiB: 512, vcpus: 1)) {
            $0.output == "cgroup-limits-ok"
        }
        // The firmware's and GRUB's text reach the VM's console (SeaBIOS's serial console),
        // then the image's kernel, and cloud-init's last line naming the seed it read. (The
        // getty's "cloudy login:" is there too, but cloud-init's lines often split it.)
        try checks.require(
            "console: cloud-init done from the NoCloud seed",
            "martlet vm console \(Self.vm) --expect 'Datasource DataSourceNoCloud' --timeout 1500", timeout: 1560)
        // The whole console from console.log, not the attach's replay (its last 16 KiB); and
        // without escape sequences: SeaBIOS's serial console paints GRUB's screen with cursor
        // moves, which may land between the words of a line.
        let console = Self.withoutEscapes(
            try checks.require("the cloud VM's console log", "cat /run/martlet/vms/\(Self.vm)/console.log"))
        checks.expect("console: SeaBIOS", console.contains("SeaBIOS"), console)
        checks.expect("console: GRUB's menu", console.contains("GNU GRUB"), console)
        checks.expect("console: the image's GRUB entry", console.contains("Debian GNU/Linux 12 (cloud)"), console)
        scenario.mark("cloud-boot")
        // cloud-init put the host's key into the image's default user: SSH through br0.
        let ssh = "ssh -i \(Self.key) -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10 -o LogLevel=ERROR debian@\(Self.address)"
        // Every SSH login takes about a minute under nested KVM on TCG.
        let inside = checks.check(
            "ssh into the cloud guest through br0 (key and host name from cloud-init)",
            "for i in $(seq 30); do out=$(\(ssh) 'hostname; cloud-init status --long --wait; df -B1M --output=size / | tail -n 1' 2>&1) && break; sleep 5; done; echo \"$out\"",
            timeout: 1200
        ) { result in
            let lines = result.output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            return lines.first == Self.hostname && lines.contains("status: done")
        }
        let rootMiB = Int(inside?.output.split(separator: "\n").last?.trimmingCharacters(in: .whitespaces) ?? "") ?? 0
        checks.expect("cloud-init grew the guest's root to the resized volume", rootMiB > 1500, inside?.output ?? "")
        scenario.mark("cloud-ssh")
        try checks.require("vm stop (cloud image)", "martlet vm stop \(Self.vm) --grace 120 --json", timeout: 300) {
            $0.status == 0 && $0.output.contains("\"stopped\"")
        }
        checks.check("the cloud guest shut down on the power button", "cat /run/martlet/vms/\(Self.vm)/console.log") {
            $0.output.contains("reboot: Power down")
        }
        try checks.require("vm delete --volumes (cloud image)", "martlet vm delete \(Self.vm) --volumes --json")
    }

    /// `text` without ANSI escape sequences (CSI `ESC [ … final`, and two-byte `ESC x`).
    static func withoutEscapes(_ text: String) -> String {
        text.replacing(/\x1B\[[0-9;?]*[@-~]|\x1B[^\[]/, with: "")
    }
}
