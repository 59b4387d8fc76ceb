#pragma once
// KVM ioctl request numbers are function-like macros (_IOW, _IOR...) that Swift cannot
// import, so they are exported here as constants, with thin non-variadic ioctl wrappers
// that return the result or -errno.
#include <linux/kvm.h>

extern const unsigned long CKVM_GET_API_VERSION;
extern const unsigned long CKVM_CREATE_VM;
extern const unsigned long CKVM_GET_VCPU_MMAP_SIZE;
extern const unsigned long CKVM_CHECK_EXTENSION;

/// ioctl(fd, request, arg) returning the result, or -errno on failure.
long ckvm_ioctl(int fd, unsigned long request, unsigned long arg);
