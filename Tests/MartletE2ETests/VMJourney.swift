import Foundation
import MartletBuilder
import MartletCore

/// What a person does with a fresh host, on the installed host over SSH: give a real Linux
/// guest a volume of the storage pool and a NIC on br0, start it, read its console, reboot
/// the host, see the guest come back by itself, stop it, delete it.
///
/// The guest is the host's own Debian kernel with a busybox initramfs the host packs itself
/// (its modules match that kernel): it counts its boots in the first sector of its volume,
/// pings the host's br0 address through its tap, prints `E2E-GUEST-READY N` and waits for
/// the ACPI power button. Under QEMU/TCG it runs on nested KVM (DESIGN.md, Facts).
///
/// One lane drives the `martlet` CLI, the other the REST API over HTTPS with a token (curl on
/// the host, checking the certificate the host made at its first boot), so both front ends
/// meet the same host operations on real systemd.
struct VMJourney {
    enum Interface: String { case cli, api }

    let checks: HostChecks
    let scenario: Scenario
    let host: QEMUMachine
    let interface: Interface
    /// br0's IPv4 address, without the prefix length: what the guest pings.
    let hostAddress: String

    static let vm = "e2e-guest"
    static let volume = "e2e-guest-disk"
    static let kernels = "/var/lib/martlet/kernels"

    func run() throws {
        // A recheck boots a disk an earlier run used; QEMU's hard stop at its end may have
        // lost the deletions that run made. A fresh host has nothing to remove.
        _ = try? checks.ssh.run(
            "martlet vm delete \(Self.vm) --volumes; martlet vm delete nokvm; martlet volume delete local/\(Self.volume); martlet volume delete local/e2e-imported; true")
        if interface == .api { try https() }
        try makeGuest()
        importImage()
        let mac = try define()
        try firstStart(mac: mac)
        try rebootHost()
        try afterReboot()
        try stopAndDelete()
        if interface == .cli { withoutKVM() }
    }

    // MARK: - Steps

    /// The API's HTTPS side as a new admin meets it: a token made with the CLI, the
    /// certificate's fingerprint the same from the CLI, the console banner and openssl, and
    /// no answer without the token. Every later API step of this lane goes over HTTPS.
    func https() throws {
        try checks.require(
            "api token create (https)",
            "martlet api token revoke e2e >/dev/null 2>&1; (umask 077; martlet api token create e2e > /root/e2e-api.token) && test -s /root/e2e-api.token",
            timeout: 60)
        checks.check(
            "api fingerprint = login banner = openssl",
            "a=$(martlet api fingerprint) && b=$(openssl x509 -in /etc/martlet/tls/cert.pem -noout -fingerprint -sha256 | cut -d= -f2) && echo \"$a\" && test \"$a\" = \"$b\" && grep -F \"$a\" /etc/issue.d/martlet-api.issue"
        ) { $0.status == 0 }
        // The service made its certificate at boot; the listener may still be coming up.
        checks.check(
            "https without a token is 401",
            "for i in $(seq 60); do code=$(curl -sS --cacert /etc/martlet/tls/cert.pem -o /dev/null -w '%{http_code}' https://127.0.0.1:8443/v1/vms) && break; sleep 1; done; echo $code; test \"$code\" = 401",
            timeout: 120
        ) { $0.status == 0 }
        checks.check(
            "web UI login page loads (https)",
            "curl -sS --cacert /etc/martlet/tls/cert.pem https://127.0.0.1:8443/ | grep -c 'id=\"login-form\"'"
        ) { $0.status == 0 }
    }

    /// Packs the guest on the host from its own kernel, modules and busybox.
    func makeGuest() throws {
        try checks.require("guest: pack kernel + busybox initramfs", Self.makeGuestScript, timeout: 120)
    }

