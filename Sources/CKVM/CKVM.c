#if defined(__linux__)
#define _GNU_SOURCE  /* fallocate */
#include "CKVM.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <fcntl.h>
#include <unistd.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <linux/vhost.h>

const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
const unsigned long CKVM_IRQFD = KVM_IRQFD;
const unsigned long CKVM_IOEVENTFD = KVM_IOEVENTFD;
const int CKVM_O_DIRECT = O_DIRECT;
const unsigned long CKVM_RUN = KVM_RUN;
const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
const unsigned long CKVM_SET_FPU = KVM_SET_FPU;
const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
const unsigned long CKVM_TUNSETIFF = TUNSETIFF;
const unsigned long CKVM_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
const unsigned long CKVM_TUNSETOFFLOAD = TUNSETOFFLOAD;
const unsigned long CKVM_TUNSETQUEUE = TUNSETQUEUE;
const unsigned int CKVM_TUN_F_CSUM = TUN_F_CSUM;
const unsigned int CKVM_TUN_F_TSO4 = TUN_F_TSO4;
const unsigned int CKVM_TUN_F_TSO6 = TUN_F_TSO6;
const unsigned int CKVM_TUN_F_TSO_ECN = TUN_F_TSO_ECN;
const unsigned long CKVM_VHOST_SET_OWNER = VHOST_SET_OWNER;
const unsigned long CKVM_VHOST_GET_FEATURES = VHOST_GET_FEATURES;
const unsigned long CKVM_VHOST_SET_FEATURES = VHOST_SET_FEATURES;
const unsigned long CKVM_VHOST_SET_MEM_TABLE = VHOST_SET_MEM_TABLE;
const unsigned long CKVM_VHOST_SET_VRING_NUM = VHOST_SET_VRING_NUM;
const unsigned long CKVM_VHOST_SET_VRING_BASE = VHOST_SET_VRING_BASE;
const unsigned long CKVM_VHOST_SET_VRING_ADDR = VHOST_SET_VRING_ADDR;
const unsigned long CKVM_VHOST_SET_VRING_KICK = VHOST_SET_VRING_KICK;
const unsigned long CKVM_VHOST_SET_VRING_CALL = VHOST_SET_VRING_CALL;
const unsigned long CKVM_VHOST_NET_SET_BACKEND = VHOST_NET_SET_BACKEND;
const unsigned long CKVM_BLKDISCARD = BLKDISCARD;
const unsigned long CKVM_BLKZEROOUT = BLKZEROOUT;

long ckvm_ioctl(int fd, unsigned long request, unsigned long arg) {
    int result;
    do {
        result = ioctl(fd, request, arg);
    } while (result < 0 && errno == EINTR);
    return result < 0 ? -errno : result;
}

long ckvm_ioctl_once(int fd, unsigned long request, unsigned long arg) {
    int result = ioctl(fd, request, arg);
    return result < 0 ? -errno : result;
}

void ckvm_read_exit(const struct kvm_run *run, struct ckvm_exit *out) {
    memset(out, 0, sizeof(*out));
    out->reason = run->exit_reason;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        out->io_direction = run->io.direction;
        out->io_size = run->io.size;
        out->io_port = run->io.port;
        out->io_count = run->io.count;
        out->io_data_offset = run->io.data_offset;
        break;
    case KVM_EXIT_MMIO:
        out->mmio_address = run->mmio.phys_addr;
        out->mmio_length = run->mmio.len;
        out->mmio_is_write = run->mmio.is_write;
        break;
    case KVM_EXIT_SYSTEM_EVENT:
        out->event_type = run->system_event.type;
        break;
    case KVM_EXIT_FAIL_ENTRY:
        out->hardware_reason = run->fail_entry.hardware_entry_failure_reason;
        break;
    case KVM_EXIT_INTERNAL_ERROR:
        out->suberror = run->internal.suberror;
        break;
    case KVM_EXIT_UNKNOWN:
        out->hardware_reason = run->hw.hardware_exit_reason;
        break;
    default:
        break;
    }
}

uint8_t *ckvm_mmio_data(struct kvm_run *run) { return run->mmio.data; }

void ckvm_set_immediate_exit(struct kvm_run *run, uint8_t value) { run->immediate_exit = value; }

long ckvm_get_supported_cpuid(int kvm_fd, struct kvm_cpuid_entry2 *entries, uint32_t *count) {
    size_t size = sizeof(struct kvm_cpuid2) + *count * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *cpuid = calloc(1, size);
    if (!cpuid) return -ENOMEM;
    cpuid->nent = *count;
    long result = ckvm_ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, (unsigned long)cpuid);
    if (result >= 0) {
        memcpy(entries, cpuid->entries, cpuid->nent * sizeof(struct kvm_cpuid_entry2));
        *count = cpuid->nent;
    }
    free(cpuid);
    return result;
}

