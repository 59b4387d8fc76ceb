import Glibc
import Testing

@testable import MartletValidation

/// Each primitive against values that must pass and values that must be refused, the
/// refusals naming the field.
struct ValidationTests {
    @Test(arguments: ["hv1", "Zürich office", "tab\there"])
    func textAcceptsPlainText(_ text: String) throws {
        try Text.check(text, field: "f")
    }

    @Test(arguments: ["hv1\n", "a\0b", "a\rb", "bell\u{07}", "del\u{7F}", "c1\u{85}", "bad\u{FFFD}"])
    func textRefusesControlCharacters(_ text: String) {
        #expect(throws: InvalidInput.self) { try Text.check(text, field: "global.hostname") }
        #expect((try? Text.check(text, field: "x")) == nil)
        do {
            try Text.check(text, field: "global.hostname")
        } catch {
            #expect(error.field == "global.hostname")
            #expect(!error.description.contains("\n"), "a message never carries the raw line break")
        }
    }

    @Test func textAllowsLineBreaksOnlyWhenAskedAndBoundsLength() throws {
        try Text.check("a\nb", field: "f", allowLineBreaks: true)
        #expect(throws: InvalidInput.self) { try Text.check("abcd", field: "f", maxBytes: 3) }
    }

    @Test(arguments: ["vm1", "web-01", "a", "db_2", String(repeating: "a", count: 48)])
    func namesThatPass(_ name: String) {
        #expect(Name.isValid(name))
    }

    @Test(arguments: [
        "", "../x", "a/b", ".", "..", "Web", "-x", "_x", "a.b", "tap%d", "a b", "a\0b", "é",
        String(repeating: "a", count: 49),
    ])
    func namesThatFail(_ name: String) {
        #expect(!Name.isValid(name))
        #expect(throws: InvalidInput.self) { try Name.check(name, field: "name") }
    }

    @Test func tapNamesFollowTheKernelLimit() {
        #expect(Name.isValid("mvm0123abcdn0", maxLength: Name.maxInterfaceLength))
        #expect(!Name.isValid("abcdefghijklmnop", maxLength: Name.maxInterfaceLength))
    }

    @Test func sizesAreExactOrRefused() {
        #expect(ByteCount.bytes("1500MiB") == 1500 << 20)
        #expect(ByteCount.bytes("1.5 GiB") == 3 << 29)
        #expect(ByteCount.bytes("4096") == 4096)
        #expect(ByteCount.bytes("2_000 MB") == 2_000_000_000)
        #expect(ByteCount.bytes("0.5K") == 512)
        for bad in ["", "MiB", "1.1", "0.3K", "1..2G", "1.", ".5G", "-1G", "+1G", "1e3", "12 parsecs",
            "18446744073709551615", "16777216TiB", "9223372036854775808", "99999999999999999999G", "1.0000000000000000001G"]
        {
            #expect(ByteCount.bytes(bad) == nil, "\(bad) must be refused")
        }
        #expect(ByteCount.bytes("2GiB", maximum: 1 << 30) == nil)
        #expect(throws: InvalidInput.self) { try ByteCount.parse("1.1", field: "swap-size") }
    }

    @Test(arguments: [UInt64(0), 1000, 1 << 20, 1500 << 20, 3 << 29, 5 << 40, UInt64(Int64.max)])
    func exactTextReadsBackTheSameBytes(_ value: UInt64) {
        #expect(ByteCount.bytes(ByteCount.exactText(value)) == value)
    }

