#ifndef CMARTLETSYSTEM_H
#define CMARTLETSYSTEM_H

#include <spawn.h>
#include <sys/socket.h>
#include <sys/types.h>
// Extended attributes (llistxattr, lgetxattr, lremovexattr), which Swift's Glibc module leaves out.
#include <sys/xattr.h>

/// glibc declares these only under _GNU_SOURCE, which Swift's Glibc module does not define;
/// each returns what the function it wraps returns (and sets errno the same way).

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34): the child closes every fd >= `from`.
int martlet_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from);

/// posix_spawn_file_actions_addchdir_np (glibc 2.29): the child starts in `path`.
int martlet_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path);

/// pipe2(2): a pipe created with `flags` (O_CLOEXEC) in one step, so no child spawned by
/// another thread in between inherits it.
int martlet_pipe2(int fds[2], int flags);

/// accept4(2): the accepted socket gets `flags` (SOCK_CLOEXEC) atomically.
int martlet_accept4(int fd, int flags);

/// One thing the jailed child puts into its new root (`martlet_spawn_jailed`).
typedef struct {
    /// MARTLET_JAIL_BIND: the host's `source` (a file, device or directory) mounted at
    /// `target`; MARTLET_JAIL_SYMLINK: a symbolic link `target` -> `source`.
    int kind;
    const char *source;
    /// An absolute path inside the new root.
    const char *target;
    /// A bind mount made read-only (and nosuid).
    int read_only;
} martlet_jail_entry;

enum { MARTLET_JAIL_BIND = 0, MARTLET_JAIL_SYMLINK = 1 };

/// Where a jailed spawn failed, for the parent's error message.
typedef struct {
    /// The step (one of MARTLET_JAIL_STEP_*), the entry it worked on (-1: none) and errno.
    int step;
    int entry;
    int error;
} martlet_jail_failure;

enum {
    MARTLET_JAIL_STEP_CLONE = 1, MARTLET_JAIL_STEP_PRIVATE, MARTLET_JAIL_STEP_TMPFS,
    MARTLET_JAIL_STEP_MKDIR, MARTLET_JAIL_STEP_MOUNTPOINT, MARTLET_JAIL_STEP_BIND,
    MARTLET_JAIL_STEP_READ_ONLY, MARTLET_JAIL_STEP_SYMLINK, MARTLET_JAIL_STEP_PROC,
    MARTLET_JAIL_STEP_PIVOT, MARTLET_JAIL_STEP_ROOT_READ_ONLY, MARTLET_JAIL_STEP_GROUPS,
    MARTLET_JAIL_STEP_GID, MARTLET_JAIL_STEP_UID, MARTLET_JAIL_STEP_NO_NEW_PRIVS,
    MARTLET_JAIL_STEP_EXEC, MARTLET_JAIL_STEP_STDIO, MARTLET_JAIL_STEP_CGROUP,
};

/// Starts `path` (argv, envp) in new mount, PID, IPC and UTS namespaces, as pid 1 of its PID
/// namespace, created in the cgroup v2 directory `cgroup_fd` refers to (clone3's
/// CLONE_INTO_CGROUP; -1: none) or else moved by the caller into the cgroups whose
/// `cgroup.procs` files `cgroup_procs` names while it sets up. With `joined_fd` >= 0 the
/// program finds a socket there that yields the byte '1' once it is in its cgroups (EOF
/// without it: it must end), so it can overlap its own start-up with the move and wait before
/// it allocates what must be charged there; with -1 the child waits before execve. Inside a fresh tmpfs mounted on `root` (an existing, empty host directory)
/// holding only `entries` and a /proc of its own; `root` becomes its / through pivot_root.
/// Then the groups, gid and uid (when `uid` is not (uid_t)-1), no_new_privs and an empty
/// signal mask with default dispositions, fds 0-2 from `stdio`, every other fd closed.
/// Returns the child's pid (in the caller's PID namespace; it ends with SIGCHLD like a
/// forked child) once it has executed `path`, or -1 with `failure` filled in. Linux raw
/// clone, no threads in the child: only system calls run between clone and execve.
pid_t martlet_spawn_jailed(
    const char *root, const martlet_jail_entry *entries, int entry_count,
    uid_t uid, gid_t gid, const gid_t *groups, int group_count,
    int cgroup_fd, const char *const *cgroup_procs, int cgroup_count, int joined_fd,
    const int stdio[3], const char *path, char *const argv[], char *const envp[],
    martlet_jail_failure *failure);

#endif
