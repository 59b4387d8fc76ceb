#if defined(__linux__)
#include "CSeccomp.h"
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/capability.h>
#include <unistd.h>

const uint32_t CSECCOMP_ACT_ALLOW = SCMP_ACT_ALLOW;
const uint32_t CSECCOMP_ACT_TRAP = SCMP_ACT_TRAP;
const uint32_t CSECCOMP_ACT_LOG = SCMP_ACT_LOG;

#define NAME_COUNT 512
#define NAME_SIZE 32
static char names[NAME_COUNT][NAME_SIZE];

static size_t append(char *buffer, size_t used, size_t size, const char *text) {
    while (*text && used + 1 < size) buffer[used++] = *text++;
    return used;
}

static size_t append_number(char *buffer, size_t used, size_t size, long value) {
    char digits[24];
    size_t count = 0;
    unsigned long rest = value < 0 ? 0 : (unsigned long)value;
    do {
        digits[count++] = (char)('0' + rest % 10);
        rest /= 10;
    } while (rest && count < sizeof(digits));
    while (count && used + 1 < size) buffer[used++] = digits[--count];
    return used;
}

// Installed with SA_RESETHAND | SA_NODEFER: what follows meets the default action of SIGSYS,
// so the process ends with SIGSYS and the runner sees which signal ended it. A jailed VMM is
// pid 1 of its PID namespace, and the kernel drops a signal such a process sends itself while
// its action is the default (kill below); a syscall outside every allow-list is different:
// seccomp's SIGSYS is forced, and a forced signal with the default action ends even a
// namespace's pid 1. kexec_file_load is in no list (and, run, would fail without
// CAP_SYS_BOOT); kill stays for a filter set without it, _exit for anything else.
static void on_violation(int signal, siginfo_t *info, void *context) {
    (void)signal;
    (void)context;
    char line[128];
    size_t used = append(line, 0, sizeof(line), "martlet-vmm: killed by seccomp: ");
    int number = info->si_syscall;
    if (number >= 0 && number < NAME_COUNT && names[number][0]) {
        used = append(line, used, sizeof(line), names[number]);
    } else {
        used = append(line, used, sizeof(line), "syscall ");
        used = append_number(line, used, sizeof(line), number);
    }
    used = append(line, used, sizeof(line), " (not in this thread's allow-list)\n");
    ssize_t ignored = write(2, line, used);
    (void)ignored;
    syscall(SYS_kexec_file_load, -1, -1, 0, NULL, 0);
    kill(getpid(), SIGSYS);
    _exit(128 + SIGSYS);
}

int cseccomp_install_violation_handler(void) {
    for (int number = 0; number < NAME_COUNT; number++) {
        char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, number);
        if (name) {
            strncpy(names[number], name, NAME_SIZE - 1);
            free(name);
        }
    }
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_violation;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_NODEFER;
    return sigaction(SIGSYS, &action, NULL) == 0 ? 0 : -errno;
}
int cseccomp_set_no_new_privs(void) {
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 ? 0 : -errno;
}

int cseccomp_drop_capabilities(void) {
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof(data));
    // A thread started after the drop inherited empty sets: nothing to do, and its filter
    // need not allow capset.
    if (syscall(SYS_capget, &header, data) != 0) return -errno;
    int held = 0;
    for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++) held |= data[i].effective | data[i].permitted | data[i].inheritable;
    if (!held) return 0;
    // Without CAP_SETPCAP (an unprivileged VMM) the bounding set stays, which no_new_privs
    // makes harmless: nothing can raise the permitted set again.
    if (prctl(PR_CAPBSET_READ, CAP_SETPCAP, 0, 0, 0) == 1) {
        for (int capability = 0; capability <= CAP_LAST_CAP; capability++) {
            if (prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 && errno != EINVAL && errno != EPERM) return -errno;
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -errno;
    memset(data, 0, sizeof(data));
    return syscall(SYS_capset, &header, data) == 0 ? 0 : -errno;
}

int cseccomp_thread_mode(void) {
    int mode = prctl(PR_GET_SECCOMP, 0, 0, 0, 0);
    return mode < 0 ? -errno : mode;
}
#endif
