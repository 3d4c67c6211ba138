/*
 * vmkit_shim.c: the thin C layer under vmkit's KVM bindings.
 *
 * Each function wraps one ioctl (or a small group that shares a struct) and
 * returns a non-negative result or -errno. No policy lives here: the
 * TypeScript side (native/kvm.ts) decides what to call and turns -errno into
 * a KvmError naming the call.
 *
 * State blobs are passed as (buffer, length) pairs whose layout is the kernel
 * struct; the shim checks the length against sizeof before every ioctl so a
 * short buffer is an error, never an out-of-bounds access.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

/* The TS side decodes these structs with fixed offsets; keep them honest. */
_Static_assert(sizeof(struct kvm_regs) == 144, "kvm_regs layout");
_Static_assert(sizeof(struct kvm_segment) == 24, "kvm_segment layout");
_Static_assert(sizeof(struct kvm_dtable) == 16, "kvm_dtable layout");
_Static_assert(sizeof(struct kvm_sregs) == 312, "kvm_sregs layout");
_Static_assert(offsetof(struct kvm_sregs, gdt) == 192, "kvm_sregs.gdt");
_Static_assert(offsetof(struct kvm_sregs, cr0) == 224, "kvm_sregs.cr0");
_Static_assert(offsetof(struct kvm_sregs, interrupt_bitmap) == 280, "kvm_sregs.bitmap");
_Static_assert(offsetof(struct kvm_run, immediate_exit) == 1, "kvm_run.immediate_exit");
_Static_assert(offsetof(struct kvm_run, exit_reason) == 8, "kvm_run.exit_reason");
_Static_assert(offsetof(struct kvm_run, io.direction) == 32, "kvm_run.io.direction");
_Static_assert(offsetof(struct kvm_run, io.size) == 33, "kvm_run.io.size");
_Static_assert(offsetof(struct kvm_run, io.port) == 34, "kvm_run.io.port");
_Static_assert(offsetof(struct kvm_run, io.count) == 36, "kvm_run.io.count");
_Static_assert(offsetof(struct kvm_run, io.data_offset) == 40, "kvm_run.io.data_offset");
_Static_assert(offsetof(struct kvm_run, mmio.phys_addr) == 32, "kvm_run.mmio.phys_addr");
_Static_assert(offsetof(struct kvm_run, mmio.data) == 40, "kvm_run.mmio.data");
_Static_assert(offsetof(struct kvm_run, mmio.len) == 48, "kvm_run.mmio.len");
_Static_assert(offsetof(struct kvm_run, mmio.is_write) == 52, "kvm_run.mmio.is_write");
_Static_assert(offsetof(struct kvm_run, internal.suberror) == 32, "kvm_run.internal");
_Static_assert(offsetof(struct kvm_run, internal.data) == 40, "kvm_run.internal.data");
_Static_assert(offsetof(struct kvm_run, system_event.type) == 32, "kvm_run.system_event");
_Static_assert(offsetof(struct kvm_run, kvm_valid_regs) == 288, "kvm_run.kvm_valid_regs");
_Static_assert(offsetof(struct kvm_run, s.regs.regs) == 304, "kvm_run.s.regs.regs");
_Static_assert(offsetof(struct kvm_run, s.regs.sregs) == 448, "kvm_run.s.regs.sregs");
_Static_assert(offsetof(struct kvm_run, s.regs.events) == 760, "kvm_run.s.regs.events");
_Static_assert(sizeof(struct kvm_vcpu_events) == 64, "kvm_vcpu_events layout");
_Static_assert(sizeof(struct kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2 layout");
_Static_assert(sizeof(struct kvm_msr_entry) == 16, "kvm_msr_entry layout");
_Static_assert(sizeof(struct kvm_irqchip) == 520, "kvm_irqchip layout");
_Static_assert(sizeof(struct kvm_clock_data) == 48, "kvm_clock_data layout");
_Static_assert(sizeof(struct kvm_irq_routing) == 8, "kvm_irq_routing header");
_Static_assert(sizeof(struct kvm_irq_routing_entry) == 48, "kvm_irq_routing_entry layout");
_Static_assert(offsetof(struct kvm_irq_routing_entry, u.irqchip.pin) == 20, "irqchip route pin");

static int ret_errno(long r) { return r < 0 ? -errno : (int)r; }

/* ---- system fd ---------------------------------------------------------- */

int vk_open(const char *path) { return ret_errno(open(path, O_RDWR | O_CLOEXEC)); }
int vk_close(int fd) { return ret_errno(close(fd)); }
int vk_get_api_version(int kvm) { return ret_errno(ioctl(kvm, KVM_GET_API_VERSION, 0)); }
int vk_create_vm(int kvm) { return ret_errno(ioctl(kvm, KVM_CREATE_VM, 0UL)); }
int vk_check_extension(int fd, int cap) { return ret_errno(ioctl(fd, KVM_CHECK_EXTENSION, cap)); }
int vk_get_vcpu_mmap_size(int kvm) { return ret_errno(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)); }

/* buf: struct kvm_msr_list with room for (len-4)/4 indices; returns nmsrs. */
int vk_get_msr_index_list(int kvm, uint8_t *buf, uint32_t len) {
  if (len < sizeof(struct kvm_msr_list)) return -EINVAL;
  struct kvm_msr_list *l = (struct kvm_msr_list *)buf;
  l->nmsrs = (len - sizeof(struct kvm_msr_list)) / sizeof(uint32_t);
  int r = ret_errno(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, l));
  return r < 0 ? r : (int)l->nmsrs;
}

