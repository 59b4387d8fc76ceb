import Foundation
import MartletCore
import MartletTestSupport
import Testing

@testable import MartletBuilder

/// The repository's top folder, found from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

/// A profile folder in a scratch directory with the overlay folders a profile names.
struct ProfileFixture {
    let scratch: ScratchDirectory
    init() throws {
        scratch = try ScratchDirectory("martlet-profile-test")
        try FileManager.default.createDirectory(
            atPath: scratch.file("overlays/host/etc"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(
            atPath: scratch.file("overlays/live"), withIntermediateDirectories: true)
        try scratch.write("overlays/not-a-folder", "x")
    }

    /// Writes `toml` as profiles/NAME/profile.toml and loads it.
    func load(_ toml: String, name: String = "p") throws -> Profile {
        try scratch.write("profiles/\(name)/profile.toml", toml)
        return try Profile.load(name, profilesDirectory: scratch.file("profiles"))
    }

    var path: String { scratch.file("profiles/p/profile.toml") }
}

/// A small valid profile; the malformed cases below each change one thing in it.
let validProfile = """
    name = "small"
    version = "1.2.3"

    [debian]
    suite = "bookworm"
    mirror = "http://deb.debian.org/debian"
    packages = ["systemd", "linux-base"]

    [kernel]
    cmdline = "quiet"

    [overlays]
    host = ["../../overlays/host"]
    live = ["../../overlays/live"]

    [[file]]
    path = "/etc/martlet"
    mode = "0750"

    [[file]]
    path = "/root"
    mode = "0700"
    owner = 0
    group = 0

    [trim]
    paths = ["/usr/share/doc/*"]
    kernel-modules = ["sound"]

    [squashfs]
    compression = "zstd"
    level = 19
    block-size = "256KiB"

    [iso]
    label = "SMALL_1"
    output = "small.iso"

    [boot]
    default = "rescue"
    timeout = -1
    serial = "ttyS1,9600"

    """

@Suite("Profile loading")
struct ProfileLoadingTests {
    @Test("a small valid profile gives every value, defaults filled in")
    func valid() throws {
        let fixture = try ProfileFixture()
        let profile = try fixture.load(validProfile)
        #expect(profile.name == "small")
        #expect(profile.version == "1.2.3")
        #expect(profile.description == "")
        #expect(profile.path == fixture.path)
        #expect(profile.directory == fixture.scratch.file("profiles/p"))
        #expect(profile.debian.components == ["main"])
        #expect(profile.debian.architecture == "amd64")
        #expect(profile.debian.variant == "minbase")
        #expect(profile.debian.packages == ["systemd", "linux-base"])
        #expect(profile.kernel == Profile.Kernel(package: "linux-image-amd64", cmdline: "quiet"))
        #expect(profile.overlays.map(\.path) == [fixture.scratch.file("overlays/host")])
        #expect(profile.overlays.map(\.source) == ["../../overlays/host"])
        #expect(profile.liveOverlays.map(\.path) == [fixture.scratch.file("overlays/live")])
        #expect(
            profile.fileModes == [
                .init(path: "/etc/martlet", mode: 0o750, owner: nil, group: nil),
                .init(path: "/root", mode: 0o700, owner: 0, group: 0),
            ])
        #expect(profile.squashfs == .init(compression: "zstd", level: 19, blockSize: 262_144))
        #expect(profile.iso == .init(label: "SMALL_1", output: "small.iso", publisher: "Martlet"))
        #expect(profile.boot == .init(defaultEntry: "rescue", timeout: -1, serial: "ttyS1,9600"))
    }

    @Test("the smallest profile takes every default")
    func minimal() throws {
        let profile = try ProfileFixture().load(
            """
            name = "tiny"
            version = "0.0.1~rc1"
            [debian]
            suite = "bookworm"
            mirror = "file:///srv/mirror"
            packages = ["systemd"]
            """)
        #expect(profile.iso.label == "TINY_0_0_1_RC1")
        #expect(profile.iso.output == "tiny-0.0.1~rc1-amd64.iso")
        #expect(profile.squashfs == .init(compression: "xz", level: nil, blockSize: 1_048_576))
        #expect(profile.boot == .init(defaultEntry: "install", timeout: 5, serial: "ttyS0,115200"))
        #expect(profile.overlays.isEmpty && profile.fileModes.isEmpty && profile.trim.paths.isEmpty)
    }

    /// profiles/default/profile.toml itself, in a scratch tree that has the overlay folders
    /// it names (they arrive with the build pipeline's branch).
    @Test("profiles/default parses to the expected values")
    func defaultProfile() throws {
        let fixture = try ProfileFixture()
        let text = try String(
            contentsOfFile: repositoryRoot + "/profiles/default/profile.toml", encoding: .utf8)
        let profile = try fixture.load(text, name: "default")
        #expect(profile.name == "default")
        #expect(profile.version == "0.1.0")
        #expect(profile.debian.suite == "bookworm")
        #expect(profile.debian.mirror == "http://deb.debian.org/debian")
        #expect(profile.debian.packages.contains("openssh-server"))
        #expect(profile.debian.packages.contains("libnewt0.52"))
        #expect(profile.kernel.package == "linux-image-amd64")
        #expect(profile.overlays.map(\.path) == [fixture.scratch.file("overlays/host")])
        #expect(profile.liveOverlays.map(\.path) == [fixture.scratch.file("overlays/live")])
        #expect(
            profile.fileModes == [.init(path: "/etc/martlet", mode: 0o755, owner: nil, group: nil)])
        #expect(profile.trim.kernelModules.contains("drivers/gpu"))
        #expect(profile.squashfs.compression == "xz")
        #expect(profile.squashfs.blockSize == 1 << 20)
        #expect(profile.iso.label == "MARTLET_0_1_0")
        #expect(profile.iso.output == "martlet-0.1.0-amd64.iso")
        #expect(profile.boot.defaultEntry == "install")
        #expect(profile.boot.timeout == 5)
    }

