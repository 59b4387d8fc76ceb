import CURing

#if canImport(Glibc)
    import Glibc
#endif

/// How a virtio-blk device executes reads and writes, as `info` names it.
public enum BlockEngine: String, Sendable {
    /// Every transfer of a drained queue submitted to an io_uring at once, in flight together.
    case ioUring = "io_uring"
    /// preadv/pwritev one request after the other: where io_uring is refused.
    case sync
}

/// An io_uring owned by one virtio-blk device (liburing through CURing): the device queues
/// its transfers, then submits them with one io_uring_enter and reaps their completions.
/// Used from one thread at a time (the transport's lock).
final class BlockRing {
    private let ring: OpaquePointer

    /// Sets up a ring of `entries` submission entries; throws, naming the kernel's errno,
    /// when io_uring is refused (ENOSYS, EPERM under io_uring_disabled or a seccomp filter).
    init(entries: UInt32) throws {
        var error: Int32 = 0
        guard let ring = curing_create(entries, &error) else {
            throw VMMError(.io, "io_uring_setup failed: \(errnoText(error))")
        }
        self.ring = ring
    }

    deinit { curing_destroy(ring) }

    /// An eventfd the kernel signals for every completion it posts: the device's I/O thread
    /// waits for it together with the queues' notifications.
    var completionEvent: Int32 { curing_completion_event(ring) }

    /// Resets the completion eventfd; the completions are taken with `takeCompletion`.
    func drainCompletionEvent() {
        var count: UInt64 = 0
        _ = read(completionEvent, &count, 8)
    }

    /// Queues a readv or writev of `vectors` (which must stay valid until its completion was
    /// taken); false when the submission queue is full.
    func prepare(write: Bool, fd: Int32, vectors: UnsafePointer<iovec>, count: Int, offset: UInt64, tag: UInt64) -> Bool {
        curing_prepare_transfer(ring, write ? 1 : 0, fd, vectors, UInt32(count), offset, tag) == 0
    }

    /// Forgets what was queued since the last submit, before the kernel saw any of it.
    func discardUnsubmitted() { curing_discard_unsubmitted(ring) }

    /// Submits everything queued and waits until `completions` completions are ready (0: does
    /// not wait).
    func submit(waitingFor completions: Int) throws {
        let result = curing_submit_and_wait(ring, UInt32(completions))
        if result < 0 { throw VMMError(.io, "io_uring_enter failed: \(errnoText(-result))") }
    }

    /// The next ready completion: its tag and result (bytes moved, or -errno).
    func takeCompletion() -> (tag: UInt64, result: Int32)? {
        var tag: UInt64 = 0
        var result: Int32 = 0
        return curing_take_completion(ring, &tag, &result) == 1 ? (tag, result) : nil
    }
}