/* buf: struct kvm_cpuid2 with room for entries; returns nent. */
int vk_get_supported_cpuid(int kvm, uint8_t *buf, uint32_t len) {
  if (len < sizeof(struct kvm_cpuid2)) return -EINVAL;
  struct kvm_cpuid2 *c = (struct kvm_cpuid2 *)buf;
  c->nent = (len - sizeof(struct kvm_cpuid2)) / sizeof(struct kvm_cpuid_entry2);
  int r = ret_errno(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c));
  return r < 0 ? r : (int)c->nent;
}

/* ---- VM fd -------------------------------------------------------------- */

int vk_set_tss_addr(int vm, uint64_t addr) {
  return ret_errno(ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)addr));
}
int vk_set_identity_map_addr(int vm, uint64_t addr) {
  return ret_errno(ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &addr));
}
int vk_create_irqchip(int vm) { return ret_errno(ioctl(vm, KVM_CREATE_IRQCHIP, 0)); }
int vk_create_pit2(int vm, uint32_t flags) {
  struct kvm_pit_config c;
  memset(&c, 0, sizeof c);
  c.flags = flags;
  return ret_errno(ioctl(vm, KVM_CREATE_PIT2, &c));
}
int vk_set_user_memory_region(int vm, uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size,
                              uint64_t hva) {
  struct kvm_userspace_memory_region r = {
      .slot = slot, .flags = flags, .guest_phys_addr = gpa, .memory_size = size,
      .userspace_addr = hva};
  return ret_errno(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r));
}
/* bitmap must hold one bit per page of the slot (len checked by the caller's pages). */
int vk_get_dirty_log(int vm, uint32_t slot, uint8_t *bitmap, uint64_t len, uint64_t pages) {
  if (len < ((pages + 63) / 64) * 8) return -EINVAL;
  struct kvm_dirty_log d;
  memset(&d, 0, sizeof d);
  d.slot = slot;
  d.dirty_bitmap = bitmap;
  return ret_errno(ioctl(vm, KVM_GET_DIRTY_LOG, &d));
}
int vk_irq_line(int vm, uint32_t irq, uint32_t level) {
  struct kvm_irq_level l = {.irq = irq, .level = level};
  return ret_errno(ioctl(vm, KVM_IRQ_LINE, &l));
}
/* buf is a struct kvm_irq_routing with exactly its nr entries; it replaces the whole table. */
int vk_set_gsi_routing(int vm, const uint8_t *buf, uint32_t len) {
  struct kvm_irq_routing hdr;
  if (len < sizeof hdr) return -EINVAL;
  memcpy(&hdr, buf, sizeof hdr);
  if ((uint64_t)len != sizeof hdr + (uint64_t)hdr.nr * sizeof(struct kvm_irq_routing_entry))
    return -EINVAL;
  return ret_errno(ioctl(vm, KVM_SET_GSI_ROUTING, buf));
}
int vk_create_vcpu(int vm, uint32_t id) { return ret_errno(ioctl(vm, KVM_CREATE_VCPU, (unsigned long)id)); }

/* VM-wide state blobs: kinds shared with native/kvm.ts. */
enum { VK_VM_IRQCHIP = 0, VK_VM_PIT2 = 1, VK_VM_CLOCK = 2 };

int vk_vm_state_size(int kind) {
  switch (kind) {
  case VK_VM_IRQCHIP: return sizeof(struct kvm_irqchip);
  case VK_VM_PIT2: return sizeof(struct kvm_pit_state2);
  case VK_VM_CLOCK: return sizeof(struct kvm_clock_data);
  default: return -EINVAL;
  }
}

