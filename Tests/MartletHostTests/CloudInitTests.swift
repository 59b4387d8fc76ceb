import Foundation
import MartletCore
import MartletSystem
import Testing

@testable import MartletHost

/// The `[cloud-init]` table (parsing, validation, writing back) and the NoCloud seed image:
/// written with libarchive, read back with xorriso and probed with a real blkid.
@Suite struct CloudInitTests {
    let root: String
    /// A real key from ssh-keygen (openssh-client), and its private half.
    let publicKey: String
    let privateKeyFile: String

    init() throws {
        root = try TestSupport.temporaryDirectory("cloudinit")
        privateKeyFile = root + "/id_ed25519"
        try Command(
            "ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", privateKeyFile]
        ).run()
        publicKey = try String(contentsOfFile: privateKeyFile + ".pub", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: root) }

    func parse(_ text: String) throws -> VMDefinition {
        try VMDefinition(path: "/etc/martlet/vms/web.toml", contents: text)
    }

    func failure(_ text: String) -> String {
        do {
            _ = try parse(text)
            return "parsed"
        } catch {
            return "\(error)"
        }
    }

    static let base = """
        [boot]
        kernel = "/vmlinuz"

        [[nic]]
        bridge = "br0"
        mac = "02:4d:4c:00:00:01"

        """

    @Test func tableRoundTrips() throws {
        defer { cleanUp() }
        let definition = try parse(
            Self.base + """
                [cloud-init]
                hostname = "web.example.org"
                ssh-keys = ["\(publicKey)"]
                ip = "192.0.2.10/24"
                gateway = "192.0.2.1"
                dns = ["192.0.2.53", "2001:db8::53"]
                """)
        let cloudInit = try #require(definition.cloudInit)
        #expect(cloudInit.hostname == "web.example.org")
        #expect(cloudInit.sshKeys == [publicKey])
        #expect(cloudInit.dns == ["192.0.2.53", "2001:db8::53"])
        #expect(try parse(definition.toml) == definition)
        // Without the table: no seed, and the file has no [cloud-init].
        let plain = try parse(Self.base)
        #expect(plain.cloudInit == nil)
        #expect(!plain.toml.contains("cloud-init"))
        #expect(try CloudInitSeed(plain) == nil)
    }

    @Test func badValuesNameTheKey() throws {
        defer { cleanUp() }
        let cases: [(String, String)] = [
            ("hostname = \"-web\"", "cloud-init.hostname"),
            ("hostname = \"we b\"", "not a valid host name"),
            ("ssh-keys = [\"ssh-ed25519 bm90IGEga2V5\"]", "is not a 'ssh-ed25519' key"),
            ("ssh-keys = [\"ssh-foo AAAA\"]", "is not a key type"),
            ("ssh-keys = [\"AAAAC3NzaC1lZDI1NTE5\"]", "expected TYPE BASE64"),
            ("ip = \"192.0.2.10\"", "is not ADDRESS/PREFIX"),
            ("ip = \"192.0.2.10/33\"", "is not ADDRESS/PREFIX"),
            ("gateway = \"192.0.2.1\"", "a gateway needs a static address"),
            ("ip = \"192.0.2.10/24\"\ngateway = \"router\"", "is not an IP address"),
            ("dns = [\"1.2.3\"]", "cloud-init.dns"),
            ("user-data = \"relative.yaml\"", "not an absolute path"),
            ("hostnme = \"web\"", "hostnme"),
        ]
        for (line, expected) in cases {
            let message = failure(Self.base + "[cloud-init]\n" + line + "\n")
            #expect(message.contains(expected), "\(line): \(message)")
            #expect(message.contains("web.toml"), "\(line): \(message)")
        }
        // A static address needs a NIC to put it on.
        let noNIC = failure("[boot]\nkernel = \"/vmlinuz\"\n[cloud-init]\nip = \"192.0.2.10/24\"\n")
        #expect(noNIC.contains("needs a NIC"), "\(noNIC)")

        // The user-data file is checked with the other files a definition names: missing,
        // oversized. A definition whose file went away still parses (vm list keeps working).
        let big = root + "/big.yaml"
        try Data(repeating: 0x23, count: VMDefinition.CloudInit.maxUserDataBytes + 1).write(
            to: URL(fileURLWithPath: big))
        let host = VMHost(paths: HostPaths(vmsDirectory: root, storageConfiguration: root + "/none"))
        for (file, expected) in [(big, "more than 256 KiB"), (root + "/missing", "does not exist")] {
            let definition = try parse(
                "[boot]\nkernel = \"\(big)\"\n[cloud-init]\nuser-data = \"\(file)\"\n")
            do {
                try host.checkReferences(definition)
                Issue.record("user-data '\(file)' was accepted")
            } catch let error as MartletError {
                #expect(error.message.contains("cloud-init.user-data"), "\(error.message)")
                #expect(error.message.contains(expected), "\(error.message)")
            }
        }
    }

    @Test func keyFiles() throws {
        defer { cleanUp() }
        #expect(try VMDefinition.CloudInit.readKeys(file: privateKeyFile + ".pub") == [publicKey])
        // Two keys and a comment in one file.
        let file = root + "/keys"
        try "# mine\n\(publicKey)\n\n\(publicKey) second\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        #expect(try VMDefinition.CloudInit.readKeys(file: file).count == 2)
        // The private key is not a public key.
        do {
            _ = try VMDefinition.CloudInit.readKeys(file: privateKeyFile)
            Issue.record("a private key file was taken as public keys")
        } catch let error as MartletError {
            #expect(error.code == .invalidInput)
            #expect(error.message.contains(privateKeyFile), "\(error.message)")
        }
    }

    /// The REST API's JSON takes the same table, checked the same way.
    @Test func apiRequest() throws {
        defer { cleanUp() }
        func definition(_ cloudInit: String) throws -> VMDefinition {
            let body = #"{"kernel": "/k", "nics": [{}], "cloudInit": "# + cloudInit + "}"
            return try JSONDecoder().decode(APIServer.VMRequest.self, from: Data(body.utf8))
                .definition(name: "api")
        }
        let keyJSON = String(decoding: try JSONEncoder().encode([publicKey]), as: UTF8.self)
        let parsed = try definition(#"{"sshKeys": "# + keyJSON + #", "ip": "192.0.2.10/24"}"#)
        #expect(parsed.cloudInit == .init(sshKeys: [publicKey], ip: "192.0.2.10/24"))
        #expect(try definition("{}").cloudInit == .init())
        do {
            _ = try definition(#"{"hostname": "-x"}"#)
            Issue.record("a bad host name was accepted")
        } catch let error as MartletError {
            #expect(error.message.contains("cloud-init.hostname"), "\(error.message)")
        }
    }

    /// Every file of a seed image as xorriso extracts it (Rock Ridge names).
    func extract(_ image: String) throws -> [String: String] {
        let directory = root + "/extracted-\(UUID().uuidString.prefix(6))"
        try Command(
            "xorriso", ["-indev", image, "-osirrox", "on", "-extract", "/", directory]
        ).run()
        var files: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
            files[name] = try String(contentsOfFile: directory + "/" + name, encoding: .utf8)
        }
        return files
    }

    @Test func seedImage() throws {
        defer { cleanUp() }
        let definition = try parse(
            Self.base + """
                [cloud-init]
                ssh-keys = ["\(publicKey)"]
                ip = "192.0.2.10/24"
                gateway = "192.0.2.1"
                dns = ["192.0.2.53"]
                """)
        let seed = try #require(try CloudInitSeed(definition))
        let image = root + "/cidata.iso"
        try seed.write(to: image)
        var info = stat()
        #expect(stat(image, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o644)

        // What cloud-init's NoCloud source looks for: blkid sees an iso9660 labelled cidata.
        let probe = try Command("blkid", ["-p", "-o", "export", image]).run().stdoutText
        #expect(probe.contains("LABEL=cidata"), "\(probe)")
        #expect(probe.contains("TYPE=iso9660"), "\(probe)")
        // Joliet and Rock Ridge both carry the names as they are; plain ISO 9660 cannot.
        func names(_ tree: String) throws -> String {
            try Command("xorriso", ["-read_fs", tree, "-indev", image, "-ls", "/"]).run().stdoutText
        }
        #expect(try names("norock").contains("'meta-data'"), "Joliet")
        #expect(try names("nojoliet").contains("'meta-data'"), "Rock Ridge")
        #expect(try !names("ecma119").contains("'meta-data'"))

        let files = try extract(image)
        #expect(files.keys.sorted() == ["meta-data", "network-config", "user-data"])
        #expect(files["meta-data"]?.contains("instance-id: \"martlet-web\"") == true)
        #expect(files["meta-data"]?.contains("local-hostname: \"web\"") == true)
        #expect(files["meta-data"]?.contains("  - \"\(publicKey)\"") == true)
        let userData = try #require(files["user-data"])
        #expect(userData.hasPrefix("#cloud-config\n"))
        #expect(userData.contains("hostname: \"web\""))
        #expect(userData.contains("ssh_authorized_keys:\n  - \"\(publicKey)\""))
        #expect(
            files["network-config"] == """
                version: 2
                ethernets:
                  eth0:
                    match:
                      macaddress: "02:4d:4c:00:00:01"
                    set-name: "eth0"
                    addresses:
                      - "192.0.2.10/24"
                    routes:
                      - to: "0.0.0.0/0"
                        via: "192.0.2.1"
                    nameservers:
                      addresses:
                        - "192.0.2.53"

                """)

        // Rewritten when the definition changes: DHCP, the user's own user-data, a new name.
        let userFile = root + "/user-data.yaml"
        try "#cloud-config\npackages: [htop]\n".write(
            toFile: userFile, atomically: true, encoding: .utf8)
        var changed = definition
        changed.cloudInit = .init(hostname: "other", userData: userFile)
        try changed.validate()
        try #require(try CloudInitSeed(changed)).write(to: image)
        let rewritten = try extract(image)
        #expect(rewritten["user-data"] == "#cloud-config\npackages: [htop]\n")
        #expect(rewritten["meta-data"]?.contains("local-hostname: \"other\"") == true)
        #expect(rewritten["meta-data"]?.contains("instance-id: \"martlet-web\"") == true)
        #expect(rewritten["network-config"]?.contains("    dhcp4: true") == true)
        #expect(!FileManager.default.fileExists(atPath: image + ".tmp"))

        // A path holding something else is refused, never replaced.
        let occupied = root + "/occupied.iso"
        try FileManager.default.createDirectory(atPath: occupied, withIntermediateDirectories: false)
        #expect(throws: MartletError.self) { try seed.write(to: occupied) }
    }

    @Test func seedDiskComesLastAndReadOnly() throws {
        defer { cleanUp() }
        let paths = HostPaths(
            vmsDirectory: root + "/vms", storageConfiguration: root + "/storage.toml",
            runDirectory: root + "/run")
        var definition = try parse(Self.base + "[cloud-init]\n")
        let config = try VMHost(paths: paths).vmmConfiguration(definition)
        let seedDisk = try #require(config.disks.last)
        #expect(seedDisk.path == paths.cloudInitSeed("web"))
        #expect(seedDisk.readOnly)
        #expect(seedDisk.id == "cidata")
        definition.cloudInit = nil
        #expect(try VMHost(paths: paths).vmmConfiguration(definition).disks.isEmpty)
    }

    /// Through the CLI and a real runner and VMM (the tiny test guest): `vm create
    /// --cloud-init` keeps the key, `vm start` writes the seed and attaches it read-only, a
    /// changed definition gives a rewritten seed at the next start.
    @Test(.timeLimit(.minutes(30))) func runnerWritesAndAttachesTheSeed() throws {
        defer { cleanUp() }
        let guest = try TestSupport.guest.get()
        let fixture = try HostFixture(label: "ci-run")
        let martlet = VMLifecycleTests.CLI(fixture: fixture, namespace: nil)
        let keyFile = privateKeyFile + ".pub"

        #expect(
            try martlet("vm", "create", "ci", "--kernel", guest, "--ssh-key", keyFile).status
                == MartletError.Code.invalidInput.exitStatus)
        let privateKey = try martlet(
            "vm", "create", "ci", "--kernel", guest, "--cloud-init", "--ssh-key", privateKeyFile)
        #expect(privateKey.status == MartletError.Code.invalidInput.exitStatus)
        #expect(privateKey.stderr.contains("not an SSH public key"), "\(privateKey.stderr)")

        _ = try martlet.json(
            "vm", "create", "ci", "--kernel", guest, "--cmdline", "test=halt", "--memory", "16MiB",
            "--cloud-init", "--ssh-key", keyFile, "--hostname", "ci-host")
        let definition = try fixture.host.definition("ci")
        #expect(definition.cloudInit == .init(hostname: "ci-host", sshKeys: [publicKey]))

        let seed = fixture.paths.cloudInitSeed("ci")
        _ = try martlet.json("vm", "start", "ci")
        let probe = try Command("blkid", ["-p", "-o", "export", seed]).run().stdoutText
        #expect(probe.contains("LABEL=cidata"), "\(probe)")
        let config = try String(contentsOfFile: fixture.paths.vmmConfig("ci"), encoding: .utf8)
        #expect(
            config.contains("{\"path\":\"\(seed)\",\"read_only\":true,\"id\":\"cidata\",\"cache\":\"writeback\"}"),
            "\(config)")
        #expect(try extract(seed)["meta-data"]?.contains("local-hostname: \"ci-host\"") == true)
        _ = try martlet.json("vm", "stop", "ci")

        var changed = definition
        changed.cloudInit?.hostname = "renamed"
        try fixture.host.replace(changed)
        _ = try martlet.json("vm", "start", "ci")
        #expect(try extract(seed)["meta-data"]?.contains("local-hostname: \"renamed\"") == true)
        _ = try martlet.json("vm", "stop", "ci")
        _ = try martlet.json("vm", "delete", "ci")
    }
}

