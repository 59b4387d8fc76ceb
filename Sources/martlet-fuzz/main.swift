#if canImport(Glibc)
    import Glibc
#endif

// The parsers and guest-facing decoders that take input from outside, as fuzz targets.
//
// Built normally it replays inputs: `martlet-fuzz TARGET FILE|DIR...` runs each file through
// TARGET once (the committed corpora and every crash found become regression inputs that
// `make test` replays). Built with `-sanitize=fuzzer,address -D FUZZING` (scripts/fuzz) it is
// libFuzzer's driver: `MARTLET_FUZZ_TARGET=TARGET martlet-fuzz [libFuzzer flags] [CORPUS...]`.

#if FUZZING
    exit(runFuzzer())
#else
    let arguments = CommandLine.arguments
    guard arguments.count >= 3, let chosen = target(named: arguments[1]) else { usage() }
    var replayed = 0
    for path in arguments.dropFirst(2) {
        for file in Replay.files(at: path) {
            guard let bytes = Replay.read(file) else {
                printError("martlet-fuzz: cannot read '\(file)'\n")
                exit(1)
            }
            chosen.body(bytes)
            replayed += 1
        }
    }
    print("martlet-fuzz: \(chosen.name): \(replayed) inputs replayed, none crashed")
#endif

