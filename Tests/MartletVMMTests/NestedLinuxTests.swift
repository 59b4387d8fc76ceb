import Foundation
import MartletSystem
import MartletTestSupport
import Testing

@testable import MartletVMM

/// Debian's stock kernel booted by martlet-vmm, for real: these machines' /dev/kvm cannot run
/// it directly (DESIGN.md, Facts), so an outer QEMU/TCG (`-cpu max`, kvm-amd loaded) runs the
/// static release martlet-vmm, which boots the same kernel with a busybox initramfs that loads
/// the virtio modules, mounts the ext4 virtio-blk disk the test made, reads the host's file,
/// writes one back, and pings the outer system through virtio-net and a tap — on vhost-net,
/// which the outer system's kernel has (this machine's has not). A second, network-only run
/// with vhost_net unloaded downloads the same file over the userspace engine, for a
/// throughput line of each engine.
@Suite(.serialized)
struct NestedLinuxTests {
    static let available = NestedKVM.available

    static let innerModules = [
        "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_mmio", "drivers/block/virtio_blk",
        "net/core/failover", "drivers/net/net_failover", "drivers/net/virtio_net",
        "lib/crc16", "fs/mbcache", "fs/jbd2/jbd2", "crypto/crc32c_generic", "fs/ext4/ext4", "drivers/acpi/button",
    ]

    /// The inner VM's vCPUs, in this test and in NestedFirmwareTests; the outer QEMU gets as many.
    static let innerVCPUs = 2

    static let innerInit = """
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mount -t proc proc /proc
        mount -t sysfs sys /sys
        mount -t devtmpfs dev /dev
        echo MARTLET-INNER-INIT
        # Download and upload times from /proc/uptime (centiseconds): busybox's date has no %N.
        bench() {
            start=$(cut -d' ' -f1 /proc/uptime | tr -d .)
            if wget -q -O /dev/null http://10.77.0.1:8080/blob; then
                end=$(cut -d' ' -f1 /proc/uptime | tr -d .)
                echo "INNER-BENCH: 2097152 bytes in $(( (end - start) * 10 )) ms"
            else
                echo "INNER-BENCH: download failed"
            fi
            start=$(cut -d' ' -f1 /proc/uptime | tr -d .)
            if dd if=/dev/zero bs=65536 count=32 2>/dev/null | timeout 300 nc 10.77.0.1 5001; then
                end=$(cut -d' ' -f1 /proc/uptime | tr -d .)
                echo "INNER-UPLOAD: 2097152 bytes in $(( (end - start) * 10 )) ms"
            else
                echo "INNER-UPLOAD: failed"
            fi
        }
        # Two queue pairs (martlet.mq): the driver must take VIRTIO_NET_F_MQ and set two pairs
        # over the control queue; a ping from each vCPU leaves through that vCPU's pair (XPS).
        if grep -q martlet.mq /proc/cmdline; then
            for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net; do
                insmod /modules/$m.ko || echo "INNER: insmod $m failed"
            done
            echo "INNER-MQ-QUEUES: $(ls /sys/class/net/eth0/queues | tr '\\n' ' ')"
            ip addr add 10.78.0.2/24 dev eth0 && ip link set eth0 up
            for mask in 1 2; do
                taskset $mask ping -c 2 -W 10 10.78.0.1 >/dev/null 2>&1 && echo "INNER-MQ-PING-CPUMASK-$mask: ok" || echo "INNER-MQ-PING-CPUMASK-$mask: failed"
            done
            echo "INNER-MQ-SET-FAILURES: $(dmesg | grep -c 'Fail to set num of queue pairs')"
            insmod /modules/button.ko || echo "INNER: insmod button failed"
            before=$(grep acpi /proc/interrupts)
            echo INNER-MQ-DONE
            i=0
            while [ "$(grep acpi /proc/interrupts)" = "$before" ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
            poweroff -f
        fi
        if grep -q martlet.bench /proc/cmdline; then
            for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net; do
                insmod /modules/$m.ko || echo "INNER: insmod $m failed"
            done
            ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up
            ping -c 1 -W 5 10.77.0.1 >/dev/null 2>&1
            # Up to the power button, so the outer system can ask the VMM for info first.
            insmod /modules/button.ko || echo "INNER: insmod button failed"
            before=$(grep acpi /proc/interrupts)
            bench
            i=0
            while [ "$(grep acpi /proc/interrupts)" = "$before" ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
            poweroff -f
        fi
        echo "INNER-CPUS: $(cat /sys/devices/system/cpu/online)"
        for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net crc16 mbcache jbd2 crc32c_generic ext4; do
            insmod /modules/$m.ko || echo "INNER: insmod $m failed"
        done
        i=0
        while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
        mkdir -p /mnt
        mount -t ext4 /dev/vda /mnt && echo "INNER-FILE: $(cat /mnt/hello.txt)"
        echo "reply from the inner guest" > /mnt/reply.txt
        umount /mnt
        echo "written by the inner guest" | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
        sync
        ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up
        ping -c 3 -W 10 10.77.0.1 >/dev/null 2>&1 && echo "INNER-PING: ok" || echo "INNER-PING: failed"
        bench
        echo MARTLET-INNER-DONE
        insmod /modules/button.ko || echo "INNER: insmod button failed"
        before=$(grep acpi /proc/interrupts)
        echo INNER-WAITING
        i=0
        while [ "$(grep acpi /proc/interrupts)" = "$before" ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
        echo "INNER-POWER-BUTTON: $(grep acpi /proc/interrupts | tr -s ' ')"
        poweroff -f

        """

