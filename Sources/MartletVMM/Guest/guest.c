/* The tiny 64-bit test guest of martlet-vmm and of the MartletHost tests. Entered like Linux
 * (64-bit mode, identity-mapped paging, zero page in RSI), it reads "test=NAME" from the command
 * line and exercises one part of the VMM: serial, port I/O, i8042 reset, triple fault, SMP
 * (APIC IDs), virtio-blk, virtio-rng, virtio-net, console input, or the polling benchmarks. It ends by
 * powering off through the ACPI PM1a control port; "halt" instead prints its command line and
 * sleeps in HLT, so the VM stays running until the host stops it.
 * Built twice: as an ELF by the test suites, and as the flat binary embedded for `selftest`. */
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
static inline uint32_t mmio_read(uint64_t addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write(uint64_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

#define COM1 0x3f8
static volatile int print_lock;

static void putc_raw(char c) {
    while (!(inb(COM1 + 5) & 0x20)) {
    }
    outb(COM1, (uint8_t)c);
}
static void puts_raw(const char *s) {
    while (*s) putc_raw(*s++);
}
static void lock(void) {
    while (__atomic_test_and_set(&print_lock, __ATOMIC_ACQUIRE)) {
    }
}
static void unlock(void) { __atomic_clear(&print_lock, __ATOMIC_RELEASE); }
static void print(const char *s) {
    lock();
    puts_raw(s);
    unlock();
}
static void put_hex(uint64_t v, int digits) {
    for (int i = digits - 1; i >= 0; i--) putc_raw("0123456789abcdef"[(v >> (4 * i)) & 0xf]);
}
static void put_dec(uint64_t v) {
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_raw(buf + i);
}

static void power_off(void) {
    outw(0x604, (5 << 10) | (1 << 13)); /* SLP_TYP = S5, SLP_EN */
    for (;;) __asm__ volatile("cli; hlt");
}

/* The value of "key=" in the command line, or 0. */
static const char *cmdline;
static const char *arg(const char *key) {
    for (const char *p = cmdline; p && *p; p++) {
        if (p != cmdline && p[-1] != ' ') continue;
        const char *k = key, *q = p;
        while (*k && *q == *k) k++, q++;
        if (!*k) return q;
    }
    return 0;
}
static int arg_is(const char *key, const char *value) {
    const char *v = arg(key);
    if (!v) return 0;
    while (*value && *v == *value) v++, value++;
    return !*value && (*v == 0 || *v == ' ');
}
static uint64_t arg_number(const char *key, uint64_t fallback) {
    const char *v = arg(key);
    if (!v || *v < '0' || *v > '9') return fallback;
    uint64_t n = 0;
    while (*v >= '0' && *v <= '9') n = n * 10 + (uint64_t)(*v++ - '0');
    return n;
}

static uint32_t apic_id(void) {
    uint32_t a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    return b >> 24;
}

/* ---- virtio-mmio (modern) driver, polling ---- */
#define VIRTIO_BASE 0xd0000000ull
/* Queue q's rings live at 0x300000 + q * 0x10000: descriptors, then avail, then used, room
 * for 256 entries each. */
#define Q_DESC(q) (0x300000ull + 0x10000ull * (q))
#define Q_AVAIL(q) (Q_DESC(q) + 0x1000)
#define Q_USED(q) (Q_DESC(q) + 0x2000)
#define BUF_HDR 0x341000ull
#define BUF_DATA 0x342000ull
#define BUF_STATUS 0x344000ull
#define NET_RX 0x350000ull
#define NET_TX 0x360000ull
/* The benchmark's requests: up to 64 headers and status bytes, data from 5 MiB to 13 MiB. */
#define BENCH_HDR 0x400000ull
#define BENCH_STATUS 0x401000ull
#define BENCH_DATA 0x500000ull
#define BENCH_DATA_MAX 0x800000ull

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};

static uint64_t dev;
static uint16_t avail_idx[4], used_seen[4];
/* Entries per queue: 8 for the tests, more for the benchmark's chains in flight. */
static uint32_t qsize = 8;

static uint64_t find_device(uint32_t id) {
    for (int i = 0; i < 16; i++) {
        uint64_t base = VIRTIO_BASE + 0x1000ull * i;
        if (mmio_read(base) == 0x74726976 && mmio_read(base + 4) == 2 && mmio_read(base + 8) == id) return base;
    }
    return 0;
}

static int virtio_init(uint32_t id, uint32_t wanted_low, int queues) {
    dev = find_device(id);
    if (!dev) return -1;
    mmio_write(dev + 0x70, 0);
    mmio_write(dev + 0x70, 1 | 2); /* ACKNOWLEDGE | DRIVER */
    mmio_write(dev + 0x14, 1);
    if (!(mmio_read(dev + 0x10) & 1)) return -2; /* VIRTIO_F_VERSION_1 */
    mmio_write(dev + 0x14, 0);
    uint32_t low = mmio_read(dev + 0x10) & wanted_low;
    mmio_write(dev + 0x24, 0);
    mmio_write(dev + 0x20, low);
    mmio_write(dev + 0x24, 1);
    mmio_write(dev + 0x20, 1);
    mmio_write(dev + 0x70, 1 | 2 | 8);
    if (!(mmio_read(dev + 0x70) & 8)) return -3;
    for (int q = 0; q < queues; q++) {
        mmio_write(dev + 0x30, (uint32_t)q);
        if (mmio_read(dev + 0x34) < qsize) return -4;
        mmio_write(dev + 0x38, qsize);
        mmio_write(dev + 0x80, (uint32_t)Q_DESC(q));
        mmio_write(dev + 0x84, 0);
        mmio_write(dev + 0x90, (uint32_t)Q_AVAIL(q));
        mmio_write(dev + 0x94, 0);
        mmio_write(dev + 0xa0, (uint32_t)Q_USED(q));
        mmio_write(dev + 0xa4, 0);
        mmio_write(dev + 0x44, 1);
        avail_idx[q] = used_seen[q] = 0;
    }
    mmio_write(dev + 0x70, 1 | 2 | 8 | 4);
    return mmio_read(dev + 0x70) & 0x40 ? -5 : 0;
}

/* Makes the chain at descriptor 0 of queue q available and notifies the device. */
static void post(int q) {
    volatile uint16_t *avail = (volatile uint16_t *)Q_AVAIL(q);
    avail[2 + (avail_idx[q] % qsize)] = 0;
    barrier();
    avail[1] = ++avail_idx[q];
    barrier();
    mmio_write(dev + 0x50, (uint32_t)q);
}

/* The benchmarks leave InterruptStatus alone: its read and ACK would be two exits a request. */
static int skip_ack;

/* Polls queue q for its next used element; returns its length, or -1 after `spins` reads of
 * the status register. That read (a VM exit) comes every 1024 polls of the ring only: with
 * ioeventfd the device works on another thread while this one spins. */
static int64_t wait_used(int q, uint64_t spins) {
    volatile uint16_t *used = (volatile uint16_t *)Q_USED(q);
    for (uint64_t n = 0; used[1] == used_seen[q]; n++) {
        if ((n & 1023) == 1023 && ((mmio_read(dev + 0x70) & 0x40) || spins-- == 0)) return -1;
    }
    used_seen[q]++;
    if (!skip_ack) mmio_write(dev + 0x64, mmio_read(dev + 0x60));
    return *(volatile uint32_t *)(Q_USED(q) + 4 + 8 * ((used_seen[q] - 1) % qsize) + 4);
}

static int64_t submit(void) {
    post(0);
    return wait_used(0, ~0ull);
}

/* One virtio-blk request: type, sector, data length (0 for none). Returns the status byte. */
static int blk_request(uint32_t type, uint64_t sector, uint32_t len) {
    struct desc *d = (struct desc *)Q_DESC(0);
    volatile uint32_t *hdr = (volatile uint32_t *)BUF_HDR;
    hdr[0] = type;
    hdr[1] = 0;
    *(volatile uint64_t *)(BUF_HDR + 8) = sector;
    *(volatile uint8_t *)BUF_STATUS = 0xff;
    d[0] = (struct desc){BUF_HDR, 16, 1, 1};
    if (len) {
        d[1] = (struct desc){BUF_DATA, len, (uint16_t)(1 | (type == 1 ? 0 : 2)), 2};
        d[2] = (struct desc){BUF_STATUS, 1, 2, 0};
    } else {
        d[0].next = 2;
        d[2] = (struct desc){BUF_STATUS, 1, 2, 0};
    }
    if (submit() < 0) return -1;
    return *(volatile uint8_t *)BUF_STATUS;
}

static void test_blk(void) {
    int r = virtio_init(2, 1u << 9, 1);
    if (r) {
        print("blk: init failed ");
        put_dec((uint64_t)-r);
        print("\n");
        return;
    }
    volatile char *data = (volatile char *)BUF_DATA;
    if (blk_request(0, 0, 512) != 0) {
        print("blk: read failed\n");
        return;
    }
    lock();
    puts_raw("blk read: ");
    for (int i = 0; i < 64 && data[i] && data[i] != '\n'; i++) putc_raw(data[i]);
    puts_raw("\n");
    unlock();
    const char *msg = "written by the martlet guest";
    for (int i = 0; i < 512; i++) data[i] = 0;
    for (int i = 0; msg[i]; i++) data[i] = msg[i];
    if (blk_request(1, 1, 512) != 0) {
        print("blk: write failed\n");
        return;
    }
    if (blk_request(4, 0, 0) != 0) {
        print("blk: flush failed\n");
        return;
    }
    for (int i = 0; i < 20; i++) data[i] = 0;
    if (blk_request(8, 0, 20) == 0) {
        lock();
        puts_raw("blk id: ");
        for (int i = 0; i < 20 && data[i]; i++) putc_raw(data[i]);
        puts_raw("\n");
        unlock();
    }
    print("blk ok\n");
}

static void test_rng(void) {
    if (virtio_init(4, 0, 1)) {
        print("rng: init failed\n");
        return;
    }
    struct desc *d = (struct desc *)Q_DESC(0);
    d[0] = (struct desc){BUF_DATA, 32, 2, 0};
    int64_t n = submit();
    lock();
    puts_raw("rng bytes: ");
    put_dec((uint64_t)n);
    puts_raw(" ");
    for (int i = 0; i < 32; i++) put_hex(((volatile uint8_t *)BUF_DATA)[i], 2);
    puts_raw("\n");
    unlock();
}

/* virtio-net: an ARP request for 10.77.0.1 from 10.77.0.2 out through the tap, and the
 * reply (from the test's network namespace) back in. */
static void test_net(void) {
    int r = virtio_init(1, 1u << 5, 2);
    if (r) {
        print("net: init failed\n");
        return;
    }
    uint8_t mac[6];
    for (int i = 0; i < 6; i++) mac[i] = (uint8_t)(mmio_read(dev + 0x100 + (uint32_t)(i & ~3)) >> (8 * (i & 3)));
    lock();
    puts_raw("net mac: ");
    for (int i = 0; i < 6; i++) {
        put_hex(mac[i], 2);
        if (i < 5) putc_raw(':');
    }
    puts_raw("\n");
    unlock();
    ((struct desc *)Q_DESC(0))[0] = (struct desc){NET_RX, 2048, 2, 0};
    post(0);
    volatile uint8_t *f = (volatile uint8_t *)NET_TX;
    for (int i = 0; i < 12 + 42; i++) f[i] = 0;
    volatile uint8_t *e = f + 12;
    for (int i = 0; i < 6; i++) e[i] = 0xff, e[6 + i] = mac[i];
    e[12] = 0x08, e[13] = 0x06;                        /* ARP */
    e[14] = 0, e[15] = 1, e[16] = 0x08, e[17] = 0;     /* Ethernet, IPv4 */
    e[18] = 6, e[19] = 4, e[20] = 0, e[21] = 1;        /* request */
    for (int i = 0; i < 6; i++) e[22 + i] = mac[i];
    e[28] = 10, e[29] = 77, e[30] = 0, e[31] = 2;      /* sender 10.77.0.2 */
    e[38] = 10, e[39] = 77, e[40] = 0, e[41] = 1;      /* target 10.77.0.1 */
    ((struct desc *)Q_DESC(1))[0] = (struct desc){NET_TX, 12 + 42, 0, 0};
    /* Like any network stack, ask again when no reply comes: a tap whose carrier just came up
     * may drop the first reply. Unrelated frames are skipped (the buffer is posted again). */
    volatile uint8_t *in = (volatile uint8_t *)NET_RX + 12;
    int found = 0;
    for (int attempt = 0; attempt < 15 && !found; attempt++) {
        post(1);
        if (wait_used(1, ~0ull) < 0) {
            print("net: transmit failed\n");
            return;
        }
        if (attempt == 0) print("net tx done\n");
        int64_t n = wait_used(0, 30000);
        if (n < 0) continue;
        found = n >= 12 + 42 && in[12] == 0x08 && in[13] == 0x06 && in[21] == 2;
        if (!found) post(0);
    }
    if (!found) {
        print("net: no ARP reply\n");
        return;
    }
    lock();
    puts_raw("net rx: arp reply from ");
    for (int i = 0; i < 4; i++) {
        put_dec(in[28 + i]);
        if (i < 3) putc_raw('.');
    }
    puts_raw("\n");
    unlock();
}

static volatile uint32_t cpus_done;

static void test_smp(uint32_t id) {
    uint64_t n = arg_number("n=", 1);
    lock();
    puts_raw("cpu ");
    put_dec(id);
    puts_raw("\n");
    unlock();
    __atomic_add_fetch(&cpus_done, 1, __ATOMIC_SEQ_CST);
    if (id != 0) return;
    while (__atomic_load_n(&cpus_done, __ATOMIC_SEQ_CST) < n) {
    }
    print("smp ok\n");
}

static uint64_t bench_slots, bench_next, bench_random = 0x9e3779b97f4a7c15ull;
static int bench_seq;

/* Fills the header of benchmark request i with the next offset and makes it available. */
static void bench_start(uint64_t i, int write, uint64_t size) {
    uint64_t slot;
    if (bench_seq) {
        slot = bench_next++ % bench_slots;
    } else {
        bench_random ^= bench_random << 13, bench_random ^= bench_random >> 7, bench_random ^= bench_random << 17;
        slot = bench_random % bench_slots;
    }
    volatile uint32_t *hdr = (volatile uint32_t *)(BENCH_HDR + 16 * i);
    hdr[0] = write ? 1 : 0;
    hdr[1] = 0;
    *(volatile uint64_t *)(hdr + 2) = slot * (size / 512);
    *(volatile uint8_t *)(BENCH_STATUS + i) = 0xff;
    volatile uint16_t *avail = (volatile uint16_t *)Q_AVAIL(0);
    avail[2 + avail_idx[0] % qsize] = (uint16_t)(3 * i);
    avail_idx[0]++;
}

/* bench-blk: n requests of size= bytes (op=read or op=write), qd= chains in flight (all made
 * available before one notify, and refilled in batches as they complete), at random
 * size-aligned offsets or, with seq=1, one after the other; wrapping at the disk's end. With
 * EVENT_IDX (unless noevent=1) it asks for no interrupts and notifies only when asked to. */
static void bench_blk(void) {
    uint64_t n = arg_number("n=", 1000), size = arg_number("size=", 4096), qd = arg_number("qd=", 1);
    int write = arg_is("op=", "write");
    bench_seq = arg_is("seq=", "1");
    if (qd < 1 || qd > 64 || size < 512 || size % 512 || size > (1u << 20) || qd * size > BENCH_DATA_MAX) {
        print("bench-blk: qd must be 1..64, size 512..1048576 in sectors, qd*size at most 8 MiB\n");
        return;
    }
    qsize = 256;
    /* VIRTIO_RING_F_EVENT_IDX, unless noevent=1: ask for no interrupts (this guest polls)
     * and notify only when the device asked for it. */
    if (virtio_init(2, arg_is("noevent=", "1") ? 0 : 1u << 29, 1)) {
        print("bench-blk: init failed\n");
        return;
    }
    skip_ack = 1;
    int event_index = (mmio_read(dev + 0x10) & (1u << 29)) && !arg_is("noevent=", "1");
    volatile uint16_t *used_event = (volatile uint16_t *)(Q_AVAIL(0) + 4 + 2 * qsize);
    volatile uint16_t *avail_event = (volatile uint16_t *)(Q_USED(0) + 4 + 8 * qsize);
    bench_slots = ((uint64_t)mmio_read(dev + 0x104) << 32 | mmio_read(dev + 0x100)) * 512 / size;
    if (bench_slots == 0) {
        print("bench-blk: the disk is smaller than one request\n");
        return;
    }
    struct desc *d = (struct desc *)Q_DESC(0);
    volatile uint16_t *avail = (volatile uint16_t *)Q_AVAIL(0);
    volatile uint16_t *used = (volatile uint16_t *)Q_USED(0);
    /* Request i uses descriptors 3i..3i+2, its header, status byte and data slot. */
    for (uint64_t i = 0; i < qd; i++) {
        d[3 * i] = (struct desc){BENCH_HDR + 16 * i, 16, 1, (uint16_t)(3 * i + 1)};
        d[3 * i + 1] = (struct desc){BENCH_DATA + size * i, (uint32_t)size, (uint16_t)(1 | (write ? 0 : 2)), (uint16_t)(3 * i + 2)};
        d[3 * i + 2] = (struct desc){BENCH_STATUS + i, 1, 2, 0};
    }
    uint64_t started = 0, completed = 0;
    while (started < n && started < qd) bench_start(started++, write, size);
    while (completed < n) {
        if (avail[1] != avail_idx[0]) {
            uint16_t old = avail[1];
            /* Half the index space ahead: the used index never passes it. */
            *used_event = (uint16_t)(used_seen[0] + 0x8000);
            barrier();
            avail[1] = avail_idx[0];
            barrier();
            /* vring_need_event: notify if the new entries passed the device's avail_event. */
            if (!event_index || (uint16_t)(avail_idx[0] - *avail_event - 1) < (uint16_t)(avail_idx[0] - old))
                mmio_write(dev + 0x50, 0);
        }
        /* Polls the ring, and the status register only every 2^20 reads (about a millisecond):
         * that read is a VM exit, decoded by KVM, and it takes the transport's lock, so
         * frequent ones would compete with the device's I/O thread for what it measures. */
        for (uint64_t spin = 0; used[1] == used_seen[0]; spin++) {
            if ((spin & 0xfffff) == 0xfffff && (mmio_read(dev + 0x70) & 0x40)) {
                print("bench-blk: the device failed\n");
                return;
            }
        }
        while (used[1] != used_seen[0]) {
            uint32_t head = *(volatile uint32_t *)(Q_USED(0) + 4 + 8 * (used_seen[0] % qsize));
            used_seen[0]++;
            completed++;
            if (*(volatile uint8_t *)(BENCH_STATUS + head / 3) != 0) {
                print("bench-blk: request failed\n");
                return;
            }
            if (started < n) bench_start(head / 3, write, size), started++;
        }
    }
    print("bench-blk done\n");
}

/* blk-mq: with VIRTIO_BLK_F_MQ, 8 writes of 1 KiB in flight on each of the device's queues
 * (up to 4), then the same sectors read back the same way into cleared buffers; prints an
 * FNV-1a sum of what was read, for the host to compare with its own sum of the file. Request
 * r (queue r / 8) covers sectors 2r and 2r+1 and is filled with bytes r * 131 + offset. */
static int blk_mq_round(int queues, int write) {
    for (int q = 0; q < queues; q++) {
        struct desc *d = (struct desc *)Q_DESC(q);
        volatile uint16_t *avail = (volatile uint16_t *)Q_AVAIL(q);
        for (int i = 0; i < 8; i++) {
            uint64_t r = (uint64_t)(8 * q + i);
            volatile uint32_t *hdr = (volatile uint32_t *)(BENCH_HDR + 16 * r);
            hdr[0] = write ? 1 : 0;
            hdr[1] = 0;
            *(volatile uint64_t *)(hdr + 2) = 2 * r;
            *(volatile uint8_t *)(BENCH_STATUS + r) = 0xff;
            d[3 * i] = (struct desc){BENCH_HDR + 16 * r, 16, 1, (uint16_t)(3 * i + 1)};
            d[3 * i + 1] = (struct desc){BENCH_DATA + 1024 * r, 1024, (uint16_t)(1 | (write ? 0 : 2)), (uint16_t)(3 * i + 2)};
            d[3 * i + 2] = (struct desc){BENCH_STATUS + r, 1, 2, 0};
            avail[2 + avail_idx[q]++ % qsize] = (uint16_t)(3 * i);
        }
        barrier();
        avail[1] = avail_idx[q];
    }
    barrier();
    for (int q = 0; q < queues; q++) mmio_write(dev + 0x50, (uint32_t)q);
    for (int q = 0; q < queues; q++) {
        volatile uint16_t *used = (volatile uint16_t *)Q_USED(q);
        for (uint64_t spin = 0; used[1] != avail_idx[q]; spin++) {
            if ((spin & 0xfffff) == 0xfffff && (mmio_read(dev + 0x70) & 0x40)) return -1;
        }
        used_seen[q] = avail_idx[q];
    }
    for (int r = 0; r < 8 * queues; r++) {
        if (*(volatile uint8_t *)(BENCH_STATUS + r) != 0) return -1;
    }
    return 0;
}

static void test_blk_mq(void) {
    uint64_t base = find_device(2);
    int queues = base && (mmio_read(base + 0x10) & (1u << 12)) ? (int)(mmio_read(base + 0x120) >> 16) : 1;
    if (queues > 4) queues = 4;
    qsize = 32;
    if (virtio_init(2, 1u << 12, queues)) {
        print("blk-mq: init failed\n");
        return;
    }
    volatile uint8_t *data = (volatile uint8_t *)BENCH_DATA;
    for (uint64_t i = 0; i < 1024ull * 8 * (uint64_t)queues; i++) data[i] = (uint8_t)((i / 1024) * 131 + i % 1024);
    if (blk_mq_round(queues, 1)) {
        print("blk-mq: write failed\n");
        return;
    }
    for (uint64_t i = 0; i < 1024ull * 8 * (uint64_t)queues; i++) data[i] = 0;
    if (blk_mq_round(queues, 0)) {
        print("blk-mq: read failed\n");
        return;
    }
    uint64_t sum = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < 1024ull * 8 * (uint64_t)queues; i++) sum = (sum ^ data[i]) * 0x100000001b3ull;
    lock();
    puts_raw("blk-mq queues=");
    put_dec((uint64_t)queues);
    puts_raw(" sum=");
    put_hex(sum, 16);
    puts_raw("\n");
    unlock();
}

