#if defined(__linux__)
#define _GNU_SOURCE
#include "CMartletSystem.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <pthread.h>
#include <unistd.h>

int martlet_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int martlet_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}
int martlet_pipe2(int fds[2], int flags) {
    return pipe2(fds, flags);
}

int martlet_accept4(int fd, int flags) {
    return accept4(fd, NULL, NULL, flags);
}

// The jailed child below runs only system calls: it is a raw clone of a multi-threaded
// process, so glibc's locks, allocator and thread list are in whatever state the parent's
// other threads left them. setgroups/setresgid/setresuid in particular go through
// syscall(2), not glibc's wrappers, which would signal the parent's threads.

// clone3's argument (linux/sched.h's struct clone_args, kernel 5.7 layout), spelled out here:
// that header and glibc's <sched.h> define the same CLONE_* names.
typedef struct {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
} jail_clone_args;
#define JAIL_CLONE_INTO_CGROUP 0x200000000ULL

static __attribute__((noreturn)) void jail_fail(int pipe_fd, int step, int entry) {
    martlet_jail_failure failure = {step, entry, errno};
    ssize_t ignored = write(pipe_fd, &failure, sizeof failure);
    (void)ignored;
    _exit(127);
}

/// `root` + `target` into `buffer`; 0, or -1 (ENAMETOOLONG) when it does not fit.
static int jail_path(char *buffer, size_t size, const char *root, const char *target) {
    size_t root_length = strlen(root), target_length = strlen(target);
    if (root_length + target_length + 1 > size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buffer, root, root_length);
    memcpy(buffer + root_length, target, target_length + 1);
    return 0;
}

/// mkdir -p of every directory above `path` that lies below `root_length` characters.
static int jail_parents(char *path, size_t root_length) {
    for (char *slash = path + root_length + 1; (slash = strchr(slash, '/')) != NULL; slash++) {
        *slash = 0;
        int result = mkdir(path, 0755);
        *slash = '/';
        if (result != 0 && errno != EEXIST) return -1;
    }
    return 0;
}

