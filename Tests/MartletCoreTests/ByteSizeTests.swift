import Testing

@testable import MartletCore

@Suite struct ByteSizeTests {
    @Test(arguments: [
        ("512MiB", UInt64(512) << 20), ("12G", UInt64(12) << 30), ("1.5 GiB", UInt64(3) << 29),
        ("4096", 4096), ("2TB", 2_000_000_000_000), ("1k", 1024),
    ])
    func parses(text: String, bytes: UInt64) {
        #expect(ByteSize(parsing: text)?.bytes == bytes)
    }

    @Test(arguments: ["", "GiB", "12 parsecs", "-1G", "1.2.3M"])
    func rejects(text: String) {
        #expect(ByteSize(parsing: text) == nil)
    }

    @Test func formats() {
        #expect(ByteSize.mib(512).description == "512 MiB")
        #expect(ByteSize(UInt64(3) << 29).description == "1.5 GiB")
        #expect(ByteSize(100).description == "100 B")
    }
}