    /// Every profile of the repository loads where it is (once the overlays exist).
    @Test(
        "the repository's profiles load in place",
        .enabled(if: FileManager.default.fileExists(atPath: repositoryRoot + "/overlays/host")))
    func profilesInPlace() throws {
        let directory = repositoryRoot + "/profiles"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { FileManager.default.fileExists(atPath: "\(directory)/\($0)/profile.toml") }
        #expect(names.contains("default"))
        for name in names {
            let profile = try Profile.load(name, profilesDirectory: directory)
            #expect(profile.name == name)
            #expect(profile.path == "\(directory)/\(name)/profile.toml")
            #expect(profile.overlays.map(\.path) == [repositoryRoot + "/overlays/host"])
            #expect(profile.liveOverlays.map(\.path) == [repositoryRoot + "/overlays/live"])
        }
    }

    @Test("a profile is found by name, folder or file; an unknown name lists the profiles")
    func locating() throws {
        let fixture = try ProfileFixture()
        _ = try fixture.load(validProfile)
        let profiles = fixture.scratch.file("profiles")
        #expect(try Profile.load(fixture.scratch.file("profiles/p")).name == "small")
        #expect(try Profile.load(fixture.path).name == "small")
        let error = #expect(throws: MartletError.self) {
            try Profile.load("nope", profilesDirectory: profiles)
        }
        #expect(error?.code == .notFound)
        #expect(error?.message.contains("nope") == true)
        #expect(error?.hint?.contains("p") == true)
        let folder = #expect(throws: MartletError.self) {
            try Profile.load(fixture.scratch.file("overlays/host"))
        }
        #expect(folder?.message.contains("has no profile.toml") == true)
    }

    /// Each case changes `validProfile` (replacing `old` with `new`) and names the error text
    /// expected, with its line where the key has one.
    static let malformed: [(String, String, String, String)] = [
        (
            "unknown top-level key", "version = \"1.2.3\"", "version = \"1.2.3\"\nversoin = \"2\"",
            ":3:1: key 'versoin': unknown key"
        ),
        (
            "unknown key in a table", "cmdline = \"quiet\"", "cmdline = \"quiet\"\ncmdlin = \"x\"",
            ":11:1: key 'kernel.cmdlin': unknown key"
        ),
        (
            "unknown key in [[file]]", "mode = \"0750\"", "mode = \"0750\"\nmod = \"0644\"",
            ":19:1: key 'file[0].mod': unknown key"
        ),
        (
            "wrong type", "timeout = -1", "timeout = \"never\"",
            ":41:1: key 'boot.timeout': expected an integer, found a string"
        ),
        (
            "bad name", "name = \"small\"", "name = \"Small_One\"",
            ":1:1: key 'name': 'Small_One' is not a profile name"
        ),
        ("empty version", "version = \"1.2.3\"", "version = \"\"", ":2:1: key 'version': is empty"),
        (
            "missing suite", "suite = \"bookworm\"\n", "",
            "missing required key 'debian.suite' in [debian]"
        ),
        (
            "bad mirror", "http://deb.debian.org/debian", "ftp://deb.debian.org/debian",
            ":6:1: key 'debian.mirror': 'ftp://deb.debian.org/debian' is not an http://, https:// or file:// URL"
        ),
        (
            "other architecture", "suite = \"bookworm\"",
            "suite = \"bookworm\"\narchitecture = \"arm64\"",
            ":6:1: key 'debian.architecture': 'arm64' is not supported"
        ),
        (
            "empty package list", "[\"systemd\", \"linux-base\"]", "[]",
            ":7:1: key 'debian.packages': is empty"
        ),
        (
            "invalid package name", "\"linux-base\"]", "\"Linux_Base\"]",
            ":7:1: key 'debian.packages': element 2: 'Linux_Base' is not a valid Debian package name"
        ),
        (
            "invalid kernel package", "cmdline = \"quiet\"", "package = \"linux image\"",
            ":10:1: key 'kernel.package': 'linux image' is not a valid Debian package name"
        ),
        (
            "missing overlay", "../../overlays/live", "../../overlays/gone",
            ":14:1: key 'overlays.live': overlay '../../overlays/gone' does not exist"
        ),
        (
            "overlay that is a file", "../../overlays/live", "../../overlays/not-a-folder",
            ":14:1: key 'overlays.live': overlay '../../overlays/not-a-folder' is not a folder"
        ),
        (
            "mode as an integer", "mode = \"0750\"", "mode = 750",
            ":18:1: key 'file[0].mode': expected a string, found an integer"
        ),
        (
            "mode not octal", "mode = \"0700\"", "mode = \"0789\"",
            ":22:1: key 'file[1].mode': '0789' is not an octal mode"
        ),
        (
            "owner not an integer", "owner = 0", "owner = \"root\"",
            ":23:1: key 'file[1].owner': expected an integer, found a string"
        ),
        (
            "relative trim path", "\"/usr/share/doc/*\"", "\"usr/share/doc/*\"",
            ":27:1: key 'trim.paths': 'usr/share/doc/*' is not absolute"
        ),
        (
            "absolute module tree", "[\"sound\"]", "[\"/sound\"]",
            ":28:1: key 'trim.kernel-modules': '/sound' must be relative"
        ),
        (
            "unknown compression", "\"zstd\"", "\"gzip\"",
            ":31:1: key 'squashfs.compression': 'gzip' is not one of \"zstd\", \"xz\""
        ),
        (
            "level out of range", "level = 19", "level = 23",
            ":32:1: key 'squashfs.level': 23 is out of range for zstd (1–22)"
        ),
        (
            "block size not a power of two", "\"256KiB\"", "\"300KiB\"",
            ":33:1: key 'squashfs.block-size': 307200 bytes is not a power of two between 4 KiB and 1 MiB"
        ),
        (
            "block size too large", "\"256KiB\"", "\"2MiB\"",
            ":33:1: key 'squashfs.block-size': 2097152 bytes is not a power of two"
        ),
        (
            "lower-case label", "\"SMALL_1\"", "\"small-1\"",
            ":36:1: key 'iso.label': 'small-1' may only hold A-Z, 0-9 and _"
        ),
        (
            "label too long", "\"SMALL_1\"", "\"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456\"",
            ":36:1: key 'iso.label': 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456' has 33 characters"
        ),
        (
            "output with a folder", "\"small.iso\"", "\"out/small.iso\"",
            ":37:1: key 'iso.output': 'out/small.iso' must be a file name without '/'"
        ),
        (
            "output not .iso", "\"small.iso\"", "\"small.img\"",
            ":37:1: key 'iso.output': 'small.img' does not end in .iso"
        ),
        (
            "unknown boot entry", "\"rescue\"", "\"memtest\"",
            ":40:1: key 'boot.default': 'memtest' is not one of"
        ),
        (
            "timeout below -1", "timeout = -1", "timeout = -2",
            ":41:1: key 'boot.timeout': -2 is not a timeout"
        ),
        (
            "bad serial", "\"ttyS1,9600\"", "\"ttyUSB0\"",
            ":42:1: key 'boot.serial': 'ttyUSB0' is not a serial console"
        ),
        ("TOML syntax", "timeout = -1", "timeout = = -1", ":41:"),
        ("cmdline with |", "cmdline = \"quiet\"", "cmdline = \"quiet | true\"", ":10:1: key 'kernel.cmdline': '|' may not appear"),
        ("cmdline with &", "cmdline = \"quiet\"", "cmdline = \"quiet && reboot\"", ":10:1: key 'kernel.cmdline': '&'"),
        ("cmdline with >", "cmdline = \"quiet\"", "cmdline = \"quiet >/dev/sda\"", ":10:1: key 'kernel.cmdline': '>'"),
        ("cmdline with <", "cmdline = \"quiet\"", "cmdline = \"quiet <x\"", ":10:1: key 'kernel.cmdline': '<'"),
        ("cmdline with {", "cmdline = \"quiet\"", "cmdline = \"quiet }{\"", ":10:1: key 'kernel.cmdline': '}'"),
        ("cmdline with #", "cmdline = \"quiet\"", "cmdline = \"quiet #x\"", ":10:1: key 'kernel.cmdline': '#'"),
        ("cmdline with ;", "cmdline = \"quiet\"", "cmdline = \"quiet; reboot\"", ":10:1: key 'kernel.cmdline': ';'"),
        ("cmdline with a backslash", "cmdline = \"quiet\"", "cmdline = 'quiet\\'", ":10:1: key 'kernel.cmdline': '\\\\'"),
        ("cmdline with a tab", "cmdline = \"quiet\"", "cmdline = \"quiet\\tx\"", ":10:1: key 'kernel.cmdline': '\\t'"),
        ("cmdline with a newline", "cmdline = \"quiet\"", "cmdline = \"quiet\\n\"", ":10:1: key 'kernel.cmdline':"),
        ("cmdline with $", "cmdline = \"quiet\"", "cmdline = \"quiet ${root}\"", ":10:1: key 'kernel.cmdline': '$'"),
        ("mirror with spaces", "http://deb.debian.org/debian", "http://deb.debian.org/debian sid main", ":6:1: key 'debian.mirror': 'http://deb.debian.org/debian sid main' contains spaces"),
        ("mirror with a quote", "http://deb.debian.org/debian", "http://deb.debian.org/deb\\\"ian", ":6:1: key 'debian.mirror':"),
        ("trim /*", "\"/usr/share/doc/*\"", "\"/*\"", ":27:1: key 'trim.paths': '/*' would match top-level folders"),
        ("trim /.", "\"/usr/share/doc/*\"", "\"/.\"", ":27:1: key 'trim.paths': '/.' contains '.'"),
        ("trim /./usr", "\"/usr/share/doc/*\"", "\"/./usr\"", ":27:1: key 'trim.paths': '/./usr' contains '.'"),
        ("trim //", "\"/usr/share/doc/*\"", "\"//\"", ":27:1: key 'trim.paths': '//' would be the whole root filesystem"),
        ("trim /?*/x", "\"/usr/share/doc/*\"", "\"/?*\"", ":27:1: key 'trim.paths': '/?*' would match top-level folders"),
        ("module tree .", "[\"sound\"]", "[\".\"]", ":28:1: key 'trim.kernel-modules': '.' would remove every module"),
        ("module tree *", "[\"sound\"]", "[\"*\"]", ":28:1: key 'trim.kernel-modules': '*' would remove every module"),
        ("overlay /", "../../overlays/live", "/", ":14:1: key 'overlays.live': overlay '/' is the build machine's whole root folder"),
        ("file path /.", "path = \"/etc/martlet\"", "path = \"/.\"", ":17:1: key 'file[0].path': '/.' contains '.'"),
        ("version with NUL", "version = \"1.2.3\"", "version = \"1.2.3\\u0000\"", ":2: a NUL character"),
        ("suite with a newline", "suite = \"bookworm\"", "suite = \"bookworm\\n\"", ":5:1: key 'debian.suite':"),
    ]

    /// The same table through the `martlet build` executable: exit 2 within a second, the
    /// message naming the file and key, no output folder made, the profile folder as it was.
    @Test("martlet build refuses each malformed profile before any side effect", .enabled(if: martletExecutable != nil))
    func refusedByTheBuildCommand() throws {
        #expect(Self.malformed.count >= 30)
        let fixture = try ProfileFixture()
        let output = fixture.scratch.file("out")
        for (what, old, new, expected) in Self.malformed {
            try fixture.scratch.write("profiles/p/profile.toml", validProfile.replacingOccurrences(of: old, with: new))
            let before = try FileManager.default.subpathsOfDirectory(atPath: fixture.scratch.path).sorted()
            let started = Date()
            let result = try runMartlet(["build", "--profile", fixture.path, "--output", output])
            #expect(Date().timeIntervalSince(started) < 1, "\(what): took too long")
            #expect(result.status == 2, "\(what): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains(fixture.path) && result.stderr.contains(expected), "\(what): \(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: output), "\(what): the output folder was made")
            #expect(try FileManager.default.subpathsOfDirectory(atPath: fixture.scratch.path).sorted() == before, "\(what)")
        }
    }

    @Test("malformed profiles are refused with the file, key and line", arguments: malformed)
    func refused(_ item: (String, String, String, String)) throws {
        let (what, old, new, expected) = item
        #expect(validProfile.contains(old), "case '\(what)' does not apply to the valid profile")
        let fixture = try ProfileFixture()
        let error = #expect(throws: MartletError.self, "\(what)") {
            try fixture.load(validProfile.replacingOccurrences(of: old, with: new))
        }
        #expect(error?.code == .invalidInput)
        #expect(error?.message.hasPrefix(fixture.path) == true, "\(what): \(error?.message ?? "")")
        #expect(error?.message.contains(expected) == true, "\(what): \(error?.message ?? "")")
    }
}