    /// Imports a qcow2 image (made on the host with qemu-img) as a volume, checks its bytes
    /// arrived, and deletes the volume again.
    func importImage() {
        let image = "/tmp/e2e-import.qcow2"
        let made = checks.check(
            "qcow2 image made with qemu-img",
            "set -e; rm -f /tmp/e2e-import.raw \(image); truncate -s 32M /tmp/e2e-import.raw; echo MARTLET-IMPORTED | dd of=/tmp/e2e-import.raw conv=notrunc status=none; qemu-img convert -O qcow2 /tmp/e2e-import.raw \(image); qemu-img info \(image) | grep -q 'file format: qcow2'"
        ) { $0.status == 0 }
        guard made?.status == 0 else { return }
        let imported: CommandResult?
        switch interface {
        case .cli:
            imported = checks.check(
                "volume import qcow2 (cli)", "martlet volume import local/e2e-imported \(image) --json"
            ) { $0.status == 0 && $0.output.contains("33554432") }
        case .api:
            imported = checks.check(
                "volume import qcow2 (api)",
                Self.api("POST", "/v1/pools/local/volumes", #"{"name":"e2e-imported","image":"\#(image)"}"#, expect: 201)
            ) { $0.status == 0 && $0.output.contains("33554432") }
        }
        guard imported?.status == 0 else { return }
        checks.check(
            "the imported volume holds the image's bytes",
            "p=$(martlet volume list local --json | sed -n 's/.*\"path\" : \"\\(.*e2e-imported.*\\)\".*/\\1/p'); dd if=$p bs=512 count=1 status=none | tr -dc 'A-Z-'"
        ) { $0.output == "MARTLET-IMPORTED" }
        switch interface {
        case .cli:
            checks.check("volume delete (cli)", "martlet volume delete local/e2e-imported") { $0.status == 0 }
        case .api:
            checks.check(
                "volume delete (api)", Self.api("DELETE", "/v1/pools/local/volumes/e2e-imported", expect: 204)
            ) { $0.status == 0 }
        }
    }

    /// Creates the volume and the VM (autostart, 2 vCPUs, 256 MiB, one NIC on br0); checks
    /// the name-taken refusal; returns the MAC the host generated for the NIC.
    func define() throws -> String {
        let cmdline = "console=ttyS0 panic=-1 quiet e2e.ip=10.0.2.50/24 e2e.ping=\(hostAddress)"
        switch interface {
        case .cli:
            try checks.require(
                "volume create (cli)",
                "martlet volume create local/\(Self.volume) --size 64MiB --json") {
                    $0.status == 0 && $0.output.contains("\"path\"")
                }
            checks.check(
                "volume resize grows (cli)", "martlet volume resize local/\(Self.volume) --size 96MiB --json") {
                    $0.status == 0 && $0.output.contains("\"size\" : 100663296")
                }
            checks.check(
                "volume resize refuses to shrink (cli, exit 6)",
                "martlet volume resize local/\(Self.volume) --size 32MiB; test $? = 6") { $0.status == 0 }
            let create =
                "martlet vm create \(Self.vm) --kernel \(Self.kernels)/e2e-vmlinuz --initrd \(Self.kernels)/e2e-initrd.gz --cmdline '\(cmdline)' --vcpus 2 --memory 256MiB --disk local/\(Self.volume) --nic br0 --autostart --json"
            try checks.require("vm create (cli)", create)
            checks.check("vm create refuses a taken name (cli, exit 6)", create + "; test $? = 6") {
                $0.status == 0
            }
        case .api:
            try checks.require(
                "volume create (api)",
                Self.api("POST", "/v1/pools/local/volumes", #"{"name":"\#(Self.volume)","size":"64MiB"}"#, expect: 201)
            ) { $0.status == 0 && $0.output.contains("\"path\"") }
            checks.check(
                "volume resize grows (api)",
                Self.api("PUT", "/v1/pools/local/volumes/\(Self.volume)", #"{"size":"96MiB"}"#, expect: 200)
            ) { $0.status == 0 && $0.output.contains("100663296") }
            let body = #"""
                {"name":"\#(Self.vm)","vcpus":2,"memory":"256MiB","kernel":"\#(Self.kernels)/e2e-vmlinuz","initrd":"\#(Self.kernels)/e2e-initrd.gz","cmdline":"\#(cmdline)","disks":[{"pool":"local","volume":"\#(Self.volume)"}],"nics":[{"bridge":"br0"}],"autostart":true}
                """#
            try checks.require("vm create (api)", Self.api("POST", "/v1/vms", body, expect: 201))
            checks.check(
                "vm create refuses a taken name (api, 409)",
                Self.api("POST", "/v1/vms", body, expect: 409)) { $0.status == 0 }
        }
        return try checks.require(
            "generated MAC in the definition",
            "sed -n 's/^mac = \"\\(.*\\)\"$/\\1/p' /etc/martlet/vms/\(Self.vm).toml"
        ) { $0.output.hasPrefix("02:4d:4c:") }
    }

    /// Starts the VM and checks what a person would look at: the console, the systemd unit,
    /// the tap on br0, the unprivileged VMM, and the refusals while it runs.
    func firstStart(mac: String) throws {
        switch interface {
        case .cli: try checks.require("vm start (cli)", "martlet vm start \(Self.vm) --json") {
            $0.status == 0 && $0.output.contains("\"running\"")
        }
        case .api: try checks.require("vm start (api)", Self.api("POST", "/v1/vms/\(Self.vm)/start", expect: 200)) {
            $0.status == 0 && $0.output.contains("\"running\"")
        }
        }
        let console = try checks.require("console: the guest boots (1st)", consoleCommand("E2E-GUEST-READY 1"), timeout: 420)
        scenario.mark("vm-first-boot")
        checks.expect(
            "guest: 2 vCPUs and the defined MAC",
            console.contains("E2E-GUEST-BOOT 1 cpus=0-1 mac=\(mac)"), console)
        checks.expect(
            "guest: pings br0 (\(hostAddress)) through its tap", console.contains("E2E-GUEST-PING ok"),
            console)
        checks.check("martlet-vm@\(Self.vm).service active", "systemctl is-active martlet-vm@\(Self.vm).service") {
            $0.output == "active"
        }
        // The host loads vhost_net, the unit allows /dev/vhost-net and the jail holds it: the
        // kernel moves the guest's frames (the VMM's info names the NIC's engine).
        checks.check(
            "the guest's NIC runs on vhost-net",
            "martlet-vmm control /run/martlet/vms/\(Self.vm)/vmm/control.sock info"
        ) { $0.status == 0 && $0.output.contains(#""engine":"vhost-net""#) }
        checks.check("the VM's tap is on br0", "ip -o link show master br0 | grep -c ' mvm'") { $0.output == "1" }
        checks.check("martlet-vmm runs as martlet-vm", "ps -o user:20= -C martlet-vmm") {
            $0.output == "martlet-vm"
        }
        checks.check("the VMM's cgroup limits (cgroup v2 under systemd)", Self.cgroupLimits(vm: Self.vm, memoryMiB: 256, vcpus: 2)) {
            $0.output == "cgroup-limits-ok"
        }
        checks.check(
            "volume delete refused while a VM uses it (exit 6)",
            "martlet volume delete local/\(Self.volume); test $? = 6") { $0.status == 0 }
        checks.check("vm delete refused while running (exit 6)", "martlet vm delete \(Self.vm); test $? = 6") {
            $0.status == 0
        }
    }

    /// `systemctl reboot`, then waits for SSH on the next boot (a new boot id).
    func rebootHost() throws {
        let bootID = try checks.require("boot id", "cat /proc/sys/kernel/random/boot_id")
        _ = try? checks.ssh.run("systemctl reboot", timeout: 30)
        let deadline = ContinuousClock.now.advanced(by: .seconds(900))
        while true {
            guard host.isRunning else {
                checks.fail("host reboot", "QEMU exited during the reboot: \(E2E.readable(host.serialTail(20)))")
                throw HostChecks.StepFailed()
            }
            if let result = try? checks.ssh.run("cat /proc/sys/kernel/random/boot_id", timeout: 30),
                result.status == 0, !result.output.isEmpty, result.output != bootID
            {
                break
            }
            guard ContinuousClock.now < deadline else {
                checks.fail("host reboot", "SSH did not come back with a new boot id within 900 s")
                throw HostChecks.StepFailed()
            }
            Thread.sleep(forTimeInterval: 5)
        }
        scenario.mark("host-reboot")
    }

    /// After the reboot the VM must be running again by itself, on the same volume.
    func afterReboot() throws {
        checks.check("system state after the reboot", "systemctl is-system-running --wait", timeout: 300) {
            $0.output == "running" || $0.output == "degraded"
        }
        checks.check(
            "the guest got the power button when the host shut down",
            "journalctl -b -1 -u martlet-vm@\(Self.vm).service --no-pager") {
                $0.output.contains("VM '\(Self.vm)' powered off")
            }
        checks.check("autostart started the VM", "journalctl -b -u martlet-vms-autostart.service --no-pager") {
            $0.output.contains("\(Self.vm): started")
        }
        let listing =
            interface == .cli ? "martlet vm list --json" : Self.api("GET", "/v1/vms", expect: 200)
        checks.check("the VM is running after the reboot (\(interface.rawValue))", listing) {
            $0.status == 0 && $0.output.contains("\"running\"")
        }
        // Boot 2: the count the guest wrote to its volume before the reboot survived.
        let console = try checks.require(
            "console: the guest boots again (2nd, same volume)", consoleCommand("E2E-GUEST-READY 2"), timeout: 420)
        checks.expect(
            "guest: pings br0 after the reboot",
            console.contains("E2E-GUEST-BOOT 2") && console.contains("E2E-GUEST-PING ok"), console)
        scenario.mark("vm-after-reboot")
    }

    /// Stops the VM with time for the guest to power off, checks what is left, deletes it.
    func stopAndDelete() throws {
        let path = try checks.require(
            "volume path", "martlet volume list local --json | sed -n 's/.*\"path\" : \"\\(.*\\)\".*/\\1/p' | grep \(Self.volume)")
        switch interface {
        case .cli:
            try checks.require("vm stop --grace 60 (cli)", "martlet vm stop \(Self.vm) --grace 60 --json", timeout: 120) {
                $0.status == 0 && $0.output.contains("\"stopped\"")
            }
        case .api:
            try checks.require(
                "vm stop grace=60 (api)", Self.api("POST", "/v1/vms/\(Self.vm)/stop?grace=60", expect: 200), timeout: 120
            ) { $0.status == 0 && $0.output.contains("\"stopped\"") }
        }
        checks.check("the guest powered off on the power button", "cat /run/martlet/vms/\(Self.vm)/console.log") {
            $0.output.contains("E2E-GUEST-POWER-BUTTON 2")
        }
        checks.check("unit inactive after stop", "systemctl is-active martlet-vm@\(Self.vm).service; true") {
            $0.output == "inactive"
        }
        checks.check("the tap is gone", "ip -o link show master br0 | grep -c ' mvm'; true") { $0.output == "0" }
        checks.check("the guest's writes are on the volume", "dd if=\(path) bs=512 count=1 status=none | tr -dc 'a-z0-9='") {
            $0.output == "boot=2"
        }
        switch interface {
        case .cli:
            try checks.require("vm delete --volumes (cli)", "martlet vm delete \(Self.vm) --volumes --json")
            checks.check("volume gone (cli)", "martlet volume list local --json") {
                $0.status == 0 && !$0.output.contains(Self.volume)
            }
        case .api:
            try checks.require("vm delete volumes=true (api)", Self.api("DELETE", "/v1/vms/\(Self.vm)?volumes=true", expect: 204))
            checks.check("volume gone (api)", Self.api("GET", "/v1/pools/local/volumes", expect: 200)) {
                $0.status == 0 && !$0.output.contains(Self.volume)
            }
        }
        checks.check("definition removed", "test ! -e /etc/martlet/vms/\(Self.vm).toml") { $0.status == 0 }
        checks.check("volume's storage released", "test ! -e \(path)") { $0.status == 0 }
        scenario.mark("vm-stop-delete")
    }

    /// A host whose KVM module is not loaded (as with VT-x off in the firmware): `vm start`
    /// fails at once and names the problem, instead of timing out or retrying. KVM is loaded
    /// again afterwards.
    func withoutKVM() {
        let unloaded = checks.check(
            "unload KVM", "for m in kvm_amd kvm_intel; do rmmod $m 2>/dev/null; done; test ! -e /dev/kvm"
        ) { $0.status == 0 }
        if unloaded?.status == 0 {
            checks.check(
                "vm start without /dev/kvm fails at once and says why",
                "martlet vm create nokvm --kernel \(Self.kernels)/e2e-vmlinuz --memory 64MiB >/dev/null && s=$(date +%s) && martlet vm start nokvm --timeout 60 2>&1; echo \"status=$? seconds=$(( $(date +%s) - s ))\""
            ) { result in
                let seconds = result.output.split(separator: "seconds=").last.flatMap { Int($0) } ?? 99
                return result.output.contains("status=1") && seconds < 30
                    && result.output.contains("/dev/kvm does not exist")
                    && result.output.contains("Enable virtualization")
            }
            checks.check("the unit failed, no retries", "systemctl is-failed martlet-vm@nokvm.service; journalctl -u martlet-vm@nokvm.service -o cat | grep -c 'martlet-vmm: /dev/kvm does not exist'") {
                $0.output == "failed\n1"
            }
        }
        checks.check("KVM back", "martlet vm delete nokvm; modprobe kvm_amd 2>/dev/null || modprobe kvm_intel; test -c /dev/kvm") {
            $0.status == 0
        }
        scenario.mark("vm-without-kvm")
    }

    // MARK: - Commands

    /// Waits until `text` is on the VM's console and prints the console so far.
    func consoleCommand(_ text: String) -> String {
        switch interface {
        case .cli:
            return "martlet vm console \(Self.vm) --expect '\(text)' --timeout 400"
        case .api:
            // The API serves the console's last 64 KiB; poll it like a web UI would.
            let get = Self.api("GET", "/v1/vms/\(Self.vm)/console", expect: 200)
            return "for i in $(seq 200); do out=$(\(get)); case \"$out\" in *'\(text)'*) echo \"$out\"; exit 0;; esac; sleep 2; done; echo \"$out\"; exit 1"
        }
    }

    /// A curl call to the REST API over HTTPS with the lane's token (the certificate checked
    /// against the host's own) that prints the body and exits 0 only for the `expect`ed HTTP
    /// status.
    static func api(_ method: String, _ path: String, _ body: String? = nil, expect: Int) -> String {
        var command = "curl -sS --cacert /etc/martlet/tls/cert.pem -H \"Authorization: Bearer $(cat /root/e2e-api.token)\" -X \(method) -o /tmp/api.out -w '%{http_code}'"
        if let body {
            command += " -H 'Content-Type: application/json' --data-raw '\(body)'"
        }
        return "code=$(\(command) 'https://127.0.0.1:8443\(path)'); cat /tmp/api.out; echo; test \"$code\" = \(expect)"
    }

    /// Prints `cgroup-limits-ok` when the running VM's VMM sits in its own cgroup `vmm-NAME`
    /// with memory.max = guest RAM + 64 MiB, pids.max = vCPUs + 32 and cpu.max = vCPUs + 1
    /// CPUs (the runner's VMCgroup), else what it found.
    static func cgroupLimits(vm: String, memoryMiB: Int, vcpus: Int) -> String {
        "pid=$(pgrep -P \"$(systemctl show -p MainPID --value martlet-vm@\(vm).service)\" -x martlet-vmm); "
            + "cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/$pid/cgroup); "
            + "found=\"${cg##*/} $(cat $cg/memory.max) $(cat $cg/pids.max) $(cat $cg/cpu.max)\"; "
            + "if [ \"$found\" = \"vmm-\(vm) \((memoryMiB + 64) << 20) \(vcpus + 32) \((vcpus + 1) * 100_000) 100000\" ]; "
            + "then echo cgroup-limits-ok; else echo \"pid $pid cgroup $cg: $found\"; fi"
    }

    /// Packs /var/lib/martlet/kernels/e2e-{vmlinuz,initrd.gz} from the running kernel.
    static let makeGuestScript = #"""
        set -e
        k=$(uname -r); m=/lib/modules/$k/kernel
        d=$(mktemp -d); mkdir -p $d/bin $d/modules $d/proc $d/sys $d/dev
        cp /usr/bin/busybox $d/bin/busybox
        for f in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio drivers/block/virtio_blk net/core/failover drivers/net/net_failover drivers/net/virtio_net drivers/acpi/button; do cp $m/$f.ko $d/modules/; done
        cat > $d/init <<'INIT'
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
        for x in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net button; do
            insmod /modules/$x.ko || echo "E2E-GUEST: insmod $x failed"
        done
        arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
        i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
        n=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -dc 0-9); n=$((${n:-0}+1))
        echo "boot=$n" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null
        echo "E2E-GUEST-BOOT $n cpus=$(cat /sys/devices/system/cpu/online) mac=$(cat /sys/class/net/eth0/address)"
        ip addr add $(arg e2e.ip) dev eth0 && ip link set eth0 up
        ping -c 3 -W 3 $(arg e2e.ping) >/dev/null 2>&1 && echo "E2E-GUEST-PING ok" || echo "E2E-GUEST-PING failed"
        before=$(grep acpi /proc/interrupts)
        echo "E2E-GUEST-READY $n"
        while [ "$(grep acpi /proc/interrupts)" = "$before" ]; do sleep 0.2; done
        echo "E2E-GUEST-POWER-BUTTON $n"
        sync; poweroff -f
        INIT
        chmod 755 $d/init
        mkdir -p /var/lib/martlet/kernels
        (cd $d && find . | cpio -o -H newc --quiet | gzip -1) > /var/lib/martlet/kernels/e2e-initrd.gz
        cp /boot/vmlinuz-$k /var/lib/martlet/kernels/e2e-vmlinuz
        rm -rf $d
        ls -l /var/lib/martlet/kernels
        """#
}