    @Test func macAddresses() throws {
        #expect(try MACAddress.parseUnicast("52:54:00:12:34:5a", field: "mac") == [0x52, 0x54, 0, 0x12, 0x34, 0x5A])
        for bad in ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00", "+1:+2:+3:+4:+5:+6",
            "52:54:00:12:34", "52-54-00-12-34-56", "5:54:00:12:34:56:", "52:54:00:12:34:5g", "52:54:00:12:34:56\n"]
        {
            #expect(throws: InvalidInput.self, "\(bad)") { try MACAddress.parseUnicast(bad, field: "mac") }
        }
    }

    @Test func hostAddresses() throws {
        let v4 = try HostAddress(parsing: "192.0.2.10/24", family: AF_INET, field: "address")
        #expect(v4.prefix == 24)
        try v4.checkGateway("192.0.2.1", field: "gateway")
        #expect(throws: InvalidInput.self) { try v4.checkGateway("198.51.100.1", field: "gateway") }
        #expect(throws: InvalidInput.self) { try v4.checkGateway("192.0.2.10", field: "gateway") }
        let v6 = try HostAddress(parsing: "2001:db8::10/64", family: AF_INET6, field: "ipv6")
        try v6.checkGateway("2001:db8::1", field: "gw")
        try v6.checkGateway("fe80::1", field: "gw")
        #expect(throws: InvalidInput.self) { try v6.checkGateway("2001:db9::1", field: "gw") }
        _ = try HostAddress(parsing: "10.0.0.0/31", family: AF_INET, field: "a")
        _ = try HostAddress(parsing: "10.0.0.1/32", family: AF_INET, field: "a")
        for bad in ["192.0.2.10/0", "192.0.2.10/33", "192.0.2.0/24", "192.0.2.255/24", "127.0.0.5/8",
            "0.0.0.0/8", "224.0.0.1/4", "192.0.2.10", "192.0.2.10/024", "192.0.2.10/+24", " 192.0.2.10/24", "192.0.2.10/24\n"]
        {
            #expect(throws: InvalidInput.self, "\(bad)") { try HostAddress(parsing: bad, family: AF_INET, field: "a") }
        }
        for bad in ["::1/128", "::/64", "ff02::1/64", "2001:db8::10/0", "2001:db8::10/129", "192.0.2.1/24"] {
            #expect(throws: InvalidInput.self, "\(bad)") { try HostAddress(parsing: bad, family: AF_INET6, field: "a") }
        }
    }

    @Test(arguments: [
        "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
        "$6$rounds=5000$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
        "$5$abc$qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0",
        "$1$ab$dslkcXxVH.x8LwW1W/oAB/",
        "$y$j9T$NHNzNzgBa6FM7oczo2t4U.$PPHPaakd8A.xZAn0IyjE.SsVHy9hc7MpmKdJ9EGeUOB",
        "$2b$10$ZdN/.D/AKypV121.AqbQbeDErCSP1/DdisxFJ0v3SoTZzjXblXwpG",
        "$7$CU..../....TvyfNFNZk9ZsoL2F4IMDy/$nvkY7uNkudS28aVaq1TH1Qku/PRe0dwhlJveQFgYyoB",
    ])
    func realCryptHashesPass(_ hash: String) {
        #expect(CryptHash.isValid(hash))
    }

    @Test(arguments: [
        "$6$x", "$6$$", "$6$salt$short", "$y$j9T$salt$", "$2b$10$short", "$2b$1$ZdN/.D/AKypV121.AqbQbeDErCSP1/DdisxFJ0v3SoTZzjXblXwpG",
        "$6$rounds=12$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
        "$6$saltsaltsaltsaltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
        "$6$salt!$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
        "$5$abc$qsg6EHbUzHQzF1POlD7zUwBINSELQxypPaeDcZe6vH0\n", "$9$abc$def", "secret", "", "!", "*",
    ])
    func fakeCryptHashesFail(_ hash: String) {
        #expect(!CryptHash.isValid(hash))
    }

    static let ed25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy test"
    static let ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAFb3MNZCLFpLrf2emGWvIZBuEOlgbHF2WPvSufvu7KCIADoy/2bdRIzPSv07CnpNDrP9mDhSliVyIl9WXbuSts= e"

    @Test func realSSHKeysPass() throws {
        try SSHPublicKey.check(Self.ed25519, field: "k")
        try SSHPublicKey.check(Self.ecdsa, field: "k")
        try SSHPublicKey.check(String(Self.ed25519.dropLast(5)), field: "k")
    }

    @Test(arguments: [
        "ssh-foo bar", "ssh-ed25519 bar", "ssh-ed25519", "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9J",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9J=y",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy test\nssh-rsa x",
        "ssh-ed25519  AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy",
        "command=\"rm -rf /\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICgybcTHjg88EA2Rkcsr+ztaHvV9E3xpDt392cBLg9Jy",
        "ssh-ed25519 QUFBQQ==",
    ])
    func fakeSSHKeysFail(_ line: String) {
        #expect(throws: InvalidInput.self) { try SSHPublicKey.check(line, field: "root-ssh-keys") }
    }

    @Test func base64IsStrict() {
        #expect(Base64.decode("aGk=") == Array("hi".utf8))
        #expect(Base64.decode("aGVsbG8=") == Array("hello".utf8))
        #expect(Base64.decode("aGk") == nil)
        #expect(Base64.decode("a=Gk") == nil)
        #expect(Base64.decode("aG!=") == nil)
    }
}
