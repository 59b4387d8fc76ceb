#ifndef CMARTLETSYSTEM_H
#define CMARTLETSYSTEM_H

#include <spawn.h>
#include <sys/socket.h>

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

#endif
