import Foundation
import MartletCore
import MartletSystem
import Testing

@testable import MartletHost
@testable import MartletHostModel

@Suite struct VMDefinitionTests {
    func parse(_ text: String, name: String = "web") throws -> VMDefinition {
        try VMDefinition(path: "/etc/martlet/vms/\(name).toml", contents: text)
    }

    func failure(_ text: String, name: String = "web") -> String {
        do {
            _ = try parse(text, name: name)
            return "parsed"
        } catch let error as MartletError {
            return error.description
        } catch {
            return "\(error)"
        }
    }

    @Test func fullDefinition() throws {
        let definition = try parse(
            """
            vcpus = 2
            memory = "1GiB"
            autostart = true
            on-crash = "stop"

            [boot]
            kernel = "/var/lib/martlet/kernels/vmlinuz"
            initrd = "local/initrd"
            cmdline = "console=ttyS0 root=/dev/vda"

            [[disk]]
            pool = "local"
            volume = "web-root"

            [[disk]]
            pool = "local"
            volume = "web-data"
            read-only = true

            [[nic]]
            bridge = "br0"

            [[nic]]
            bridge = "br1"
            mac = "02:AA:bb:cc:dd:ee"
            queues = 4
            """)
        #expect(definition.name == "web")
        #expect(definition.vcpus == 2)
        #expect(definition.memory == .gib(1))
        #expect(definition.autostart)
        #expect(definition.onCrash == .stop)
        #expect(definition.boot.kernel == .path("/var/lib/martlet/kernels/vmlinuz"))
        #expect(definition.boot.initrd == .volume(pool: "local", volume: "initrd"))
        #expect(
            definition.disks == [
                .init(pool: "local", volume: "web-root"),
                .init(pool: "local", volume: "web-data", readOnly: true),
            ])
        #expect(definition.nics[0].mac == VMDefinition.generatedMAC(vm: "web", index: 0))
        #expect(definition.nics[1] == .init(bridge: "br1", mac: "02:aa:bb:cc:dd:ee", queues: 4))
        #expect(definition.nics[0].queues == nil)
        // The TOML it writes reads back to the same definition.
        #expect(try parse(definition.toml) == definition)
    }

    @Test func defaults() throws {
        let definition = try parse("[boot]\nkernel = \"/boot/vmlinuz\"\n")
        #expect(definition.vcpus == 1)
        #expect(definition.memory == .mib(256))
        #expect(!definition.autostart)
        #expect(definition.onCrash == .restart)
        #expect(definition.boot.cmdline == "console=ttyS0")
        #expect(definition.disks.isEmpty && definition.nics.isEmpty)
        #expect(definition.jail, "the VMM is jailed unless a definition says otherwise")
    }

    @Test func jailFalseIsKeptAndWrittenBack() throws {
        let definition = try parse("jail = false\n[boot]\nkernel = \"/boot/vmlinuz\"\n")
        #expect(!definition.jail)
        #expect(definition.toml.contains("jail = false"), "\(definition.toml)")
        #expect(try parse(definition.toml) == definition)
        #expect(!(try parse("[boot]\nkernel = \"/boot/vmlinuz\"\n").toml.contains("jail")))
    }

    @Test func generatedMACsAreStableUnicastAndDistinct() {
        let first = VMDefinition.generatedMAC(vm: "web", index: 0)
        #expect(first == VMDefinition.generatedMAC(vm: "web", index: 0))
        #expect(first != VMDefinition.generatedMAC(vm: "web", index: 1))
        #expect(first != VMDefinition.generatedMAC(vm: "db", index: 0))
        #expect(VMDefinition.isValidMAC(first))
        #expect(first.hasPrefix("02:"))
        #expect(
            VMDefinition.tapName(vm: "a-very-long-virtual-machine-name-indeed", index: 3).count
                <= 15)
    }

    @Test func unknownKeyNamesFileLineAndSuggestion() {
        let message = failure("vcpus = 1\nmemroy = \"1GiB\"\n[boot]\nkernel = \"/k\"\n")
        #expect(message.contains("/etc/martlet/vms/web.toml:2:1"), "\(message)")
        #expect(message.contains("unknown key"), "\(message)")
        #expect(message.contains("did you mean 'memory'"), "\(message)")
    }

    @Test func unknownKeyInsideTables() {
        #expect(failure("[boot]\nkernel = \"/k\"\ncmdlin = \"x\"\n").contains("boot.cmdlin"))
        #expect(
            failure("[boot]\nkernel = \"/k\"\n[[disk]]\npool = \"a\"\nvolume = \"b\"\nsize = 3\n")
                .contains("disk[0].size"))
        #expect(
            failure("[boot]\nkernel = \"/k\"\n[[nic]]\nbrige = \"br0\"\n").contains("nic[0].brige"))
    }

    static let malformedDefinitions: [(String, String)] = [
        ("vcpus = 0\n[boot]\nkernel = \"/k\"\n", "vcpus"),
        ("vcpus = 65\n[boot]\nkernel = \"/k\"\n", "out of range"),
        ("vcpus = \"two\"\n[boot]\nkernel = \"/k\"\n", "expected an integer"),
        ("memory = \"lots\"\n[boot]\nkernel = \"/k\"\n", "is not a size"),
        ("memory = \"1MiB\"\n[boot]\nkernel = \"/k\"\n", "at least 4 MiB"),
        ("memory = \"1000000\"\n[boot]\nkernel = \"/k\"\n", "whole number of MiB"),
        ("on-crash = \"explode\"\n[boot]\nkernel = \"/k\"\n", "is not one of"),
        ("autostart = \"yes\"\n[boot]\nkernel = \"/k\"\n", "true or false"),
        ("jail = \"off\"\n[boot]\nkernel = \"/k\"\n", "jail"),
        ("vcpus = 1\n", "missing required key 'boot'"),
        ("[boot]\ncmdline = \"x\"\n", "missing required key 'boot.kernel'"),
        ("[boot]\nkernel = \"vmlinuz\"\n", "neither an absolute path nor POOL/VOLUME"),
        (
            "[boot]\nkernel = \"/k\"\n[[disk]]\npool = \"local\"\n",
            "missing required key 'disk[0].volume'"
        ),
        (
            "[boot]\nkernel = \"/k\"\n[[disk]]\npool = \"Local Pool\"\nvolume = \"v\"\n",
            "not a valid name"
        ),
        (
            "[boot]\nkernel = \"/k\"\n[[disk]]\npool = \"a\"\nvolume = \"v\"\n[[disk]]\npool = \"a\"\nvolume = \"v\"\n",
            "attached twice"
        ),
        ("[boot]\nkernel = \"/k\"\n[[nic]]\nmac = \"01:00:5e:00:00:01\"\n", "not a unicast MAC"),
        ("[boot]\nkernel = \"/k\"\n[[nic]]\nmac = \"02:00:00:00:00\"\n", "not a unicast MAC"),
        (
            "[boot]\nkernel = \"/k\"\n[[nic]]\nbridge = \"a-bridge-name-too-long\"\n",
            "not a network interface name"
        ),
        (
            "[boot]\nkernel = \"/k\"\n[[nic]]\nmac = \"02:00:00:00:00:01\"\n[[nic]]\nmac = \"02:00:00:00:00:01\"\n",
            "used by another NIC"
        ),
        ("[boot\nkernel = \"/k\"\n", "not valid TOML"),
        ("disk = 3\n[boot]\nkernel = \"/k\"\n", "expected an array of tables"),
        ("[boot]\nkernel = \"/k\"\ncmdline = \"quiet\\u0000init=/bin/sh\"\n", "NUL"),
        ("[boot]\nkernel = \"/k\"\ncmdline = \"quiet\\n\"\n", "boot.cmdline"),
        ("[boot]\nkernel = \"/k\\n\"\n", "boot.kernel"),
        ("[boot]\nkernel = \"/k\"\ninitrd = \"initrd.img\"\n", "boot.initrd"),
        ("memory = \"18446744073709551615GiB\"\n[boot]\nkernel = \"/k\"\n", "memory"),
        ("memory = \"1.5PiB\"\n[boot]\nkernel = \"/k\"\n", "memory"),
        ("vcpus = -1\n[boot]\nkernel = \"/k\"\n", "vcpus"),
        ("on-crash = 1\n[boot]\nkernel = \"/k\"\n", "on-crash"),
        ("colour = \"blue\"\n[boot]\nkernel = \"/k\"\n", "colour"),
        ("[boot]\nkernel = \"/k\"\n[[disk]]\npool = \"..\"\nvolume = \"v\"\n", "not a valid name"),
        ("[boot]\nkernel = \"/k\"\n[[disk]]\npool = \"a\"\nvolume = \"v/../../etc\"\n", "not a valid name"),
        ("[boot]\nkernel = \"/k\"\n[[disk]]\npool = \"a\"\nvolume = \"v\"\nread-only = \"no\"\n", "true or false"),
        ("[boot]\nkernel = \"/k\"\n[[nic]]\nmac = \"+2:+0:00:00:00:01\"\n", "not a unicast MAC"),
        ("[boot]\nkernel = \"/k\"\n[[nic]]\nmac = \"00:00:00:00:00:00\"\n", "not a unicast MAC"),
        ("[boot]\nkernel = \"/k\"\n[[nic]]\nbridge = \"br%d\"\n", "not a network interface name"),
        ("[boot]\nkernel = \"/k\"\n[[nic]]\nbridge = \"\"\n", "not a network interface name"),
    ]

    @Test(arguments: malformedDefinitions)
    func malformed(text: String, expected: String) {
        let message = failure(text)
        #expect(message.contains(expected), "\(message)")
        #expect(message.contains("web.toml"), "errors name the file: \(message)")
    }

    /// The same table through the `martlet` executable reading a host's definition: exit 2
    /// within a second, the file and key named, nothing under the host's folders changed.
    @Test func theCLIRefusesEachMalformedDefinitionWithoutSideEffects() throws {
        #expect(Self.malformedDefinitions.count >= 30)
        let fixture = try HostFixture(label: "malformed-definitions")
        try FileManager.default.createDirectory(atPath: fixture.paths.vmsDirectory, withIntermediateDirectories: true)
        let file = fixture.paths.definition("web")
        for (text, expected) in Self.malformedDefinitions {
            try text.write(toFile: file, atomically: false, encoding: .utf8)
            let before = try FileManager.default.subpathsOfDirectory(atPath: fixture.root).sorted()
            let started = Date()
            for command in [["vm", "show", "web"], ["vm", "start", "web"]] {
                let result = try TestSupport.run(TestSupport.product("martlet"), command, environment: fixture.environment)
                #expect(result.status == 2, "\(command) \(text): \(result.status) \(result.stderr)")
                #expect(result.stderr.contains(file) && result.stderr.contains(expected), "\(command) \(text): \(result.stderr)")
            }
            #expect(Date().timeIntervalSince(started) < 2, "\(text): two refusals took too long")
            #expect(try FileManager.default.subpathsOfDirectory(atPath: fixture.root).sorted() == before, "\(text)")
            #expect(try String(contentsOfFile: file, encoding: .utf8) == text)
        }
    }

    @Test func fileNameMustBeAValidVMName() {
        #expect(
            failure("[boot]\nkernel = \"/k\"\n", name: "Bad Name").contains("not a valid VM name"))
    }

    @Test func storageConfigurationAsTheInstallerWritesIt() throws {
        let directory = try TestSupport.temporaryDirectory("storage")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/storage.toml"
        try """
        # VM storage pools, written by martlet-installer.

        [[pool]]
        name = "local"
        type = "lvm-thin"
        volume-group = "martlet"
        thin-pool = "data"

        [[pool]]
        name = "extra"
        type = "directory"
        path = "/var/lib/martlet/storage-1"
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let pools = try StorageConfiguration.pools(path: path)
        #expect(pools.map(\.name) == ["local", "extra"])
        #expect((pools[0] as? LVMThinPool)?.volumeGroup == "martlet")
        #expect((pools[1] as? DirectoryPool)?.path == "/var/lib/martlet/storage-1")
        try "[[pool]]\nname = \"x\"\ntype = \"zfs\"\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: MartletError.self) { try StorageConfiguration.pools(path: path) }
    }
}

/// `validate()` and `VMHost.create`: the rules and the rollback every caller (CLI, API) gets.
@Suite struct VMCreateTests {
    func make(_ name: String, disks: [String] = []) -> VMDefinition {
        VMDefinition(
            name: name, boot: .init(kernel: .path("/bin/sh")),
            disks: disks.map { .init(pool: "local", volume: $0) })
    }

    @Test func validateNamesTheKeyOfABuiltDefinition() {
        var definition = make("web", disks: ["a", "a"])
        do {
            try definition.validate()
        } catch let error as MartletError {
            #expect(error.message == "VM 'web': disk[1].volume: 'local/a' is attached twice", "\(error)")
        } catch {
            Issue.record("\(error)")
        }
        definition.disks = []
        definition.nics = [.init(bridge: "br0", mac: "01:00:00:00:00:01")]
        let multicast = #expect(throws: MartletError.self) { try definition.validate() }
        #expect(multicast?.message == "VM 'web': nic[0].mac: '01:00:00:00:00:01' is not a unicast MAC address")
        definition.nics = [.init(bridge: "br0", mac: "02:00:00:00:00:01", queues: 9)]
        let queues = #expect(throws: MartletError.self) { try definition.validate() }
        #expect(queues?.message == "VM 'web': nic[0].queues: 9 queue pairs is out of range", "\(String(describing: queues))")
        definition.nics = []
        definition.vcpus = 65
        let vcpus = #expect(throws: MartletError.self) { try definition.validate() }
        #expect(vcpus?.message == "VM 'web': vcpus: 65 is out of range")
        definition.vcpus = 1
        #expect(throws: Never.self) { try definition.validate() }
        definition.name = "Web!"
        #expect(throws: MartletError.self) { try definition.validate() }
    }

    /// The same rule read from a file points at the line of the key.
    @Test func fileErrorsKeepTheirPosition() throws {
        let text = "vcpus = 1\n\n[boot]\nkernel = \"/k\"\n\n[[disk]]\npool = \"local\"\nvolume = \"a\"\n\n[[disk]]\npool = \"local\"\nvolume = \"a\"\n"
        let error = #expect(throws: MartletError.self) {
            try VMDefinition(path: "/etc/martlet/vms/web.toml", contents: text)
        }
        #expect(error?.message.contains("'local/a' is attached twice") == true, "\(String(describing: error))")
        #expect(error?.message.contains("disk") == true)
    }

    @Test func createMakesVolumesAndRollsThemBackOnFailure() throws {
        let fixture = try HostFixture(label: "create")
        let host = fixture.host
        let made = try host.create(
            make("one", disks: ["one-root"]),
            newVolumes: [.init(pool: "local", volume: "one-root", size: .mib(8))])
        #expect(made.name == "one")
        #expect(try host.pool("local").volume("one-root").path.isEmpty == false)

        // The second new volume exists already: the first one this call made is removed again
        // and no definition is written.
        _ = try host.pool("local").createVolume("taken", size: .mib(1))
        #expect(throws: MartletError.self) {
            try host.create(
                make("two", disks: ["two-root", "taken"]),
                newVolumes: [
                    .init(pool: "local", volume: "two-root", size: .mib(8)),
                    .init(pool: "local", volume: "taken", size: .mib(8)),
                ])
        }
        #expect((try? host.pool("local").volume("two-root")) == nil, "two-root was left behind")
        #expect((try? host.pool("local").volume("taken")) != nil, "a volume create did not make was deleted")
        #expect((try? host.definition("two")) == nil)

        // A taken name is refused before any volume is made.
        #expect(throws: MartletError.self) {
            try host.create(
                make("one", disks: ["one-data"]),
                newVolumes: [.init(pool: "local", volume: "one-data", size: .mib(8))])
        }
        #expect((try? host.pool("local").volume("one-data")) == nil)
        // A new volume the VM does not attach is refused.
        #expect(throws: MartletError.self) {
            try host.create(make("three"), newVolumes: [.init(pool: "local", volume: "stray", size: .mib(8))])
        }
        #expect((try? host.pool("local").volume("stray")) == nil)
    }
}
