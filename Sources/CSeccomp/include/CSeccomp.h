#pragma once
// libseccomp for the VMM's filters, and the SIGSYS handler that names a forbidden syscall.
// The handler is C because it must be async-signal-safe: no allocation, no locks, no Swift
// runtime, only write(2) and kill(2) on a table filled before any filter is installed.
#include <seccomp.h>
#include <stdint.h>

/// Resolves the names of syscalls 0..<512 for the SIGSYS handler and installs it. Call once,
/// before the first filter; returns 0 or -errno.
int cseccomp_install_violation_handler(void);

/// The calling thread's seccomp mode (0 none, 2 filter), or -errno; prctl is variadic.
int cseccomp_thread_mode(void);

/// Sets no_new_privs: no execve can gain privileges (setuid, file capabilities) from here on.
/// Returns 0 or -errno.
int cseccomp_set_no_new_privs(void);

/// Empties the bounding set (where CAP_SETPCAP allows), the ambient set and the effective,
/// permitted and inheritable sets of the calling thread, when it holds any (capget first);
/// prctl is variadic, capget and capset have no glibc wrapper. Returns 0 or -errno.
int cseccomp_drop_capabilities(void);

/// SCMP_ACT_* values are macros Swift imports only partly (SCMP_ACT_ERRNO is a function-like macro).
extern const uint32_t CSECCOMP_ACT_ALLOW;
extern const uint32_t CSECCOMP_ACT_TRAP;
extern const uint32_t CSECCOMP_ACT_LOG;