long ckvm_set_cpuid2(int vcpu_fd, const struct kvm_cpuid_entry2 *entries, uint32_t count) {
    size_t size = sizeof(struct kvm_cpuid2) + count * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *cpuid = calloc(1, size);
    if (!cpuid) return -ENOMEM;
    cpuid->nent = count;
    memcpy(cpuid->entries, entries, count * sizeof(struct kvm_cpuid_entry2));
    long result = ckvm_ioctl(vcpu_fd, KVM_SET_CPUID2, (unsigned long)cpuid);
    free(cpuid);
    return result;
}

long ckvm_set_msrs(int vcpu_fd, const uint32_t *indices, const uint64_t *values, uint32_t count) {
    size_t size = sizeof(struct kvm_msrs) + count * sizeof(struct kvm_msr_entry);
    struct kvm_msrs *msrs = calloc(1, size);
    if (!msrs) return -ENOMEM;
    msrs->nmsrs = count;
    for (uint32_t i = 0; i < count; i++) {
        msrs->entries[i].index = indices[i];
        msrs->entries[i].data = values[i];
    }
    long result = ckvm_ioctl(vcpu_fd, KVM_SET_MSRS, (unsigned long)msrs);
    free(msrs);
    return result;
}

#define APIC_LVT0 0x350
#define APIC_LVT1 0x360
#define APIC_MODE_NMI 0x4
#define APIC_MODE_EXTINT 0x7

static void set_lvt_mode(struct kvm_lapic_state *lapic, int offset, uint32_t mode) {
    uint32_t value;
    memcpy(&value, lapic->regs + offset, 4);
    value = (value & ~0x700u) | (mode << 8);
    memcpy(lapic->regs + offset, &value, 4);
}

long ckvm_setup_lapic_lint(int vcpu_fd) {
    struct kvm_lapic_state lapic;
    long result = ckvm_ioctl(vcpu_fd, KVM_GET_LAPIC, (unsigned long)&lapic);
    if (result < 0) return result;
    set_lvt_mode(&lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&lapic, APIC_LVT1, APIC_MODE_NMI);
    return ckvm_ioctl(vcpu_fd, KVM_SET_LAPIC, (unsigned long)&lapic);
}

int ckvm_open_tap(const char *name, int vnet_header_size, int multi_queue) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -errno;
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi_queue ? IFF_MULTI_QUEUE : 0);
    if (ioctl(fd, TUNSETIFF, &request) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &vnet_header_size) < 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

long ckvm_tap_set_queue(int fd, int attach) {
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    request.ifr_flags = attach ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
    return ioctl(fd, TUNSETQUEUE, &request) < 0 ? -errno : 0;
}

long ckvm_release_range(int fd, int is_block_device, int zeroes, uint64_t offset, uint64_t length) {
    if (is_block_device) {
        uint64_t range[2] = {offset, length};
        return ioctl(fd, zeroes ? BLKZEROOUT : BLKDISCARD, range) < 0 ? -errno : 0;
    }
    int mode = FALLOC_FL_KEEP_SIZE | (zeroes ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE);
    return fallocate(fd, mode, (off_t)offset, (off_t)length) < 0 ? -errno : 0;
}

long ckvm_vhost_set_mem_table(int fd, uint32_t count, const uint64_t *guest, const uint64_t *size, const uint64_t *host) {
    struct vhost_memory *table = calloc(1, sizeof(*table) + count * sizeof(struct vhost_memory_region));
    if (!table) return -ENOMEM;
    table->nregions = count;
    for (uint32_t i = 0; i < count; i++) {
        table->regions[i].guest_phys_addr = guest[i];
        table->regions[i].memory_size = size[i];
        table->regions[i].userspace_addr = host[i];
    }
    long result = ckvm_ioctl(fd, VHOST_SET_MEM_TABLE, (unsigned long)table);
    free(table);
    return result;
}

long ckvm_vhost_set_vring(int fd, unsigned long request, uint32_t index, uint32_t value) {
    struct vhost_vring_state state = {.index = index, .num = value};
    return ckvm_ioctl(fd, request, (unsigned long)&state);
}

long ckvm_vhost_set_vring_file(int fd, unsigned long request, uint32_t index, int file) {
    struct vhost_vring_file entry = {.index = index, .fd = file};
    return ckvm_ioctl(fd, request, (unsigned long)&entry);
}

long ckvm_vhost_set_vring_addr(int fd, uint32_t index, uint64_t descriptors, uint64_t available, uint64_t used) {
    struct vhost_vring_addr address = {
        .index = index, .desc_user_addr = descriptors, .avail_user_addr = available, .used_user_addr = used};
    return ckvm_ioctl(fd, VHOST_SET_VRING_ADDR, (unsigned long)&address);
}

int ckvm_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}
#endif
