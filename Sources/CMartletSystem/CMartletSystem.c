#if defined(__linux__)
#define _GNU_SOURCE
#include "CMartletSystem.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
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
    uid_t uid, gid_t gid, const gid_t *groups, int group_count, int joined_read, int joined_fd,
    const int stdio[3], const char *path, char *const argv[], char *const envp[]) {
    char buffer[4096];
    size_t root_length = strlen(root);
    // The failure pipe must not sit where the joined pipe goes.
    if (joined_fd >= 0 && pipe_fd == joined_fd) {
        pipe_fd = fcntl(pipe_fd, F_DUPFD_CLOEXEC, joined_fd + 1);
        if (pipe_fd < 0) _exit(127);
    }
    for (int fd = 0; fd < 3; fd++) {
        if (stdio[fd] != fd && dup2(stdio[fd], fd) < 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_STDIO, -1);
    }
    if (joined_fd >= 0 && joined_read != joined_fd && dup2(joined_read, joined_fd) < 0)
        jail_fail(pipe_fd, MARTLET_JAIL_STEP_STDIO, -1);
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        for (int fd = 3; fd < 4096; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    // The program reads the parent's word that it is in its cgroups from here.
    if (joined_fd >= 0 && fcntl(joined_fd, F_SETFD, 0) != 0) jail_fail(pipe_fd, MARTLET_JAIL_STEP_STDIO, -1);
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
    // A program that cannot wait for the move into its cgroups itself waits here.
    if (joined_fd < 0 && joined_read >= 0) {
        char word = 0;
        ssize_t count;
        do { count = read(joined_read, &word, 1); } while (count < 0 && errno == EINTR);
        if (count != 1 || word != '1') _exit(127);
        close(joined_read);
    }
    execve(path, argv, envp);
    jail_fail(pipe_fd, MARTLET_JAIL_STEP_EXEC, -1);
}

pid_t martlet_spawn_jailed(
    const char *root, const martlet_jail_entry *entries, int entry_count,
    uid_t uid, gid_t gid, const gid_t *groups, int group_count,
    int cgroup_fd, const char *const *cgroup_procs, int cgroup_count, int joined_fd,
    const int stdio[3], const char *path, char *const argv[], char *const envp[],
    martlet_jail_failure *failure) {
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        *failure = (martlet_jail_failure){MARTLET_JAIL_STEP_CLONE, -1, errno};
        return -1;
    }
    // A socket pair, not a pipe: the word is sent with MSG_NOSIGNAL, so a program that ended
    // before it (a VMM refusing its configuration) cannot end the caller with SIGPIPE.
    int joined[2] = {-1, -1};
    if ((joined_fd >= 0 || cgroup_count > 0) && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, joined) != 0) {
        *failure = (martlet_jail_failure){MARTLET_JAIL_STEP_CLONE, -1, errno};
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        return -1;
    }
    // No handler of the parent's may run in the child before it resets them.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    const unsigned long namespaces = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
    long pid = -1;
    int born_in_cgroup = 0;
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
            if (joined[1] >= 0) close(joined[1]);
            jail_child(pipe_fds[1], root, entries, entry_count, uid, gid, groups, group_count, joined[0], joined_fd, stdio, path, argv, envp);
        }
        born_in_cgroup = pid > 0;
    }
    // Kernels before 5.7 have no clone3 or no CLONE_INTO_CGROUP, and cgroup v1 has neither:
    // the parent moves the child below.
    if (pid < 0 && (errno == ENOSYS || errno == E2BIG || cgroup_fd < 0)) {
        pid = syscall(SYS_clone, namespaces | SIGCHLD, NULL, NULL, NULL, NULL);
        if (pid == 0) {
            close(pipe_fds[0]);
            if (joined[1] >= 0) close(joined[1]);
            jail_child(pipe_fds[1], root, entries, entry_count, uid, gid, groups, group_count, joined[0], joined_fd, stdio, path, argv, envp);
        }
    }
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(pipe_fds[1]);
    if (joined[0] >= 0) close(joined[0]);
    if (pid < 0) {
        close(pipe_fds[0]);
        if (joined[1] >= 0) close(joined[1]);
        *failure = (martlet_jail_failure){MARTLET_JAIL_STEP_CLONE, -1, clone_errno};
        return -1;
    }
    // The move into the cgroups waits for an RCU grace period (10-16 ms measured on cgroup
    // v1), which the child spends setting up its root and, given `joined_fd`, the program its
    // own start-up: it waits for the word there before it allocates anything for its VM.
    martlet_jail_failure reported = {0, -1, 0};
    if (!born_in_cgroup) {
        char text[24];
        int length = snprintf(text, sizeof text, "%ld", pid);
        for (int index = 0; index < cgroup_count && reported.step == 0; index++) {
            int fd = open(cgroup_procs[index], O_WRONLY | O_CLOEXEC);
            if (fd < 0 || write(fd, text, (size_t)length) != length)
                reported = (martlet_jail_failure){MARTLET_JAIL_STEP_CGROUP, index, errno};
            if (fd >= 0) close(fd);
        }
    }
    if (joined[1] >= 0) {
        // One byte: moved (or born there). The pipe closing without it (below, on a failure)
        // tells the program to end.
        // EPIPE: the program has ended already; its status tells the rest.
        if (reported.step == 0 && send(joined[1], "1", 1, MSG_NOSIGNAL) != 1 && errno != EPIPE)
            reported = (martlet_jail_failure){MARTLET_JAIL_STEP_CGROUP, -1, errno};
        close(joined[1]);
    }
    if (reported.step != 0) {
        kill((pid_t)pid, SIGKILL);
        close(pipe_fds[0]);
        int status;
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) {}
        *failure = reported;
        return -1;
    }
    // The pipe closes on execve: nothing read means the jailed program runs.
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
