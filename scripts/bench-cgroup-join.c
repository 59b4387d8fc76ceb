/* The cost of putting a new process into a cgroup, the two ways the VMM's jail can: created
 * in it (clone3 with CLONE_INTO_CGROUP, cgroup v2) or joining after the fork (the child
 * writes "0" to cgroup.procs, which waits for an RCU grace period once the kernel's
 * cgroup lock has gone idle). A pause between spawns lets it go idle, as between VM starts.
 * Usage: bench-cgroup-join DIR clone3|join N PAUSE_MS
 * Prints the mean and the minimum milliseconds from the spawn to the child's exit. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* linux/sched.h's struct clone_args (5.7 layout); that header clashes with <sched.h>. */
struct clone_arguments {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};

static double milliseconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1e3 + now.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 5 || (strcmp(argv[2], "clone3") != 0 && strcmp(argv[2], "join") != 0)) {
        fprintf(stderr, "usage: %s DIR clone3|join N PAUSE_MS\n", argv[0]);
        return 2;
    }
    int created = strcmp(argv[2], "clone3") == 0, count = atoi(argv[3]), pause = atoi(argv[4]);
    char procs[4096];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", argv[1]);
    int directory = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory < 0) {
        perror(argv[1]);
        return 1;
    }
    double total = 0, fastest = 1e9;
    for (int index = 0; index < count; index++) {
        usleep(pause * 1000);
        double start = milliseconds();
        long pid;
        if (created) {
            struct clone_arguments arguments = {0};
            arguments.flags = 0x200000000ULL; /* CLONE_INTO_CGROUP */
            arguments.exit_signal = SIGCHLD;
            arguments.cgroup = (uint64_t)directory;
            pid = syscall(SYS_clone3, &arguments, sizeof arguments);
            if (pid == 0) _exit(0);
        } else {
            pid = syscall(SYS_clone, SIGCHLD, NULL, NULL, NULL, NULL);
            if (pid == 0) {
                int fd = open(procs, O_WRONLY);
                _exit(fd >= 0 && write(fd, "0", 1) == 1 ? 0 : 1);
            }
        }
        int status;
        if (pid < 0 || waitpid((pid_t)pid, &status, 0) < 0 || status != 0) {
            fprintf(stderr, "%s: spawn %d into %s failed\n", argv[2], index, argv[1]);
            return 1;
        }
        double elapsed = milliseconds() - start;
        total += elapsed;
        if (elapsed < fastest) fastest = elapsed;
    }
    printf("%.3f %.3f\n", total / count, fastest);
    return 0;
}