/* For VK_VM_IRQCHIP the caller puts chip_id in the first 4 bytes of buf. */
int vk_vm_get(int vm, int kind, uint8_t *buf, uint32_t len) {
  int need = vk_vm_state_size(kind);
  if (need < 0) return need;
  if (len < (uint32_t)need) return -EINVAL;
  switch (kind) {
  case VK_VM_IRQCHIP: return ret_errno(ioctl(vm, KVM_GET_IRQCHIP, buf));
  case VK_VM_PIT2: return ret_errno(ioctl(vm, KVM_GET_PIT2, buf));
  default: return ret_errno(ioctl(vm, KVM_GET_CLOCK, buf));
  }
}

int vk_vm_set(int vm, int kind, const uint8_t *buf, uint32_t len) {
  int need = vk_vm_state_size(kind);
  if (need < 0) return need;
  if (len < (uint32_t)need) return -EINVAL;
  switch (kind) {
  case VK_VM_IRQCHIP: return ret_errno(ioctl(vm, KVM_SET_IRQCHIP, buf));
  case VK_VM_PIT2: return ret_errno(ioctl(vm, KVM_SET_PIT2, buf));
  default: {
    /* KVM_SET_CLOCK rejects flags it does not accept (e.g. KVM_CLOCK_TSC_STABLE). */
    struct kvm_clock_data c;
    memcpy(&c, buf, sizeof c);
    c.flags &= KVM_CLOCK_REALTIME;
    return ret_errno(ioctl(vm, KVM_SET_CLOCK, &c));
  }
  }
}

/* ---- vCPU fd ------------------------------------------------------------ */

int vk_run(int vcpu) { return ret_errno(ioctl(vcpu, KVM_RUN, 0)); }

enum {
  VK_REGS = 0, VK_SREGS = 1, VK_FPU = 2, VK_LAPIC = 3, VK_XSAVE = 4, VK_XCRS = 5,
  VK_EVENTS = 6, VK_MP_STATE = 7, VK_DEBUGREGS = 8
};

int vk_vcpu_state_size(int kind) {
  switch (kind) {
  case VK_REGS: return sizeof(struct kvm_regs);
  case VK_SREGS: return sizeof(struct kvm_sregs);
  case VK_FPU: return sizeof(struct kvm_fpu);
  case VK_LAPIC: return sizeof(struct kvm_lapic_state);
  case VK_XSAVE: return sizeof(struct kvm_xsave);
  case VK_XCRS: return sizeof(struct kvm_xcrs);
  case VK_EVENTS: return sizeof(struct kvm_vcpu_events);
  case VK_MP_STATE: return sizeof(struct kvm_mp_state);
  case VK_DEBUGREGS: return sizeof(struct kvm_debugregs);
  default: return -EINVAL;
  }
}

/* For VK_XSAVE a buffer larger than struct kvm_xsave selects KVM_GET_XSAVE2. */
int vk_vcpu_get(int vcpu, int kind, uint8_t *buf, uint32_t len) {
  int need = vk_vcpu_state_size(kind);
  if (need < 0) return need;
  if (len < (uint32_t)need) return -EINVAL;
  unsigned long req;
  switch (kind) {
  case VK_REGS: req = KVM_GET_REGS; break;
  case VK_SREGS: req = KVM_GET_SREGS; break;
  case VK_FPU: req = KVM_GET_FPU; break;
  case VK_LAPIC: req = KVM_GET_LAPIC; break;
  case VK_XSAVE: req = len > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE; break;
  case VK_XCRS: req = KVM_GET_XCRS; break;
  case VK_EVENTS: req = KVM_GET_VCPU_EVENTS; break;
  case VK_MP_STATE: req = KVM_GET_MP_STATE; break;
  default: req = KVM_GET_DEBUGREGS; break;
  }
  return ret_errno(ioctl(vcpu, req, buf));
}

int vk_vcpu_set(int vcpu, int kind, const uint8_t *buf, uint32_t len) {
  int need = vk_vcpu_state_size(kind);
  if (need < 0) return need;
  if (len < (uint32_t)need) return -EINVAL;
  unsigned long req;
  switch (kind) {
  case VK_REGS: req = KVM_SET_REGS; break;
  case VK_SREGS: req = KVM_SET_SREGS; break;
  case VK_FPU: req = KVM_SET_FPU; break;
  case VK_LAPIC: req = KVM_SET_LAPIC; break;
  case VK_XSAVE: req = KVM_SET_XSAVE; break;
  case VK_XCRS: req = KVM_SET_XCRS; break;
  case VK_EVENTS: req = KVM_SET_VCPU_EVENTS; break;
  case VK_MP_STATE: req = KVM_SET_MP_STATE; break;
  default: req = KVM_SET_DEBUGREGS; break;
  }
  return ret_errno(ioctl(vcpu, req, buf));
}

