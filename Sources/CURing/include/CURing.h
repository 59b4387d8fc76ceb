#pragma once
// liburing (Debian's liburing-dev, linked statically) for virtio-blk's I/O thread. Its
// preparation helpers are static inline and take a submission entry that may not be there;
// these wrappers hand Swift one call per operation, returning 0 or -errno.
#include <stdint.h>
#include <sys/uio.h>

/// An io_uring instance and its mapped rings; opaque to Swift.
typedef struct curing_ring curing_ring;

/// io_uring_queue_init with `entries` submission entries and an eventfd for its completions
/// (IORING_REGISTER_EVENTFD), restricted to readv and writev
/// (IORING_REGISTER_RESTRICTIONS; no further io_uring_register is allowed). NULL with *error set
/// to a positive errno when the kernel refuses (ENOSYS without io_uring, EPERM when
/// io_uring_disabled or a seccomp filter says no, EINVAL before Linux 5.10, ENOMEM).
curing_ring *curing_create(unsigned entries, int *error);

/// io_uring_queue_exit: unmaps the rings and closes the ring's descriptor and its eventfd.
void curing_destroy(curing_ring *ring);

/// The ring's eventfd (non-blocking): the kernel adds to it for every completion it posts.
int curing_completion_event(curing_ring *ring);

/// Queues a readv (`write` 0) or writev of `count` vectors at `offset` of `fd`, tagged `tag`.
/// -EBUSY when the submission queue is full (submit and reap first).
int curing_prepare_transfer(curing_ring *ring, int write, int fd, const struct iovec *vectors, unsigned count,
                            uint64_t offset, uint64_t tag);

/// Forgets the entries queued since the last submit: the kernel never saw them (liburing
/// publishes the submission queue's tail only in io_uring_submit*).
void curing_discard_unsubmitted(curing_ring *ring);

/// Submits what was queued and waits until `wait` completions are there; returns how many
/// entries the kernel took or -errno.
int curing_submit_and_wait(curing_ring *ring, unsigned wait);

/// Takes one completion if there is one: 1 with its tag and result (bytes or -errno), 0 when
/// none is ready.
int curing_take_completion(curing_ring *ring, uint64_t *tag, int32_t *result);
