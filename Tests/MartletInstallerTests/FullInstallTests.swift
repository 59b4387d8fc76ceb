import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletInstaller

/// A small real Debian root filesystem (GRUB, initramfs-tools, a kernel), built once with
/// mmdebstrap into a temporary name and renamed when complete, so a cold cache is safe.
/// Suites running at once share the one build of this process: each of them building it
/// into the same temporary name removed the others' half-made tree (a cold cache then failed
/// three tests at once on a fresh machine).
func testRootfs() throws -> String { try testRootfsBuild.get() }

/// Swift initialises a global once, on first use, whichever thread gets there first.
private let testRootfsBuild = Result { try buildTestRootfs() }

private func buildTestRootfs() throws -> String {
    let cache = "/var/cache/martlet/test-rootfs"
    // xkb-data: the installer checks the answer's keyboard layout against the image's list;
    // systemd-sysv: /sbin/init, for the installed disk's boot (InstalledDiskFirmwareBootTests).
    // A cache from before either was included lacks its file and is rebuilt.
    if FileManager.default.fileExists(atPath: "\(cache)/usr/sbin/grub-install"),
        FileManager.default.fileExists(atPath: "\(cache)/usr/share/X11/xkb/rules/base.lst"),
        FileManager.default.fileExists(atPath: "\(cache)/sbin/init")
    {
        return cache
    }
    let temporary = "\(cache).tmp-\(getpid())"
    try? FileManager.default.createDirectory(
        atPath: "/var/cache/martlet", withIntermediateDirectories: true)
    _ = try? sh("rm", ["-rf", "--one-file-system", temporary])
    try sh(
        "mmdebstrap",
        [
            "--quiet", "--variant=minbase",
            "--include=grub-pc-bin,grub-efi-amd64-bin,grub-common,grub2-common,initramfs-tools,"
                + "linux-image-amd64,systemd,systemd-sysv,udev,kmod,tzdata,xkb-data",
            "bookworm", temporary, "http://deb.debian.org/debian",
        ])
    _ = try? sh("rm", ["-rf", "--one-file-system", cache])
    guard rename(temporary, cache) == 0 else {
        throw MartletError.system("rename", path: temporary)
    }
    return cache
}

/// Files with every kind of metadata the copy must keep, under srv/meta of `root`.
func addMetadataTree(to root: String) throws {
    try sh(
        "sh",
        [
            "-e", "-c",
            """
            cd '\(root)'
            mkdir -p srv/meta/acl
            printf 'owned' > srv/meta/owned.txt
            chown 1234:5678 srv/meta/owned.txt && chmod 0640 srv/meta/owned.txt
            setfattr -n user.martlet -v hello srv/meta/owned.txt
            setfattr -n trusted.martlet -v secret srv/meta/owned.txt
            setfacl -m u:1234:rwx,g:5678:r-x srv/meta/acl
            setfacl -d -m u:1234:rwx srv/meta/acl
            printf 'linked' > srv/meta/a.txt && ln srv/meta/a.txt srv/meta/b.txt
            ln -s owned.txt srv/meta/link && ln -s /nonexistent srv/meta/dangling
            mknod srv/meta/char c 1 3 && mknod srv/meta/block b 7 200 && mkfifo srv/meta/fifo
            truncate -s 64M srv/meta/sparse && printf 'end' >> srv/meta/sparse
            printf '#!/bin/sh\\n' > srv/meta/setuid && chmod 4755 srv/meta/setuid
            touch -h -d '2001-02-03 04:05:06' srv/meta/link srv/meta/owned.txt srv/meta
            """,
        ])
}

/// One line per file: path, type, mode, owner, size, link target, mtime, link count.
func metadataListing(_ root: String, _ subtree: String) throws -> [String] {
    try sh("find", ["\(root)/\(subtree)", "-printf", "%P|%y|%m|%U:%G|%s|%l|%Ts|%n|%D\n"])
        .split(separator: "\n").map { line in
            // The device number differs between filesystems, and a directory's size depends on
            // how its entries were hashed in: both are not the copy's to keep.
            var fields = line.split(separator: "|", omittingEmptySubsequences: false).dropLast()
            if fields[1] == "d" { fields[4] = "-" }
            return fields.joined(separator: "|")
        }.sorted()
}

extension LoopDeviceSuites {
    @Suite("Full install onto a loop disk", .serialized)
    struct FullInstallTests {
        static let deviceMapper = Installer.deviceMapperAvailable()