/* buf: struct kvm_msrs (nmsrs set by the caller) + entries; returns how many were processed. */
static int msrs_ioctl(int vcpu, unsigned long req, uint8_t *buf, uint32_t len) {
  if (len < sizeof(struct kvm_msrs)) return -EINVAL;
  struct kvm_msrs *m = (struct kvm_msrs *)buf;
  if (m->nmsrs > (len - sizeof(struct kvm_msrs)) / sizeof(struct kvm_msr_entry)) return -EINVAL;
  return ret_errno(ioctl(vcpu, req, m));
}
int vk_get_msrs(int vcpu, uint8_t *buf, uint32_t len) { return msrs_ioctl(vcpu, KVM_GET_MSRS, buf, len); }
int vk_set_msrs(int vcpu, uint8_t *buf, uint32_t len) { return msrs_ioctl(vcpu, KVM_SET_MSRS, buf, len); }

/* buf: struct kvm_cpuid2 (nent set by the caller) + entries. */
int vk_set_cpuid2(int vcpu, uint8_t *buf, uint32_t len) {
  if (len < sizeof(struct kvm_cpuid2)) return -EINVAL;
  struct kvm_cpuid2 *c = (struct kvm_cpuid2 *)buf;
  if (c->nent > (len - sizeof(struct kvm_cpuid2)) / sizeof(struct kvm_cpuid_entry2)) return -EINVAL;
  return ret_errno(ioctl(vcpu, KVM_SET_CPUID2, c));
}
int vk_get_cpuid2(int vcpu, uint8_t *buf, uint32_t len) {
  if (len < sizeof(struct kvm_cpuid2)) return -EINVAL;
  struct kvm_cpuid2 *c = (struct kvm_cpuid2 *)buf;
  c->nent = (len - sizeof(struct kvm_cpuid2)) / sizeof(struct kvm_cpuid_entry2);
  int r = ret_errno(ioctl(vcpu, KVM_GET_CPUID2, c));
  return r < 0 ? r : (int)c->nent;
}

/* ---- memory ------------------------------------------------------------- */

static int64_t map_result(void *p) { return p == MAP_FAILED ? -(int64_t)errno : (int64_t)(uintptr_t)p; }

/* Shared mapping of a vCPU's kvm_run page(s); returns the address or -errno. */
int64_t vk_mmap_vcpu(int vcpu, uint64_t size) {
  return map_result(mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0));
}
/* Private anonymous sparse mapping (pages materialise on first touch). */
int64_t vk_mmap_anon(uint64_t size) {
  return map_result(mmap(NULL, size, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
}
/* Shared mapping of a file (e.g. a memfd) from offset 0. */
int64_t vk_mmap_fd(int fd, uint64_t size) {
  return map_result(mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0));
}
int vk_munmap(uint64_t addr, uint64_t size) { return ret_errno(munmap((void *)(uintptr_t)addr, size)); }
int vk_madvise(uint64_t addr, uint64_t size, int advice) {
  return ret_errno(madvise((void *)(uintptr_t)addr, size, advice));
}
/* A sized memfd (MFD_CLOEXEC); returns its fd. */
int vk_memfd_create(const char *name, uint64_t size) {
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return -errno;
  if (ftruncate(fd, (off_t)size) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* ---- vCPU kick ---------------------------------------------------------- */

static void kick_handler(int sig) { (void)sig; }

/*
 * Installs a no-op handler (without SA_RESTART) for SIGRTMIN+5 so that a kick
 * makes a blocking KVM_RUN return -EINTR. Idempotent; returns the signal number.
 */
int vk_install_kick_handler(void) {
  int sig = SIGRTMIN + 5;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kick_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  if (sigaction(sig, &sa, NULL) < 0) return -errno;
  return sig;
}

/* The calling thread's pthread_t, for vk_kick. */
uint64_t vk_thread_self(void) { return (uint64_t)pthread_self(); }

/*
 * Asks the vCPU running on `thread` to leave KVM_RUN: sets immediate_exit so a
 * KVM_RUN about to start returns at once, then signals the thread so one in
 * progress returns -EINTR.
 */
int vk_kick(uint64_t thread, uint64_t run_addr) {
  struct kvm_run *run = (struct kvm_run *)(uintptr_t)run_addr;
  __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
  int e = pthread_kill((pthread_t)thread, SIGRTMIN + 5);
  return e == 0 ? 0 : -e;
}

/* ---- errors ------------------------------------------------------------- */

/* Writes the C library's text for errno `e` (NUL-terminated) into buf; returns its length. */
int vk_strerror(int e, uint8_t *buf, uint32_t len) {
  if (len == 0) return -EINVAL;
  const char *s = strerrordesc_np(e);
  if (s == NULL) s = "unknown error";
  size_t n = strlen(s);
  if (n >= len) n = len - 1;
  memcpy(buf, s, n);
  buf[n] = 0;
  return (int)n;
}
