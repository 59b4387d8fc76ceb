#if canImport(Glibc)
    import Glibc
#endif

// The VMM lands with its own issue; until then say so instead of pretending.
let message = "martlet-vmm: not available yet in this build\n"
_ = message.withCString { write(2, $0, strlen($0)) }
exit(69)