        /// The install's answer: a bond of two NICs under VLAN 42, MTU 9000, and with a
        /// `server` a first-boot script fetched from it and the webhook on it too.
        func answer(
            _ disk: LoopDisk, storage: String, group: String, extra: LoopDisk? = nil,
            server: AnswerServer? = nil
        ) -> String {
            validAnswer(
                target: disk.path, wipe: true, group: group, storage: storage, swap: "512MiB"
            )
            .replacingOccurrences(
                of: "volume-group = \"\(group)\"",
                with: "volume-group = \"\(group)\""
                    + (extra.map { "\nextra-disks = [\"\($0.path)\"]" } ?? "")
            )
            .replacingOccurrences(of: "filesystem = \"ext4\"", with: "filesystem = \"xfs\"")
            .replacingOccurrences(
                of: "[network]\ninterface = \"52:54:00:12:34:56\"",
                with: "[network.bond]\ninterfaces = [\"eno1\", \"eno2\"]\nmode = \"802.3ad\"\n"
                    + "lacp-rate = \"fast\"\n[network]\nmtu = 9000")
            + (server.map { server in
                """

                [first-boot]
                script = "http://127.0.0.1:\(server.port)/first-boot.sh"
                at = "network-online"

                [post-install]
                webhook = "http://127.0.0.1:\(server.port)/installed"

                """
            } ?? "")
        }

        /// Installs with the CLI (JSON progress), then checks the disk with independent tools.
        func installAndCheck(storage: String) throws {
            let rootfs = try testRootfs()
            let work = try TemporaryDirectory()
            let source = "\(work.path)/source"
            try sh("cp", ["-a", rootfs, source])
            try addMetadataTree(to: source)
            let disk = try LoopDisk.withOldData()
            let extra = try LoopDisk(size: .gib(2))
            let group = "mtest\(UUID().uuidString.prefix(6).lowercased())"
            let script = "#!/bin/sh\necho first boot of $(hostname)\n"
            let server = try AnswerServer(directory: work.path, answer: script, certificate: nil)
            let answerFile = work.write(
                "answer.toml",
                answer(disk, storage: storage, group: group, extra: extra, server: server))
            let log = "\(work.path)/install.log"
            let result = try Command(
                TestPaths.executable("martlet-installer"),
                ["install", "--answer", answerFile, "--source", source, "--json", "--log", log]
            ).runAllowingFailure()
            try #require(result.status == 0, "\(result.stderr)")

            // Progress: every stage began and ended, in order; the copy reported bytes.
            let events = result.stdoutText.split(separator: "\n").compactMap {
                try? JSONDecoder().decode(ProgressEvent.self, from: Data($0.utf8))
            }
            #expect(events.filter { $0.kind == .end }.map(\.stage) == Installer.stageNames)
            let copyUpdates = events.filter { $0.stage == "copy" && $0.kind == .update }
            #expect(copyUpdates.last?.unit == "bytes")
            #expect((copyUpdates.last?.total ?? 0) > 500 << 20)

            // Partition table, read back with sfdisk.
            let dump = try sh("sfdisk", ["--dump", disk.path])
            let types = [
                "21686148-6449-6E6F-744E-656564454649", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
                storage == "lvm-thin"
                    ? "E6D6D379-F507-44C2-A23C-238F2A3DF928"
                    : "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            ]
            for (index, type) in types.enumerated() {
                let line =
                    dump.split(separator: "\n").first {
                        $0.hasPrefix("\(disk.partition(index + 1)) :")
                    }
                    ?? ""
                #expect(line.contains("type=\(type)"), "\(line)")
            }
            #expect(dump.contains("start=        2048, size=        2048"))
            #expect(dump.contains("name=\"esp\"") && dump.contains("name=\"root\""))

            // GRUB for BIOS: boot code in the MBR, core image in the BIOS boot partition.
            let mbr = try sh(
                "sh",
                ["-c", "dd if=\(disk.path) bs=440 count=1 status=none | grep -c -a GRUB || true"])
            #expect(mbr.trimmingCharacters(in: .whitespacesAndNewlines) == "1")
            let core = try sh(
                "sh",
                [
                    "-c",
                    "dd if=\(disk.partition(1)) bs=64k count=1 status=none | tr -d '\\0' | wc -c",
                ])
            #expect((Int(core.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) > 10_000)
            // GRUB for UEFI on the ESP, read with mtools (independent of the kernel's vfat).
            for efi in ["EFI/BOOT/BOOTX64.EFI", "EFI/martlet/grubx64.efi"] {
                let magic = try sh(
                    "sh", ["-c", "mtype -i \(disk.partition(2)) ::/\(efi) | head -c 2"])
                #expect(magic == "MZ", "\(efi)")
            }

            let mountpoint = "\(work.path)/target"
            try FileManager.default.createDirectory(
                atPath: mountpoint, withIntermediateDirectories: true)
            try sh("mount", ["-o", "ro", disk.partition(3), mountpoint])
            defer { _ = try? sh("umount", [mountpoint]) }

            // fstab names the filesystems blkid finds.
            let fstab = try String(contentsOfFile: "\(mountpoint)/etc/fstab", encoding: .utf8)
            for (number, mount) in [(3, "/"), (2, "/boot/efi"), (4, "none")] {
                let uuid = try sh(
                    "blkid", ["-p", "-s", "UUID", "-o", "value", disk.partition(number)]
                )
                .trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(!uuid.isEmpty && fstab.contains("UUID=\(uuid)\t\(mount)\t"), "\(fstab)")
            }
            // A late or missing ESP must not hold up the host's boot.
            #expect(fstab.contains("\t/boot/efi\tvfat\tumask=0077,nofail\t"), "\(fstab)")
            #expect(
                FileManager.default.fileExists(atPath: "\(mountpoint)/boot/grub/i386-pc/normal.mod")
            )
            #expect(
                FileManager.default.fileExists(
                    atPath: "\(mountpoint)/boot/grub/x86_64-efi/normal.mod"))
            let grubConfig = try String(
                contentsOfFile: "\(mountpoint)/boot/grub/grub.cfg", encoding: .utf8)
            let rootUUID = try sh("blkid", ["-p", "-s", "UUID", "-o", "value", disk.partition(3)])
                .trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(grubConfig.contains("root=UUID=\(rootUUID)"))

