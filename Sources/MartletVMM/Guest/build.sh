#!/usr/bin/env bash
# Builds the test guest: build.sh OUT.elf [OUT.bin]. The tests call it for the ELF; generate.sh
# for the flat binary embedded in martlet-vmm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
elf=$1
gcc -std=c11 -O2 -ffreestanding -fno-pic -fno-pie -no-pie -nostdlib -static -mno-red-zone \
    -mgeneral-regs-only -fno-stack-protector -fno-asynchronous-unwind-tables -mcmodel=small \
    -Wall -Werror -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-T,"$here/guest.ld" -o "$elf" "$here/guest.c"
if [ $# -ge 2 ]; then objcopy -O binary "$elf" "$2"; fi
