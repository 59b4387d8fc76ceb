/* The tiny 64-bit test guest of the MartletHost tests. Entered like Linux (64-bit mode,
 * identity-mapped paging, zero page in RSI), it prints a banner with its command line on
 * COM1, then sleeps in HLT, so the VM stays "running" until the host stops it. With "echo"
 * on the command line it polls the serial port instead and echoes console input (this keeps
 * a host CPU busy, so only tests of console input use it). "poweroff" on the command line
 * makes it power off through the ACPI PM1a port instead; "crash" makes it triple-fault. */
#include <stdint.h>

__asm__(".section .text.start, \"ax\"\n"
        ".global _start\n"
        "_start:\n"
        "  mov %rsi, %rdi\n"
        "  call guest_main\n"
        "1: cli\n"
        "  hlt\n"
        "  jmp 1b\n"
        ".text\n");

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

#define COM1 0x3f8
static void putc_raw(char c) {
    while (!(inb(COM1 + 5) & 0x20)) {
    }
    outb(COM1, (uint8_t)c);
}
static void puts_raw(const char *s) {
    while (*s) putc_raw(*s++);
}
static int has(const char *s, const char *word) {
    for (; s && *s; s++) {
        const char *a = s, *b = word;
        while (*b && *a == *b) a++, b++;
        if (!*b) return 1;
    }
    return 0;
}

void guest_main(const uint8_t *zero_page) {
    const char *cmdline = (const char *)(uint64_t)(*(const uint32_t *)(zero_page + 0x228));
    puts_raw("martlet host test guest: up, cmdline: ");
    puts_raw(cmdline ? cmdline : "(none)");
    puts_raw("\n");
    if (has(cmdline, "poweroff")) {
        puts_raw("powering off\n");
        outw(0x604, (5 << 10) | (1 << 13));
    }
    if (has(cmdline, "crash")) {
        puts_raw("crashing\n");
        __asm__ volatile("lidt 0; int3");
    }
    if (!has(cmdline, "echo")) return;
    /* Echo console input for a while by polling the line status register; polls are port
     * exits, so poll slowly between long pauses. */
    for (;;) {
        if (inb(COM1 + 5) & 0x01) {
            char c = (char)inb(COM1);
            puts_raw("echo: ");
            putc_raw(c);
            puts_raw("\n");
        }
        for (volatile int i = 0; i < 2000000; i++) __asm__ volatile("pause");
    }
}
