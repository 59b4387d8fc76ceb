// The host-side fuzz targets (Targets.swift) under the shared driver: a corpus replayer in
// normal builds, libFuzzer's driver when scripts/fuzz builds it with -D FUZZING.
import MartletFuzzing

FuzzDriver.main(program: "martlet-fuzz", targets: targets)
