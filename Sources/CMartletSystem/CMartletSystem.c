#if defined(__linux__)
#define _GNU_SOURCE
#include "CMartletSystem.h"
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
#endif