    static let outerInit = """
        #!/bin/busybox sh
        /bin/busybox --install -s /bin
        mount -t proc proc /proc
        mount -t sysfs sys /sys
        mount -t devtmpfs dev /dev
        for m in irqbypass ccp kvm kvm-amd tun tap vhost_iotlb vhost vhost_net; do insmod /modules/$m.ko || echo "OUTER: insmod $m failed"; done
        [ -c /dev/kvm ] || echo "OUTER: no /dev/kvm"
        [ -c /dev/vhost-net ] || echo "OUTER: no /dev/vhost-net"
        # A VMM that stops answering is a finding, not a hang of the whole test: the control
        # client gets 30 s, and `reap` waits at most $2 s for the VMM to end, then prints the
        # state, kernel wait channel and stack of each of its threads and kills it.
        ctl() { timeout 30 /martlet-vmm control "$@" || echo "no answer from martlet-vmm control $* ($?)"; }
        # Limits by the outer clock, not by rounds: each round forks under TCG, and on a starved
        # machine 400 rounds took far longer than 400 s.
        now() { cut -d. -f1 /proc/uptime; }
        wait_for() {
            end=$(( $(now) + $3 ))
            while ! grep -q "$2" "$1" 2>/dev/null && [ $(now) -lt $end ]; do sleep 1; done
        }
        reap() {
            end=$(( $(now) + $2 ))
            while kill -0 $1 2>/dev/null && [ $(now) -lt $end ]; do sleep 1; done
            if kill -0 $1 2>/dev/null; then
                echo "OUTER-STUCK: martlet-vmm $1 still runs after $2 s"
                for t in /proc/$1/task/*; do
                    echo "OUTER-STUCK: thread ${t##*/} $(tr -d '\\n' < $t/comm) state $(cut -d' ' -f3 $t/stat) wchan $(cat $t/wchan)"
                    head -n 6 $t/stack 2>/dev/null | sed 's/^/OUTER-STUCK:   /'
                done
                kill -9 $1
            fi
            wait $1
        }
        tunctl -t mtap0 >/dev/null && ip addr add 10.77.0.1/24 dev mtap0 && ip link set mtap0 up
        mkdir -p /www && dd if=/dev/zero of=/www/blob bs=65536 count=32 2>/dev/null
        httpd -p 10.77.0.1:8080 -h /www
        # busybox nc half-closes at the end of its stdin, which would end the upload early.
        sleep 900 | nc -l -p 5001 > /upload &
        echo OUTER-START-VMM
        /martlet-vmm --kernel /inner/vmlinuz --initrd /inner/initrd.gz --memory 256 --vcpus \(innerVCPUs) \\
            --cmdline "console=ttyS0 panic=-1 loglevel=6 printk.time=1" --disk /disk.img,id=nested \\
            --net mtap0 --serial file:/inner.log --control-socket /vm.sock --timeout 600 &
        vmm=$!
        wait_for /inner.log INNER-WAITING 400
        echo "OUTER-INFO: $(ctl /vm.sock info)"
        echo "OUTER-SHUTDOWN: $(ctl /vm.sock shutdown)"
        reap $vmm 120
        echo "OUTER-VMM-EXIT $?"
        cat /inner.log
        echo "OUTER-DISK: $(dd if=/disk.img bs=512 skip=1 count=1 2>/dev/null | head -n 1)"
        echo "OUTER-DISK-REPLY: $(grep -a -c 'reply from the inner guest' /disk.img)"
        echo "OUTER-TAP-RX: $(cat /sys/class/net/mtap0/statistics/rx_packets)"
        echo "OUTER-UPLOADED: $(wc -c < /upload)"
        # Two queue pairs (on vhost-net here, on the userspace engine after rmmod below): the
        # VMM creates mtap1 itself, as a multi-queue tap (busybox's ip cannot make one).
        # $1: the run's name (its files), $2: its label on the console.
        mq_run() {
            /martlet-vmm --kernel /inner/vmlinuz --initrd /inner/initrd.gz --memory 256 --vcpus \(innerVCPUs) \\
                --cmdline "console=ttyS0 panic=-1 loglevel=4 martlet.mq" \\
                --net mtap1,queues=2 --serial file:/$1.log --control-socket /$1.sock --timeout 600 &
            vmm=$!
            end=$(( $(now) + 60 ))
            while [ ! -e /sys/class/net/mtap1 ] && [ $(now) -lt $end ]; do sleep 1; done
            ip addr add 10.78.0.1/24 dev mtap1 && ip link set mtap1 up
            wait_for /$1.log INNER-MQ-DONE 400
            echo "OUTER-$2-INFO: $(ctl /$1.sock info)"
            ctl /$1.sock shutdown >/dev/null
            reap $vmm 120
            echo "OUTER-$2-VMM-EXIT $?"
            grep -a INNER-MQ /$1.log | sed "s/^/OUTER-$2-/"
            grep -q INNER-MQ-DONE /$1.log || { echo "OUTER-$2-NO-DONE, the inner console's end:"; tail -c 3000 /$1.log; }
        }
        mq_run mq MQ
        sleep 900 | nc -l -p 5001 > /upload &
        rmmod vhost_net
        [ -c /dev/vhost-net ] && echo "OUTER: vhost_net is still loaded"
        /martlet-vmm --kernel /inner/vmlinuz --initrd /inner/initrd.gz --memory 256 --vcpus \(innerVCPUs) \\
            --cmdline "console=ttyS0 panic=-1 loglevel=4 martlet.bench" \\
            --net mtap0 --serial file:/bench.log --control-socket /bench.sock --timeout 600 &
        vmm=$!
        wait_for /bench.log INNER-BENCH 400
        echo "OUTER-USERSPACE-INFO: $(ctl /bench.sock info)"
        ctl /bench.sock shutdown >/dev/null
        reap $vmm 120
        echo "OUTER-USERSPACE-VMM-EXIT $?"
        grep -q INNER-BENCH /bench.log || { echo "OUTER-USERSPACE-NO-BENCH, the inner console's end:"; tail -c 3000 /bench.log; }
        echo "OUTER-USERSPACE-$(grep -a INNER-BENCH /bench.log)"
        echo "OUTER-USERSPACE-$(grep -a INNER-UPLOAD /bench.log)"
        echo "OUTER-USERSPACE-UPLOADED: $(wc -c < /upload)"
        mq_run mq-userspace MQ-USERSPACE
        poweroff -f

        """

