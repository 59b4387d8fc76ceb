#if FUZZING
    #if canImport(Glibc)
        import Glibc
    #endif

    /// The target named by MARTLET_FUZZ_TARGET, read on the first input (a global outside
    /// main.swift is initialised lazily, so it works under libFuzzer's main).
    let selectedTarget: FuzzTarget = {
        guard let name = getenv("MARTLET_FUZZ_TARGET").map({ String(cString: $0) }), let chosen = target(named: name) else {
            usage()
        }
        return chosen
    }()

    /// Runs libFuzzer with this process's arguments (SwiftPM makes main.swift the program's
    /// entry, so libFuzzer's own main does not run).
    func runFuzzer() -> Int32 {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        return LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) }
    }

    @_silgen_name("LLVMFuzzerRunDriver")
    func LLVMFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<Int32>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
    ) -> Int32

    /// libFuzzer's entry: one input through the selected target.
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
        selectedTarget.body(size == 0 || data == nil ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
        return 0
    }
#endif
