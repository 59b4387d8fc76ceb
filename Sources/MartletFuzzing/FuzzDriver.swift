#if canImport(Glibc)
    import Glibc
#endif

/// One fuzz target: takes any bytes, must neither crash nor hang, whatever they are.
public struct FuzzTarget: Sendable {
    public let name: String
    public let summary: String
    public let body: @Sendable ([UInt8]) -> Void

    public init(name: String, summary: String, body: @escaping @Sendable ([UInt8]) -> Void) {
        self.name = name
        self.summary = summary
        self.body = body
    }
}

/// The `main` of a fuzz program (martlet-fuzz, martlet-fuzz-vmm), Foundation-free so a
/// sanitizer build compiles no more than its targets need.
///
/// Built normally it replays inputs: `PROGRAM TARGET FILE|DIR...` runs each file through
/// TARGET once (the committed corpora and every crash found become regression inputs that
/// `make test` replays). Built with `-sanitize=fuzzer,address -D FUZZING` (scripts/fuzz) it is
/// libFuzzer's driver: `MARTLET_FUZZ_TARGET=TARGET PROGRAM [libFuzzer flags] [CORPUS...]`.
/// Either way `PROGRAM --list` prints its targets' names, one a line.
public enum FuzzDriver {
    /// The target libFuzzer's callback runs; set once, before the driver starts.
    nonisolated(unsafe) static var selected: FuzzTarget?

    public static func main(program: String, targets: [FuzzTarget]) -> Never {
        let arguments = CommandLine.arguments
        if arguments.count == 2 && arguments[1] == "--list" {
            for target in targets { print(target.name) }
            exit(0)
        }
        #if FUZZING
            guard let name = getenv("MARTLET_FUZZ_TARGET").map({ String(cString: $0) }),
                let chosen = targets.first(where: { $0.name == name })
            else { usage(program, targets) }
            selected = chosen
            var argc = CommandLine.argc
            var argv = CommandLine.unsafeArgv
            exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
        #else
            guard arguments.count >= 3, let chosen = targets.first(where: { $0.name == arguments[1] }) else {
                usage(program, targets)
            }
            var replayed = 0
            for path in arguments.dropFirst(2) {
                for file in Replay.files(at: path) {
                    guard let bytes = Replay.read(file) else {
                        printError("\(program): cannot read '\(file)'\n")
                        exit(1)
                    }
                    chosen.body(bytes)
                    replayed += 1
                }
            }
            print("\(program): \(chosen.name): \(replayed) inputs replayed, none crashed")
            exit(0)
        #endif
    }

    static func usage(_ program: String, _ targets: [FuzzTarget]) -> Never {
        var text = "usage: \(program) TARGET FILE|DIR...   (replay inputs through TARGET)\n"
        #if FUZZING
            text = "usage: MARTLET_FUZZ_TARGET=TARGET \(program) [libFuzzer flags] [CORPUS...]\n"
        #endif
        text += "       \(program) --list\ntargets:\n"
        text += targets.map { "  \($0.name.padding(14)) \($0.summary)\n" }.joined()
        printError(text)
        exit(2)
    }

    static func printError(_ text: String) {
        _ = text.withCString { write(2, $0, strlen($0)) }
    }
}

#if FUZZING
    @_silgen_name("LLVMFuzzerRunDriver")
    func LLVMFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    /// libFuzzer's entry: one input through the selected target.
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
        FuzzDriver.selected?.body(size == 0 || data == nil ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
        return 0
    }
#endif

extension String {
    fileprivate func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}

/// Reading corpora without Foundation.
enum Replay {
    /// `path` itself, or the regular files directly inside it (sorted), for a directory.
    static func files(at path: String) -> [String] {
        guard let directory = opendir(path) else { return [path] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if entry.pointee.d_type == UInt8(DT_REG) { names.append(path + "/" + name) }
        }
        return names.sorted()
    }

    static func read(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            bytes += chunk.prefix(count)
            if count < chunk.count { return ferror(file) == 0 ? bytes : nil }
        }
    }
}
