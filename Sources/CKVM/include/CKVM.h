#pragma once
// KVM ioctl request numbers are function-like macros (_IOW, _IOR...) that Swift cannot
// import, so they are exported here as constants, with thin non-variadic ioctl wrappers
// that return the result or -errno. Structures with unions or flexible array members
// (kvm_run, kvm_cpuid2, kvm_msrs, kvm_lapic_state) get small accessors here because their
// Swift imports are awkward or lossy.
#include <linux/kvm.h>
#include <stdint.h>

extern const unsigned long CKVM_GET_API_VERSION;
extern const unsigned long CKVM_CREATE_VM;
extern const unsigned long CKVM_GET_VCPU_MMAP_SIZE;
extern const unsigned long CKVM_CHECK_EXTENSION;
extern const unsigned long CKVM_SET_USER_MEMORY_REGION;
extern const unsigned long CKVM_CREATE_VCPU;
extern const unsigned long CKVM_SET_TSS_ADDR;
extern const unsigned long CKVM_SET_IDENTITY_MAP_ADDR;
extern const unsigned long CKVM_CREATE_IRQCHIP;
extern const unsigned long CKVM_CREATE_PIT2;
extern const unsigned long CKVM_IRQ_LINE;
extern const unsigned long CKVM_IRQFD;
extern const unsigned long CKVM_IOEVENTFD;
/// O_DIRECT (`cache: none` disks) is only defined with _GNU_SOURCE, which Swift's Glibc lacks.
extern const int CKVM_O_DIRECT;
extern const unsigned long CKVM_RUN;
extern const unsigned long CKVM_GET_REGS;
extern const unsigned long CKVM_SET_REGS;
extern const unsigned long CKVM_GET_SREGS;
extern const unsigned long CKVM_SET_SREGS;
extern const unsigned long CKVM_SET_FPU;
extern const unsigned long CKVM_SET_MP_STATE;
// Used inside C wrappers below; exported too, for the seccomp allow-lists.
extern const unsigned long CKVM_GET_SUPPORTED_CPUID;
extern const unsigned long CKVM_SET_CPUID2;
extern const unsigned long CKVM_SET_MSRS;
extern const unsigned long CKVM_GET_LAPIC;
extern const unsigned long CKVM_SET_LAPIC;
extern const unsigned long CKVM_TUNSETIFF;
extern const unsigned long CKVM_TUNSETVNETHDRSZ;
/// TUNSETOFFLOAD: which offloads (TUN_F_*) a tap may leave to the reader of its frames.
extern const unsigned long CKVM_TUNSETOFFLOAD;
/// TUNSETQUEUE: attaches or detaches one queue (fd) of a multi-queue tap.
extern const unsigned long CKVM_TUNSETQUEUE;
extern const unsigned int CKVM_TUN_F_CSUM;
extern const unsigned int CKVM_TUN_F_TSO4;
extern const unsigned int CKVM_TUN_F_TSO6;
extern const unsigned int CKVM_TUN_F_TSO_ECN;
// vhost-net (linux/vhost.h): the kernel's virtio-net data path.
extern const unsigned long CKVM_VHOST_SET_OWNER;
extern const unsigned long CKVM_VHOST_GET_FEATURES;
extern const unsigned long CKVM_VHOST_SET_FEATURES;
extern const unsigned long CKVM_VHOST_SET_MEM_TABLE;
extern const unsigned long CKVM_VHOST_SET_VRING_NUM;
extern const unsigned long CKVM_VHOST_SET_VRING_BASE;
extern const unsigned long CKVM_VHOST_SET_VRING_ADDR;
extern const unsigned long CKVM_VHOST_SET_VRING_KICK;
extern const unsigned long CKVM_VHOST_SET_VRING_CALL;
extern const unsigned long CKVM_VHOST_NET_SET_BACKEND;
/* Block device ranges given back (virtio-blk DISCARD / WRITE_ZEROES): for seccomp's lists. */
extern const unsigned long CKVM_BLKDISCARD;
extern const unsigned long CKVM_BLKZEROOUT;

/// ioctl(fd, request, arg) returning the result, or -errno on failure; retries on EINTR.
long ckvm_ioctl(int fd, unsigned long request, unsigned long arg);
/// ioctl(fd, request, arg) once, without retrying on EINTR (KVM_RUN must return to the
/// caller when a signal kicks the vCPU thread).
long ckvm_ioctl_once(int fd, unsigned long request, unsigned long arg);