    /// The directory holding a static release build of martlet-vmm (`make test` passes it).
    static func releaseBinary() throws -> String {
        if let bin = ProcessInfo.processInfo.environment["MARTLET_RELEASE_BIN"], FileManager.default.isExecutableFile(atPath: "\(bin)/martlet-vmm") {
            return "\(bin)/martlet-vmm"
        }
        let swift = FileManager.default.isExecutableFile(atPath: "/opt/swift/usr/bin/swift") ? "/opt/swift/usr/bin/swift" : "/usr/bin/swift"
        // A scratch path of its own: the running `swift test` holds the lock on .build.
        let flags = [
            "build", "--package-path", TestSupport.repository.path, "--scratch-path", TestSupport.repository.appendingPathComponent(".build-vmm-release").path,
            "-c", "release", "--static-swift-stdlib", "--product", "martlet-vmm",
        ]
        let build = try TestSupport.run(swift, flags, timeout: 900)
        guard build.status == 0 else { throw VMMError(.io, "release build of martlet-vmm failed: \(build.output)") }
        let path = try TestSupport.run(swift, flags + ["--show-bin-path"])
        return path.output.trimmingCharacters(in: .whitespacesAndNewlines) + "/martlet-vmm"
    }

    /// Boots the outer machine: QEMU/TCG (`-cpu max`, so kvm-amd loads) with Debian's kernel
    /// and `initrd`, its console in `log`. Returns QEMU's exit status, the seconds it ran and
    /// the console text. The outer machine has `innerVCPUs` vCPUs.
    /// How the outer kernel dies of QEMU's TCG rather than of anything under test: TCG takes
    /// an interrupt right after a #VMEXIT, while the outer kernel still has the inner guest's
    /// GS base ("stack guard page was hit" in __svm_vcpu_run, then a panic), or a vCPU of the
    /// outer machine stops for good (a soft lockup that goes on for minutes). Seen under QEMU's
    /// own process as well as martlet-vmm's (scripts/bench-nested).
    static func outerDeath(_ serial: String) -> String? {
        let death = serial.split(whereSeparator: \.isNewline).first { line in
            if line.contains("stack guard page was hit") || line.contains("Kernel panic - not syncing") { return true }
            guard let range = line.range(of: "soft lockup - CPU#"), let seconds = line[range.upperBound...].split(separator: " ").dropFirst(3).first else { return false }
            return Int(seconds.prefix { $0.isNumber }) ?? 0 >= 120  // "130s!"
        }
        return death.map(String.init)
    }