/// The seed's files as cloud-init itself reads them (Debian's `cloud-init` package, which
/// scripts/setup installs disabled): the generated user-data passes `cloud-init schema`,
/// network-config renders through `cloud-init devel net-convert`, meta-data loads as the
/// YAML mapping NoCloud expects (PyYAML, cloud-init's own parser).
@Suite(
    .enabled(
        if: ChildProcess.find("cloud-init") != nil,
        "cloud-init is not installed: scripts/setup installs it (disabled at boot)"))
struct CloudInitToolTests {
    let root: String

    init() throws { root = try TestSupport.temporaryDirectory("cloudinit-tool") }

    func write(_ name: String, _ text: String) throws -> String {
        let path = root + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The systemd-networkd files `net-convert` renders from a network-config.
    func networkd(_ networkConfig: String) throws -> String {
        let input = try write("network-config-\(UUID().uuidString.prefix(6))", networkConfig)
        let output = input + ".out"
        try Command(
            "cloud-init",
            ["devel", "net-convert", "-p", input, "-k", "yaml", "-d", output, "-D", "debian",
             "-O", "networkd"]
        ).run()
        let directory = output + "/etc/systemd/network"
        return try FileManager.default.contentsOfDirectory(atPath: directory).sorted().map {
            try String(contentsOfFile: directory + "/" + $0, encoding: .utf8)
        }.joined(separator: "\n")
    }

    @Test func seedFilesAsCloudInitReadsThem() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKsmOaBEvHQ8OhzqC2C5Yb1wDlQdcJmpvO8K3/h0B4wn me@laptop"
        let definition = VMDefinition(
            name: "web", boot: .init(kernel: .path("/vmlinuz")),
            nics: [.init(mac: "02:4d:4c:00:00:01"), .init(mac: "02:4d:4c:00:00:02")],
            cloudInit: .init(
                hostname: "web.example.org", sshKeys: [key, key + " second"], ip: "192.0.2.10/24",
                gateway: "192.0.2.1", dns: ["192.0.2.53"]))
        try definition.validate()
        let seed = try #require(try CloudInitSeed(definition))

        let schema = try Command(
            "cloud-init", ["schema", "--config-file", try write("user-data", seed.userData)]
        ).run()
        #expect(schema.stdoutText.contains("Valid cloud-config"), "\(schema.stdoutText)")
        // The same check fails on a broken file: the tool really judges.
        let broken = try Command(
            "cloud-init",
            ["schema", "--config-file", try write("broken", "#cloud-config\nssh_authorized_keys: 5\n")]
        ).runAllowingFailure()
        #expect(broken.status != 0)

        let meta = try Command(
            "/usr/bin/python3",
            [
                "-c",
                "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); print(d['instance-id'], d['local-hostname'], '|'.join(d['public-keys']))",
                try write("meta-data", seed.metaData),
            ]
        ).run().stdoutText
        #expect(meta == "martlet-web web.example.org \(key)|\(key) second\n")

        let rendered = try networkd(try #require(seed.networkConfig))
        for expected in [
            "MACAddress=02:4d:4c:00:00:01", "Name=eth0", "Address=192.0.2.10/24",
            "Gateway=192.0.2.1", "DNS=192.0.2.53", "MACAddress=02:4d:4c:00:00:02", "Name=eth1",
            "DHCP=ipv4",
        ] {
            #expect(rendered.contains(expected), "\(expected) in:\n\(rendered)")
        }
    }
}
