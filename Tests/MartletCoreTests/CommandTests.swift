import Testing

@testable import MartletCore

@Suite struct CommandTests {
    @Test func capturesOutput() throws {
        let result = try Command("/bin/sh", ["-c", "echo out; echo err >&2"]).run()
        #expect(result.stdoutText == "out\n")
        #expect(result.stderr == "err\n")
    }

    @Test func failureNamesCommandAndCarriesStderr() {
        let error = #expect(throws: MartletError.self) {
            try Command("/bin/sh", ["-c", "echo boom >&2; exit 3"]).run()
        }
        #expect(error?.message.contains("exited with status 3") == true)
        #expect(error?.cause == "boom")
    }

    @Test func missingToolNamesThePackage() {
        let error = #expect(throws: MartletError.self) { try Tool.resolve("mksquashfs-nope") }
        #expect(error?.code == .missingDependency)
        #expect(throws: Never.self) { try Tool.resolve("sh") }
    }

    @Test func streamsLines() throws {
        let progress = RecordingProgress()
        try Command("/bin/sh", ["-c", "printf 'a\\rb\\nc\\n'"]).stream { line, _ in
            progress.emit(ProgressEvent(.note, stage: "t", message: line))
        }
        #expect(progress.events.map(\.message) == ["a", "b", "c"])
    }
}