/// The exit information of a `kvm_run` area, flattened out of its unions.
struct ckvm_exit {
    uint32_t reason;
    /* KVM_EXIT_IO */
    uint8_t io_direction;
    uint8_t io_size;
    uint16_t io_port;
    uint32_t io_count;
    uint64_t io_data_offset;
    /* KVM_EXIT_MMIO */
    uint64_t mmio_address;
    uint32_t mmio_length;
    uint8_t mmio_is_write;
    /* KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTERNAL_ERROR */
    uint32_t event_type;
    uint64_t hardware_reason;
    uint32_t suberror;
};

/// Copies the exit reason and its details out of `run`.
void ckvm_read_exit(const struct kvm_run *run, struct ckvm_exit *out);
/// The 8 data bytes of an MMIO exit (read or written by the guest).
uint8_t *ckvm_mmio_data(struct kvm_run *run);
/// Sets `kvm_run.immediate_exit`.
void ckvm_set_immediate_exit(struct kvm_run *run, uint8_t value);

/// KVM_GET_SUPPORTED_CPUID into `entries` (capacity `*count`); `*count` receives the number
/// filled in. Returns 0 or -errno.
long ckvm_get_supported_cpuid(int kvm_fd, struct kvm_cpuid_entry2 *entries, uint32_t *count);
/// KVM_SET_CPUID2 with `count` entries. Returns 0 or -errno.
long ckvm_set_cpuid2(int vcpu_fd, const struct kvm_cpuid_entry2 *entries, uint32_t count);
/// KVM_SET_MSRS with `count` (index, value) pairs. Returns the number set, or -errno.
long ckvm_set_msrs(int vcpu_fd, const uint32_t *indices, const uint64_t *values, uint32_t count);
/// Programs the local APIC's LINT0 as ExtINT and LINT1 as NMI (KVM_GET/SET_LAPIC), the
/// wiring a PC has and Linux expects. Returns 0 or -errno.
long ckvm_setup_lapic_lint(int vcpu_fd);

/// Opens (or creates) the tap interface `name` with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (and
/// IFF_MULTI_QUEUE when `multi_queue`: one more queue of the tap per call) and a
/// `vnet_header_size`-byte virtio-net header (TUNSETIFF, TUNSETVNETHDRSZ are _IOW macros).
/// Returns the fd, or -errno.
int ckvm_open_tap(const char *name, int vnet_header_size, int multi_queue);

/// TUNSETQUEUE with IFF_ATTACH_QUEUE (`attach`) or IFF_DETACH_QUEUE (the flags travel in a
/// struct ifreq): whether the tap steers frames to this queue. Returns 0 or -errno.
long ckvm_tap_set_queue(int fd, int attach);

/// VHOST_SET_MEM_TABLE (a flexible array member) with `count` regions: guest-physical start,
/// size and the host address that backs it. Returns 0 or -errno.
long ckvm_vhost_set_mem_table(int fd, uint32_t count, const uint64_t *guest, const uint64_t *size, const uint64_t *host);
/// A vhost ioctl taking a `vhost_vring_state` (VHOST_SET_VRING_NUM, VHOST_SET_VRING_BASE).
long ckvm_vhost_set_vring(int fd, unsigned long request, uint32_t index, uint32_t value);
/// A vhost ioctl taking a `vhost_vring_file` (VHOST_SET_VRING_KICK, VHOST_SET_VRING_CALL,
/// VHOST_NET_SET_BACKEND; `file` -1 detaches).
long ckvm_vhost_set_vring_file(int fd, unsigned long request, uint32_t index, int file);
/// VHOST_SET_VRING_ADDR with the host addresses of a ring's three parts.
long ckvm_vhost_set_vring_addr(int fd, uint32_t index, uint64_t descriptors, uint64_t available, uint64_t used);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) for KVM_IOEVENTFD and KVM_IRQFD (sys/eventfd.h is
/// not in Swift's Glibc module). Returns the fd, or -errno.
int ckvm_eventfd(void);

/// Gives `length` bytes at `offset` back to the storage (`zeroes` 0: virtio-blk DISCARD) or
/// makes them read as zeroes (`zeroes` 1: WRITE_ZEROES): BLKDISCARD / BLKZEROOUT on a block
/// device, fallocate PUNCH_HOLE / ZERO_RANGE (keeping the size) on a file. The ioctl numbers
/// and FALLOC_FL_* come from kernel headers Swift does not import. Returns 0 or -errno.
long ckvm_release_range(int fd, int is_block_device, int zeroes, uint64_t offset, uint64_t length);
