# Two commands for a fresh Debian 12 machine (as root):
#   make iso    set up, build release binaries, build the ISO of profiles/default into out/
#   make test   set up and run every test
# swift on PATH, else the toolchain at /opt/swift (a shell that did not read the login profile).
SWIFT ?= $(or $(shell command -v swift 2>/dev/null),/opt/swift/usr/bin/swift)
PROFILE ?= profiles/default
OUT ?= out
# Where SwiftPM builds: .build, unless BUILD_DIR names another folder (CI keeps it in
# /var/cache, so the dependencies compile once per toolchain rather than in every clone).
BUILD_DIR ?= .build
SCRATCH = --scratch-path $(BUILD_DIR)
RELEASE_FLAGS = -c release --static-swift-stdlib $(SCRATCH)
RELEASE_BIN = $(shell $(SWIFT) build $(RELEASE_FLAGS) --show-bin-path 2>/dev/null)

.PHONY: setup build release iso test unit fuzz-smoke e2e bench-build fuzz clean
setup:
	bash scripts/setup

build: setup
	$(SWIFT) build $(SCRATCH)

release: setup
	$(SWIFT) build $(RELEASE_FLAGS)

iso: release
	$(RELEASE_BIN)/martlet build --profile $(PROFILE) --output $(OUT)

# Unit and integration tests (root: loop devices, KVM, QEMU).
unit: release
	MARTLET_RELEASE_BIN=$(RELEASE_BIN) $(SWIFT) test $(SCRATCH) --skip MartletE2ETests

# End to end in QEMU: build the ISO of profiles/default, install it unattended on BIOS (USB
# stick) and UEFI (CD), boot the installed host and check it over SSH; bad answer files are
# refused. One PASS/FAIL line per scenario; logs of failures in artifacts/e2e/.
e2e: release
	MARTLET_RELEASE_BIN=$(RELEASE_BIN) $(SWIFT) test $(SCRATCH) --filter MartletE2ETests

test: unit fuzz-smoke e2e

bench-build: release
	MARTLET_RELEASE_BIN=$(RELEASE_BIN) bash scripts/bench-build

# libFuzzer over the parsers and decoders (SECONDS per target); `make test` replays the corpora.
SECONDS_PER_TARGET ?= 60
fuzz: setup
	bash scripts/fuzz $(SECONDS_PER_TARGET)

# Every fuzz target of both programs briefly (martlet-fuzz-vmm's 6 and martlet-fuzz's 4, 15 s
# each, plus their sanitizer builds: 5 min 21 s in all from an empty .build-fuzz on the 2-core
# build machine at a load average of 4-6, of which 2 min 37 s were the two builds);
# a crash fails `make test`. martlet-fuzz links MartletHostModel, not MartletHost, so its
# sanitizer build compiles no HTTPS stack. `make test` also replays every committed corpus
# input of both (FuzzCorpusTests).
FUZZ_SMOKE_SECONDS ?= 15
fuzz-smoke: setup
	bash scripts/fuzz $(FUZZ_SMOKE_SECONDS)

clean:
	rm -rf $(BUILD_DIR) $(OUT)