static __attribute__((noreturn)) void jail_child(
    int pipe_fd, const char *root, const martlet_jail_entry *entries, int entry_count,
    uid_t uid, gid_t gid, const gid_t *groups, int group_count,
    const char *const *cgroup_procs, int cgroup_count, const int stdio[3],
    const char *path, char *const argv[], char *const envp[]) {
    char buffer[4096];
    size_t root_length = strlen(root);
    for (int fd = 0; fd < 3; fd++) {
        if (stdio[fd] != fd && dup2(stdio[fd], fd) < 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_STDIO, -1);
    }
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        for (int fd = 3; fd < 4096; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    for (int index = 0; index < cgroup_count; index++) {
        int fd = open(cgroup_procs[index], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) jail_fail(pipe_fd, MARTLET_JAIL_STEP_CGROUP, index);
        close(fd);
    }
    // The directories below are for the VMM's user to walk through: 0755 whatever the
    // caller's umask; the program gets the caller's umask back.
    mode_t umask_before = umask(0);
    // Nothing mounted here propagates back to the host.
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_PRIVATE, -1);
    if (mount("martlet-jail", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=4096") != 0)
        jail_fail(pipe_fd, MARTLET_JAIL_STEP_TMPFS, -1);
    for (int index = 0; index < entry_count; index++) {
        const martlet_jail_entry *entry = &entries[index];
        if (jail_path(buffer, sizeof buffer, root, entry->target) != 0 || jail_parents(buffer, root_length) != 0)
            jail_fail(pipe_fd, MARTLET_JAIL_STEP_MKDIR, index);
        if (entry->kind == MARTLET_JAIL_SYMLINK) {
            if (symlink(entry->source, buffer) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_SYMLINK, index);
            continue;
        }
        struct stat info;
        if (stat(entry->source, &info) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_BIND, index);
        if (S_ISDIR(info.st_mode)) {
            if (mkdir(buffer, 0755) != 0 && errno != EEXIST) jail_fail(pipe_fd, MARTLET_JAIL_STEP_MOUNTPOINT, index);
        } else {
            int fd = open(buffer, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
            if (fd < 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_MOUNTPOINT, index);
            close(fd);
        }
        if (mount(entry->source, buffer, NULL, MS_BIND | MS_REC, NULL) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_BIND, index);
        if (entry->read_only
            && mount(NULL, buffer, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, NULL) != 0)
            jail_fail(pipe_fd, MARTLET_JAIL_STEP_READ_ONLY, index);
    }
    // The child is pid 1 of its new PID namespace: this /proc shows its own threads only.
    if (jail_path(buffer, sizeof buffer, root, "/proc") != 0 || mkdir(buffer, 0555) != 0
        || mount("proc", buffer, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        jail_fail(pipe_fd, MARTLET_JAIL_STEP_PROC, -1);
    if (chdir(root) != 0 || syscall(SYS_pivot_root, ".", ".") != 0 || umount2(".", MNT_DETACH) != 0 || chdir("/") != 0)
        jail_fail(pipe_fd, MARTLET_JAIL_STEP_PIVOT, -1);
    if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        jail_fail(pipe_fd, MARTLET_JAIL_STEP_ROOT_READ_ONLY, -1);
    if (uid != (uid_t)-1) {
        if (syscall(SYS_setgroups, (size_t)group_count, groups) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_GROUPS, -1);
        if (syscall(SYS_setresgid, gid, gid, gid) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_GID, -1);
        if (syscall(SYS_setresuid, uid, uid, uid) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_UID, -1);
    }
    umask(umask_before);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_NO_NEW_PRIVS, -1);
    struct sigaction default_action;
    memset(&default_action, 0, sizeof default_action);
    default_action.sa_handler = SIG_DFL;
    for (int number = 1; number < NSIG; number++) sigaction(number, &default_action, NULL);
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, NULL);
    execve(path, argv, envp);
    jail_fail(pipe_fd, MARTLET_JAIL_STEP_EXEC, -1);
}

pid_t martlet_spawn_jailed(
    const char *root, const martlet_jail_entry *entries, int entry_count,
    uid_t uid, gid_t gid, const gid_t *groups, int group_count,
    int cgroup_fd, const char *const *cgroup_procs, int cgroup_count,
    const int stdio[3], const char *path, char *const argv[], char *const envp[],
    martlet_jail_failure *failure) {
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        *failure = (martlet_jail_failure){MARTLET_JAIL_STEP_CLONE, -1, errno};
        return -1;
    }
    // No handler of the parent's may run in the child before it resets them.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    const unsigned long namespaces = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
    long pid = -1;
    errno = ENOSYS;
    if (cgroup_fd >= 0) {
        // Born in its cgroup: joining after the fork (a write to cgroup.procs) waits for an
        // RCU grace period, the largest part of a jailed start (8.5 of 14 ms measured).
        jail_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = namespaces | JAIL_CLONE_INTO_CGROUP;
        args.exit_signal = SIGCHLD;
        args.cgroup = (uint64_t)cgroup_fd;
        pid = syscall(SYS_clone3, &args, sizeof args);
        if (pid == 0) {
            close(pipe_fds[0]);
            jail_child(pipe_fds[1], root, entries, entry_count, uid, gid, groups, group_count, NULL, 0, stdio, path, argv, envp);
        }
    }
    // Kernels before 5.7 have no clone3 or no CLONE_INTO_CGROUP: join through cgroup.procs.
    if (pid < 0 && (errno == ENOSYS || errno == E2BIG)) {
        pid = syscall(SYS_clone, namespaces | SIGCHLD, NULL, NULL, NULL, NULL);
        if (pid == 0) {
            close(pipe_fds[0]);
            jail_child(
                pipe_fds[1], root, entries, entry_count, uid, gid, groups, group_count, cgroup_procs, cgroup_count,
                stdio, path, argv, envp);
        }
    }
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(pipe_fds[1]);
    if (pid < 0) {
        close(pipe_fds[0]);
        *failure = (martlet_jail_failure){MARTLET_JAIL_STEP_CLONE, -1, clone_errno};
        return -1;
    }
    // The pipe closes on execve: nothing read means the jailed program runs.
    martlet_jail_failure reported;
    ssize_t count;
    do { count = read(pipe_fds[0], &reported, sizeof reported); } while (count < 0 && errno == EINTR);
    close(pipe_fds[0]);
    if (count == (ssize_t)sizeof reported) {
        *failure = reported;
        int status;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) {}
        return -1;
    }
    return (pid_t)pid;
}
#endif