    @Test func anOuterKernelDeathIsToldFromTheConsole() {
        #expect(Self.outerDeath("OUTER-RUN\r\n[   48.85] BUG: TASK stack guard page was hit at 00000000fa10ead8\r\n")?.contains("stack guard page") == true)
        #expect(Self.outerDeath("[   70.26] Kernel panic - not syncing: corrupted stack end detected inside scheduler\n") != nil)
        #expect(Self.outerDeath("[   64.78] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [martlet-vmm:111]\n") == nil, "a short stall may pass")
        #expect(Self.outerDeath("[  176.78] watchdog: BUG: soft lockup - CPU#0 stuck for 130s! [martlet-vmm:111]\n") != nil)
        #expect(Self.outerDeath("OUTER-START-VMM\nINNER-PING: ok\nOUTER-DONE\n") == nil)
    }

    /// Boots the outer machine and waits until it powers off, its kernel dies (`outerDeath`:
    /// QEMU is killed then) or `timeout` seconds pass (recorded as an issue).
    static func bootOuter(initrd: URL, log: URL, timeout: TimeInterval) throws -> (status: Int32, seconds: Int, serial: String, death: String?) {
        let start = Date()
        let null = try FileDescriptor.open("/dev/null", O_RDWR)
        let pid = try ChildProcess.spawn(
            ["/usr/bin/qemu-system-x86_64"] + NestedKVM.outerArguments(initrd: initrd, log: log, cpus: innerVCPUs),
            stdin: null.raw, stdout: null.raw, stderr: null.raw)
        var termination: ChildProcess.Termination?
        var death: String?
        let ended = Poll.until(timeout: timeout, interval: 1) {
            termination = ChildProcess.termination(pid)
            if termination != nil { return true }
            death = outerDeath((try? String(contentsOf: log, encoding: .utf8)) ?? "")
            return death != nil
        }
        if termination == nil {
            kill(pid, SIGKILL)
            termination = ChildProcess.wait(pid)
        }
        if !ended { Issue.record("the outer QEMU still ran after \(Int(timeout)) s; killed") }
        let status: Int32 = if case .exited(let code) = termination { code } else { -1 }
        return (status, Int(Date().timeIntervalSince(start)), (try? String(contentsOf: log, encoding: .utf8)) ?? "", death)
    }

