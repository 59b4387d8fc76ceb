#!/usr/bin/env bash
# Builds the MartletHost test guest: build.sh OUT.elf
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gcc -std=c11 -O2 -ffreestanding -fno-pic -fno-pie -no-pie -nostdlib -static -mno-red-zone \
    -mgeneral-regs-only -fno-stack-protector -fno-asynchronous-unwind-tables -mcmodel=small \
    -Wall -Werror -Wl,--build-id=none -Wl,--no-warn-rwx-segments -Wl,-T,"$here/guest.ld" -o "$1" "$here/guest.c"