void guest_main(const uint8_t *zero_page) {
    uint32_t id = apic_id();
    cmdline = (const char *)(uint64_t)(*(const uint32_t *)(zero_page + 0x228));
    if (id == 0) {
        if (*(const uint32_t *)(zero_page + 0x202) != 0x53726448) puts_raw("no zero page in RSI\n");
        const char *name = arg("test=");
        lock();
        puts_raw("martlet test guest: test=");
        while (name && *name && *name != ' ') putc_raw(*name++);
        puts_raw("\n");
        unlock();
    }
    if (arg_is("test=", "smp")) {
        test_smp(id);
        if (id != 0) return;
    } else if (id != 0) {
        return;
    } else if (arg_is("test=", "serial")) {
        print("hello from the martlet test guest\n");
    } else if (arg_is("test=", "portio")) {
        int bad = 0;
        for (int i = 0; i < 256; i++) {
            outb(COM1 + 7, (uint8_t)i);
            if (inb(COM1 + 7) != i) bad++;
        }
        print(bad ? "portio mismatch\n" : "portio ok\n");
    } else if (arg_is("test=", "reset")) {
        print("resetting\n");
        outb(0x64, 0xfe);
        for (;;) __asm__ volatile("cli; hlt");
    } else if (arg_is("test=", "triple-fault")) {
        /* No IDT at all: the invalid opcode cannot be delivered, nor the double fault after it. */
        print("triple fault next\n");
        static const struct {
            uint16_t limit;
            uint64_t base;
        } __attribute__((packed)) no_idt = {0, 0};
        __asm__ volatile("lidt %0; ud2" : : "m"(no_idt));
    } else if (arg_is("test=", "blk") || arg_is("test=", "selftest")) {
        test_blk();
    } else if (arg_is("test=", "echo")) {
        char line[80];
        int n = 0;
        for (;;) {
            while (!(inb(COM1 + 5) & 1)) {
            }
            char c = (char)inb(COM1);
            if (c == '\n' || n == (int)sizeof(line) - 1) break;
            line[n++] = c;
        }
        line[n] = 0;
        print("echo: ");
        print(line);
        print("\n");
    } else if (arg_is("test=", "net")) {
        test_net();
    } else if (arg_is("test=", "reset-once")) {
        /* First boot: leave a mark on the disk and reset; after the VMM restarts: power off. */
        volatile char *data = (volatile char *)BUF_DATA;
        if (virtio_init(2, 0, 1) || blk_request(0, 0, 512) != 0) {
            print("reset-once: disk failed\n");
        } else if (data[0] == 'R' && data[1] == 'S') {
            print("second boot after reset\n");
        } else {
            data[0] = 'R', data[1] = 'S';
            blk_request(1, 0, 512);
            blk_request(4, 0, 0);
            print("first boot, resetting\n");
            outb(0x64, 0xfe);
            for (;;) __asm__ volatile("cli; hlt");
        }
    } else if (arg_is("test=", "blk-mq")) {
        test_blk_mq();
    } else if (arg_is("test=", "rng")) {
        test_rng();
    } else if (arg_is("test=", "bench-pio")) {
        uint64_t n = arg_number("n=", 100000);
        for (uint64_t i = 0; i < n; i++) outb(COM1 + 7, (uint8_t)i);
        print("bench-pio done\n");
    } else if (arg_is("test=", "bench-blk")) {
        bench_blk();
    } else if (arg_is("test=", "poweroff")) {
        print("powering off\n");
    } else if (arg_is("test=", "halt")) {
        lock();
        puts_raw("halting, cmdline: ");
        puts_raw(cmdline);
        puts_raw("\n");
        unlock();
        return;
    }
    print("guest done\n");
    power_off();
}