    @Test(.enabled(if: available), .timeLimit(.minutes(30)))
    func stockDebianKernelBootsInsideNestedKVM() throws {
        let work = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: work) }
        let vmm = try Self.releaseBinary()

        let inner = work.appendingPathComponent("inner")
        try NestedKVM.install("/bin/busybox", into: inner, as: "bin/busybox")
        try NestedKVM.installModules(Self.innerModules, into: inner)
        for directory in ["proc", "sys", "dev"] { try FileManager.default.createDirectory(at: inner.appendingPathComponent(directory), withIntermediateDirectories: true) }
        try Self.innerInit.write(to: inner.appendingPathComponent("init"), atomically: true, encoding: .utf8)
        chmod(inner.appendingPathComponent("init").path, 0o755)

        let outer = work.appendingPathComponent("outer")
        try NestedKVM.install("/bin/busybox", into: outer, as: "bin/busybox")
        try NestedKVM.installModules(
            NestedKVM.kvmModules + [
                "drivers/net/tun", "drivers/net/tap", "drivers/vhost/vhost_iotlb", "drivers/vhost/vhost", "drivers/vhost/vhost_net",
            ], into: outer)
        try NestedKVM.installExecutable(vmm, into: outer, as: "martlet-vmm")
        try NestedKVM.install("\(NestedKVM.kernelDirectory)/vmlinuz", into: outer, as: "inner/vmlinuz")
        // The inner guest's disk: an ext4 image with a file from the host.
        let files = work.appendingPathComponent("disk-files")
        try FileManager.default.createDirectory(at: files, withIntermediateDirectories: true)
        try "host file for the inner guest\n".write(to: files.appendingPathComponent("hello.txt"), atomically: true, encoding: .utf8)
        let mkfs = try TestSupport.run("/sbin/mkfs.ext4", ["-q", "-F", "-d", files.path, outer.appendingPathComponent("disk.img").path, "8M"])
        try #require(mkfs.status == 0, "mkfs.ext4: \(mkfs.output)")
        try NestedKVM.packCPIO(inner, to: outer.appendingPathComponent("inner/initrd.gz"))
        for directory in ["proc", "sys", "dev", "tmp"] { try FileManager.default.createDirectory(at: outer.appendingPathComponent(directory), withIntermediateDirectories: true) }
        try Self.outerInit.write(to: outer.appendingPathComponent("init"), atomically: true, encoding: .utf8)
        chmod(outer.appendingPathComponent("init").path, 0o755)
        let outerInitrd = work.appendingPathComponent("outer.cpio.gz")
        try NestedKVM.packCPIO(outer, to: outerInitrd)

        // Every limit here is a safety net, far above a quiet run: under `make test` the
        // nested guest shares two cores with other QEMUs. One CI run saw an 8-MiB upload over
        // the userspace engine take more than 100 s and hit a 180-s VMM limit; a verification
        // run saw 226 s for the same upload and a ping (2-s wait) go unanswered. So the
        // transfers are 2 MiB (the rings still wrap many times), pings wait 10 s, and the
        // inner VMMs get 600 s. A session-12 verification run saw the userspace run's outer
        // script print nothing more after starting its VMM until the outer QEMU reached this
        // test's 1500 s: its wait counted 400 rounds of sleep+grep (each a fork under TCG, on
        // a machine running the whole unit suite), or the VMM stopped answering. The waits
        // now end by the outer clock, the control client gets 30 s and each VMM at most 120 s
        // to end after its shutdown, then its threads are printed (OUTER-STUCK) and it is
        // killed, and the inner console's end is printed when INNER-BENCH never came: such a
        // run ends with its evidence.
        var (status, seconds, serial, death) = try Self.bootOuter(initrd: outerInitrd, log: work.appendingPathComponent("serial.log"), timeout: 1500)
        if let first = death {
            // Not this test's subject: the outer machine gets one more boot, and says so.
            print("nested Linux boot: the outer kernel died after \(seconds) s (\(first)); a fault of QEMU's TCG, booting it once more")
            (status, seconds, serial, death) = try Self.bootOuter(initrd: outerInitrd, log: work.appendingPathComponent("serial-2.log"), timeout: 1500)
        }
        let excerpt = String(serial.suffix(6000))
        print("nested Linux boot: QEMU exited \(status) after \(seconds) s")
        #expect(death == nil, "the outer kernel died on the second boot as well (\(death ?? "")):\n\(excerpt)")
        // Split on every newline: the console ends its lines with CR LF, which Swift reads as
        // one Character, so split(separator: "\n") would leave such lines joined.
        let lines = serial.split(whereSeparator: \.isNewline)
        for line in lines where line.contains("INNER-") || line.contains("OUTER-") {
            print("  \(line)")
        }

        #expect(serial.contains("OUTER-START-VMM"), "the outer system did not start martlet-vmm:\n\(excerpt)")
        #expect(!serial.contains("OUTER-STUCK"), "a martlet-vmm did not end after its shutdown (its threads are above):\n\(excerpt)")
        #expect(!serial.contains("OUTER: no /dev/kvm"), "kvm-amd did not load in the outer QEMU:\n\(excerpt)")
        #expect(serial.contains("MARTLET-INNER-INIT"), "the inner Debian kernel did not reach /init:\n\(excerpt)")
        #expect(serial.contains("INNER-CPUS: 0-1"), "the inner guest did not bring up both vCPUs (INIT/SIPI):\n\(excerpt)")
        #expect(serial.contains("INNER-FILE: host file for the inner guest"), "the inner guest did not read the host's file from the ext4 virtio-blk disk:\n\(excerpt)")
        #expect(serial.contains(#""kind":"blk""#) && serial.contains(#""engine":"io_uring""#), "the disk did not run on io_uring under the outer Debian kernel:\n\(excerpt)")
        #expect(serial.contains("OUTER-DISK-REPLY: 1"), "the inner guest's file did not reach the disk image:\n\(excerpt)")
        #expect(serial.contains("OUTER-DISK: written by the inner guest"), "the inner guest's raw write did not reach the disk image:\n\(excerpt)")
        #expect(serial.contains("INNER-PING: ok"), "the inner guest got no ping replies over virtio-net:\n\(excerpt)")
        #expect(!serial.contains("OUTER-TAP-RX: 0"), "no packet from the inner guest reached the tap:\n\(excerpt)")
        #expect(!serial.contains("OUTER: no /dev/vhost-net"), "vhost_net did not load in the outer system:\n\(excerpt)")
        let info = lines.first { $0.contains("OUTER-INFO:") } ?? ""
        #expect(info.contains(#""kind":"net""#) && info.contains(#""engine":"vhost-net""#), "the NIC did not run on vhost-net: \(info)\n\(excerpt)")
        // The vhost-net run's own lines: the userspace run repeats them as OUTER-USERSPACE-….
        let vhostLines = lines.filter { !$0.contains("OUTER-USERSPACE-") }
        #expect(vhostLines.contains { $0.contains("INNER-BENCH: 2097152 bytes") }, "the download over vhost-net failed:\n\(excerpt)")
        #expect(vhostLines.contains { $0.contains("INNER-UPLOAD: 2097152 bytes") } && serial.contains("OUTER-UPLOADED: 2097152"), "the upload over vhost-net failed:\n\(excerpt)")
        let userspace = lines.first { $0.contains("OUTER-USERSPACE-INFO:") } ?? ""
        #expect(userspace.contains(#""engine":"userspace""#), "without vhost_net the NIC did not fall back to userspace: \(userspace)\n\(excerpt)")
        #expect(serial.contains("OUTER-MQ-INNER-MQ-QUEUES: rx-0 rx-1 tx-0 tx-1"), "the inner guest did not get two queue pairs:\n\(excerpt)")
        #expect(serial.contains("OUTER-MQ-INNER-MQ-SET-FAILURES: 0"), "the driver's VQ_PAIRS_SET was refused:\n\(excerpt)")
        #expect(serial.contains("OUTER-MQ-INNER-MQ-PING-CPUMASK-1: ok") && serial.contains("OUTER-MQ-INNER-MQ-PING-CPUMASK-2: ok"), "pings from each vCPU over two queue pairs failed:\n\(excerpt)")
        let multiQueue = lines.first { $0.contains("OUTER-MQ-INFO:") } ?? ""
        #expect(multiQueue.contains(#""engine":"vhost-net""#) && multiQueue.contains(#""queue_pairs":2"#), "the two-pair NIC did not run on vhost-net with both pairs: \(multiQueue)\n\(excerpt)")
        #expect(serial.contains("OUTER-MQ-VMM-EXIT 0"), "the two-pair run did not end with the guest's power-off:\n\(excerpt)")
        #expect(serial.contains("OUTER-MQ-USERSPACE-INNER-MQ-QUEUES: rx-0 rx-1 tx-0 tx-1"), "the inner guest did not get two queue pairs on the userspace engine:\n\(excerpt)")
        #expect(serial.contains("OUTER-MQ-USERSPACE-INNER-MQ-SET-FAILURES: 0"), "VQ_PAIRS_SET was refused on the userspace engine:\n\(excerpt)")
        #expect(serial.contains("OUTER-MQ-USERSPACE-INNER-MQ-PING-CPUMASK-1: ok") && serial.contains("OUTER-MQ-USERSPACE-INNER-MQ-PING-CPUMASK-2: ok"), "pings from each vCPU over two pairs failed on the userspace engine:\n\(excerpt)")
        let multiQueueUserspace = lines.first { $0.contains("OUTER-MQ-USERSPACE-INFO:") } ?? ""
        #expect(multiQueueUserspace.contains(#""engine":"userspace""#) && multiQueueUserspace.contains(#""queue_pairs":2"#), "the two-pair NIC without vhost_net: \(multiQueueUserspace)\n\(excerpt)")
        #expect(serial.contains("OUTER-MQ-USERSPACE-VMM-EXIT 0"), "the two-pair userspace run did not end with the guest's power-off:\n\(excerpt)")
        #expect(serial.contains("OUTER-USERSPACE-INNER-BENCH: 2097152 bytes"), "the download over the userspace engine failed:\n\(excerpt)")
        #expect(serial.contains("OUTER-USERSPACE-INNER-UPLOAD: 2097152 bytes") && serial.contains("OUTER-USERSPACE-UPLOADED: 2097152"), "the upload over the userspace engine failed:\n\(excerpt)")
        #expect(serial.contains("OUTER-USERSPACE-VMM-EXIT 0"), "the userspace-engine run did not end with the guest's power-off:\n\(excerpt)")
        #expect(serial.contains("OUTER-SHUTDOWN: {\"ok\":true"), "the control socket refused shutdown:\n\(excerpt)")
        #expect(serial.contains("INNER-POWER-BUTTON"), "the inner guest did not see the ACPI power button:\n\(excerpt)")
        #expect(serial.contains("OUTER-VMM-EXIT 0"), "martlet-vmm did not end with the guest's power-off:\n\(excerpt)")
    }
}
