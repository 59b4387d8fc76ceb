#if defined(__linux__)
#include "CURing.h"
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct curing_ring {
    struct io_uring ring;
    int event;
};

curing_ring *curing_create(unsigned entries, int *error) {
    curing_ring *ring = calloc(1, sizeof(*ring));
    if (!ring) {
        *error = ENOMEM;
        return NULL;
    }
    // Created disabled, so that its opcodes can be limited before the first submission:
    // io_uring executes its operations in the kernel, where no seccomp filter looks, and a
    // thread taken over by a guest must get no openat or connect through it.
    struct io_uring_params params = {.flags = IORING_SETUP_R_DISABLED};
    int result = io_uring_queue_init_params(entries, &ring->ring, &params);
    if (result < 0) {
        free(ring);
        *error = -result;
        return NULL;
    }
    // Signalled for every completion, so a thread can wait for them with its other eventfds
    // in one poll. Registered before the restrictions, which allow no io_uring_register after.
    ring->event = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    result = ring->event < 0 ? -errno : io_uring_register_eventfd(&ring->ring, ring->event);
    if (result < 0) {
        if (ring->event >= 0) close(ring->event);
        io_uring_queue_exit(&ring->ring);
        free(ring);
        *error = -result;
        return NULL;
    }
    struct io_uring_restriction allowed[2] = {
        {.opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_READV},
        {.opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_WRITEV},
    };
    result = io_uring_register_restrictions(&ring->ring, allowed, 2);
    if (result == 0) result = io_uring_enable_rings(&ring->ring);
    if (result < 0) {
        io_uring_queue_exit(&ring->ring);
        close(ring->event);
        free(ring);
        *error = -result;
        return NULL;
    }
    return ring;
}

void curing_destroy(curing_ring *ring) {
    io_uring_queue_exit(&ring->ring);
    close(ring->event);
    free(ring);
}

int curing_completion_event(curing_ring *ring) { return ring->event; }

int curing_prepare_transfer(curing_ring *ring, int write, int fd, const struct iovec *vectors, unsigned count,
                            uint64_t offset, uint64_t tag) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    if (write) {
        io_uring_prep_writev(sqe, fd, vectors, count, offset);
    } else {
        io_uring_prep_readv(sqe, fd, vectors, count, offset);
    }
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

void curing_discard_unsubmitted(curing_ring *ring) {
    ring->ring.sq.sqe_tail = ring->ring.sq.sqe_head;
}

int curing_submit_and_wait(curing_ring *ring, unsigned wait) {
    int result;
    do {
        result = io_uring_submit_and_wait(&ring->ring, wait);
    } while (result == -EINTR);
    return result;
}

int curing_take_completion(curing_ring *ring, uint64_t *tag, int32_t *result) {
    struct io_uring_cqe *cqe = NULL;
    if (io_uring_peek_cqe(&ring->ring, &cqe) != 0 || !cqe) return 0;
    *tag = io_uring_cqe_get_data64(cqe);
    *result = cqe->res;
    io_uring_cqe_seen(&ring->ring, cqe);
    return 1;
}
#endif