            // The copy kept every piece of metadata (compared with find, getfattr and getfacl).
            for subtree in ["usr", "srv", "var/lib/dpkg"] {
                let before = try metadataListing(source, subtree)
                let after = try metadataListing(mountpoint, subtree)
                #expect(
                    before.count > 10 && before == after,
                    "\(subtree): \(Array(Set(before).symmetricDifference(after)).prefix(10))")
            }
            let xattrs = { (root: String) in
                try sh(
                    "getfattr", ["--absolute-names", "-d", "-m", "-", "\(root)/srv/meta/owned.txt"])
            }
            #expect(try xattrs(mountpoint).contains("trusted.martlet=\"secret\""))
            #expect(
                try xattrs(mountpoint).replacingOccurrences(of: mountpoint, with: "")
                    == xattrs(source).replacingOccurrences(of: source, with: ""))
            let acl = { (root: String) in
                try sh("getfacl", ["--omit-header", "\(root)/srv/meta/acl"])
            }
            #expect(try acl(mountpoint).contains("user:1234:rwx"))
            #expect(try acl(mountpoint) == acl(source))
            let inode = { (path: String) in try sh("stat", ["-c", "%i", path]) }
            #expect(
                try inode("\(mountpoint)/srv/meta/a.txt") == inode("\(mountpoint)/srv/meta/b.txt"))
            #expect(
                try sh("stat", ["-c", "%F %t:%T", "\(mountpoint)/srv/meta/block"])
                    == "block special file 7:c8\n")
            let blocks = try sh("stat", ["-c", "%b", "\(mountpoint)/srv/meta/sparse"])
                .trimmingCharacters(in: .whitespacesAndNewlines)
            #expect((Int(blocks) ?? .max) < 1024, "sparse file took \(blocks) blocks")

            // Host configuration as asked.
            func read(_ path: String) -> String {
                (try? String(contentsOfFile: "\(mountpoint)/\(path)", encoding: .utf8)) ?? ""
            }
            #expect(read("etc/hostname") == "hv1\n")
            #expect(read("etc/hosts").contains("127.0.1.1\thv1.example.org hv1"))
            #expect(read("etc/machine-id").isEmpty)
            #expect(read("etc/timezone") == "Europe/Paris\n")
            #expect(
                try FileManager.default.destinationOfSymbolicLink(
                    atPath: "\(mountpoint)/etc/localtime")
                    == "/usr/share/zoneinfo/Europe/Paris")
            #expect(read("etc/default/keyboard").contains("XKBLAYOUT=\"de\""))
            #expect(
                read("root/.ssh/authorized_keys").hasPrefix(
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy"))
            let shadowRoot =
                read("etc/shadow").split(separator: "\n").first { $0.hasPrefix("root:") } ?? ""
            let hash = shadowRoot.split(separator: ":", omittingEmptySubsequences: false)[1]
            #expect(hash.hasPrefix("$") && !shadowRoot.contains("s3cret"))
            for (index, name) in ["eno1", "eno2"].enumerated() {
                #expect(
                    read("etc/systemd/network/20-martlet-bond0-port\(index + 1).network").contains(
                        "[Match]\nName=\(name)\n\n[Link]\nMTUBytes=9000\n\n[Network]\nBond=bond0\n"))
            }
            #expect(read("etc/systemd/network/12-martlet-bond0.netdev").contains("Mode=802.3ad\nLACPTransmitRate=fast"))
            #expect(read("etc/systemd/network/22-martlet-bond0.network").contains("VLAN=vlan42"))
            #expect(!FileManager.default.fileExists(atPath: "\(mountpoint)/etc/systemd/network/20-martlet-uplink.network"))
            #expect(read(String(FirstBootHook.scriptPath.dropFirst())) == script)
            #expect(read("etc/systemd/system/\(FirstBootHook.unitName)") == FirstBootHook.unit(at: .networkOnline))
            #expect(
                (try? FileManager.default.destinationOfSymbolicLink(
                    atPath: "\(mountpoint)/etc/systemd/system/multi-user.target.wants/\(FirstBootHook.unitName)"))
                    == "/etc/systemd/system/\(FirstBootHook.unitName)")
            let report = try JSONDecoder().decode(
                InstallReport.self, from: Data(contentsOf: URL(fileURLWithPath: server.received)))
            #expect(report.result == "installed" && report.error == nil && report.target == disk.path)
            #expect(report.hostname == "hv1.example.org" && report.seconds > 0)
            #expect(
                read("etc/systemd/network/30-martlet-br0.network").contains("Address=192.0.2.10/24")
            )
            #expect(
                FileManager.default.fileExists(
                    atPath:
                        "\(mountpoint)/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
                ))
            #expect(read("var/log/martlet/install.log").contains("stage initramfs started"))
            let pools = try StorageConfiguration.load(
                path: "\(mountpoint)/etc/martlet/storage.toml"
            ).pools
            if storage == "lvm-thin" {
                #expect(pools.first?.type == .lvmThin, "\(pools)")
                #expect(pools.first?.volumeGroup == group && pools.first?.thinPool == "data")
                for name in [group, "\(group)-extra1"] {
                    let lvs = try sh("lvs", ["--noheadings", "-o", "lv_name,segtype", name])
                    #expect(lvs.contains("data") && lvs.contains("thin-pool"), "\(lvs)")
                }
                #expect(pools.contains { $0.volumeGroup == "\(group)-extra1" }, "\(pools)")
            } else {
                #expect(pools.first?.type == .directory, "\(pools)")
                #expect(pools.first?.path == "/var/lib/martlet/storage")
                #expect(
                    try sh("blkid", ["-p", "-s", "TYPE", "-o", "value", disk.partition(5)])
                        == "xfs\n")
                #expect(fstab.contains("/var/lib/martlet/storage\txfs"))
                #expect(
                    try sh("blkid", ["-p", "-s", "TYPE", "-o", "value", extra.partition(1)])
                        == "xfs\n")
                let extraUUID = try sh(
                    "blkid", ["-p", "-s", "UUID", "-o", "value", extra.partition(1)]
                )
                .trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(fstab.contains("UUID=\(extraUUID)\t/var/lib/martlet/storage-extra1\txfs"))
                #expect(
                    pools.contains {
                        $0.name == "extra1" && $0.type == .directory
                            && $0.path == "/var/lib/martlet/storage-extra1"
                    }, "\(pools)")
            }
        }

        @Test("full install with a directory pool on xfs, checked with independent tools")
        func directoryPool() throws {
            try installAndCheck(storage: "directory")
        }

        @Test(
            "full install with the LVM thin pool",
            .enabled(if: deviceMapper, "needs device-mapper in the kernel"))
        func thinPool() throws {
            try installAndCheck(storage: "lvm-thin")
        }

        @Test("a first-boot script that is not there stops the install before the disk is touched")
        func missingFirstBootScript() throws {
            let work = try TemporaryDirectory()
            let disk = try LoopDisk(size: .gib(8))
            let before = try fingerprint(disk.path, size: .gib(8))
            let file = work.write(
                "a.toml",
                answer(disk, storage: "directory", group: "mtestnohook")
                    + "\n[first-boot]\nscript = \"/hooks/not-on-the-medium.sh\"\n")
            let (status, _, err) = try installer([
                "install", "--answer", file, "--source", try testRootfs(),
            ])
            #expect(status == 3)
            #expect(err.contains("first-boot.script: '/hooks/not-on-the-medium.sh' is not on the boot medium"), "\(err)")
            #expect(try fingerprint(disk.path, size: .gib(8)) == before)
        }

        @Test(
            "without device-mapper an lvm-thin install is refused before the disk is touched",
            .enabled(if: !deviceMapper, "device-mapper is available here"))
        func thinPoolWithoutDeviceMapper() throws {
            let work = try TemporaryDirectory()
            let disk = try LoopDisk(size: .gib(8))
            let before = try fingerprint(disk.path, size: .gib(8))
            let file = work.write("a.toml", answer(disk, storage: "lvm-thin", group: "mtestnodm"))
            let (status, _, err) = try installer([
                "install", "--answer", file, "--source", try testRootfs(),
            ])
            #expect(status == 4)
            #expect(err.contains("device-mapper"), "\(err)")
            #expect(try fingerprint(disk.path, size: .gib(8)) == before)
        }
    }
}
