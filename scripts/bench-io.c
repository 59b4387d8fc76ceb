/* The host baseline of scripts/bench-vmm: the same requests the test guest sends through
 * virtio-blk, as pread/pwrite on the same file, with `depth` of them in flight (one thread
 * each), so the VMM's figures have a native figure next to them from the same run.
 * Usage: bench-io FILE read|write SIZE DEPTH N random|seq [direct]
 * `direct` opens FILE with O_DIRECT, as the VMM does for a disk with cache none.
 * Prints the seconds the N requests took. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fd, writing, sequential;
static uint64_t size, slots, per_thread;
static uint64_t next_slot;

static void *worker(void *arg) {
    uint64_t random = 0x9e3779b97f4a7c15ull ^ ((uint64_t)(uintptr_t)arg * 0x2545f4914f6cdd1dull);
    char *buffer = aligned_alloc(4096, size);
    if (!buffer) return (void *)1;
    memset(buffer, 0x5a, size);
    for (uint64_t i = 0; i < per_thread; i++) {
        uint64_t slot;
        if (sequential) {
            slot = __atomic_fetch_add(&next_slot, 1, __ATOMIC_RELAXED) % slots;
        } else {
            random ^= random << 13, random ^= random >> 7, random ^= random << 17;
            slot = random % slots;
        }
        ssize_t done = writing ? pwrite(fd, buffer, size, (off_t)(slot * size)) : pread(fd, buffer, size, (off_t)(slot * size));
        if (done != (ssize_t)size) {
            perror(writing ? "bench-io: pwrite" : "bench-io: pread");
            return (void *)1;
        }
    }
    free(buffer);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 7 && !(argc == 8 && strcmp(argv[7], "direct") == 0)) {
        fprintf(stderr, "usage: bench-io FILE read|write SIZE DEPTH N random|seq [direct]\n");
        return 2;
    }
    writing = strcmp(argv[2], "write") == 0;
    size = strtoull(argv[3], 0, 10);
    uint64_t depth = strtoull(argv[4], 0, 10), n = strtoull(argv[5], 0, 10);
    sequential = strcmp(argv[6], "seq") == 0;
    fd = open(argv[1], (writing ? O_RDWR : O_RDONLY) | (argc == 8 ? O_DIRECT : 0));
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    off_t end = lseek(fd, 0, SEEK_END);
    if (size == 0 || depth == 0 || depth > 256 || end < (off_t)size) {
        fprintf(stderr, "bench-io: SIZE must be at most the file's size and DEPTH 1..256\n");
        return 2;
    }
    slots = (uint64_t)end / size;
    per_thread = n / depth;
    pthread_t threads[256];
    struct timespec start, stop;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (uint64_t t = 0; t < depth; t++) pthread_create(&threads[t], 0, worker, (void *)(uintptr_t)t);
    int failed = 0;
    for (uint64_t t = 0; t < depth; t++) {
        void *result;
        pthread_join(threads[t], &result);
        failed |= result != 0;
    }
    clock_gettime(CLOCK_MONOTONIC, &stop);
    if (failed) return 1;
    printf("%.6f\n", (double)(stop.tv_sec - start.tv_sec) + (double)(stop.tv_nsec - start.tv_nsec) / 1e9);
    return 0;
}
