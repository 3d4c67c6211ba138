/*
 * io.c: the thin C layer under vmkit's I/O devices (vmm/devices/virtio/).
 *
 * eventfds, KVM_IOEVENTFD and KVM_IRQFD (guest notifications and interrupts
 * that never pass through a vCPU thread's JavaScript), a poll wrapper that a
 * Deno `nonblocking` FFI call runs on the FFI thread pool, and io_uring
 * through raw syscalls (no liburing) so a back end can keep many guest
 * requests in flight with one syscall per batch.
 *
 * No policy: the TypeScript side (native/io_ffi.ts) decides what to wait for,
 * what to submit and what a completion means. Every function returns a
 * non-negative result or -errno; buffers come as (pointer, length) and their
 * lengths are checked before use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/io_uring.h>
#include <linux/kvm.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

_Static_assert(sizeof(struct kvm_ioeventfd) == 64, "kvm_ioeventfd layout");
_Static_assert(sizeof(struct kvm_irqfd) == 32, "kvm_irqfd layout");
_Static_assert(sizeof(struct io_uring_sqe) == 64, "io_uring_sqe layout");
_Static_assert(sizeof(struct io_uring_cqe) == 16, "io_uring_cqe layout");

static int io_ret(long r) { return r < 0 ? -errno : (int)r; }

/* ---- eventfd ------------------------------------------------------------ */

/* A non-blocking, close-on-exec eventfd with counter 0. */
int vkio_eventfd(void) { return io_ret(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)); }

/* Adds `n` to the counter (wakes pollers). */
int vkio_eventfd_write(int fd, uint32_t n) {
  uint64_t v = n;
  ssize_t r;
  do {
    r = write(fd, &v, sizeof v);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : 0;
}

/* Reads and clears the counter; returns it (saturated to INT32_MAX), 0 if it was 0. */
int vkio_eventfd_read(int fd) {
  uint64_t v = 0;
  ssize_t r;
  do {
    r = read(fd, &v, sizeof v);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return errno == EAGAIN ? 0 : -errno;
  return v > INT32_MAX ? INT32_MAX : (int)v;
}

int vkio_close(int fd) { return io_ret(close(fd)); }

/* ---- KVM ---------------------------------------------------------------- */

/*
 * KVM_IOEVENTFD: a guest write of `len` bytes at MMIO `addr` (equal to
 * `datamatch` when `flags` has KVM_IOEVENTFD_FLAG_DATAMATCH) signals `fd` in
 * the kernel instead of exiting to userspace.
 */
int vkio_ioeventfd(int vm, int fd, uint64_t addr, uint32_t len, uint64_t datamatch,
                   uint32_t flags) {
  struct kvm_ioeventfd e;
  memset(&e, 0, sizeof e);
  e.datamatch = datamatch;
  e.addr = addr;
  e.len = len;
  e.fd = fd;
  e.flags = flags;
  return io_ret(ioctl(vm, KVM_IOEVENTFD, &e));
}

/* KVM_IRQFD: a write to `fd` pulses GSI `gsi` (flags 0) or detaches it (KVM_IRQFD_FLAG_DEASSIGN). */
int vkio_irqfd(int vm, int fd, uint32_t gsi, uint32_t flags) {
  struct kvm_irqfd q;
  memset(&q, 0, sizeof q);
  q.fd = (uint32_t)fd;
  q.gsi = gsi;
  q.flags = flags;
  return io_ret(ioctl(vm, KVM_IRQFD, &q));
}

/* ---- poll --------------------------------------------------------------- */

#define VKIO_MAX_POLL 64

/*
 * Waits up to `timeout_ms` (-1: forever) for any of `n` fds (i32 array) to be
 * readable. Bit i of `drain_mask` marks fd i as an eventfd whose counter is
 * consumed here. Writes the readable fds' bits (bit i for fd i, at most 64)
 * into `*ready` and returns how many fds are ready (0 on timeout).
 */
int vkio_wait(const int32_t *fds, uint32_t n, uint64_t drain_mask, int32_t timeout_ms,
              uint64_t *ready) {
  if (n == 0 || n > VKIO_MAX_POLL) return -EINVAL;
  struct pollfd p[VKIO_MAX_POLL];
  for (uint32_t i = 0; i < n; i++) {
    p[i].fd = fds[i];
    p[i].events = POLLIN;
    p[i].revents = 0;
  }
  int r;
  do {
    r = poll(p, n, timeout_ms);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return -errno;
  uint64_t bits = 0;
  int count = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (p[i].revents == 0) continue;
    bits |= 1ULL << i;
    count++;
    if ((drain_mask >> i) & 1) {
      uint64_t v;
      while (read(fds[i], &v, sizeof v) < 0 && errno == EINTR) {
      }
    }
  }
  *ready = bits;
  return count;
}

/* ---- io_uring ----------------------------------------------------------- */

struct vkio_ring {
  int fd;
  uint32_t sq_entries, cq_entries;
  uint32_t *sq_head, *sq_tail, *sq_mask, *sq_array;
  uint32_t *cq_head, *cq_tail, *cq_mask;
  struct io_uring_sqe *sqes;
  struct io_uring_cqe *cqes;
  void *sq_ring, *cq_ring;
  size_t sq_ring_size, cq_ring_size, sqes_size;
};

/*
 * One request as the TypeScript side lays it out (40 bytes, little-endian):
 *   0 opcode u8, 1 reserved u8, 2 SQE flags u16, 4 fd i32, 8 addr u64 (iovec
 *   array or buffer), 16 len u32 (iovec count, bytes, or fallocate mode),
 *   20 op flags u32 (rw_flags, fsync_flags), 24 user_data u64, 32 off u64.
 */
#define VKIO_REQ_BYTES 40

static void ring_free(struct vkio_ring *r) {
  if (r->sqes && r->sqes != MAP_FAILED) munmap(r->sqes, r->sqes_size);
  if (r->cq_ring && r->cq_ring != MAP_FAILED && r->cq_ring != r->sq_ring)
    munmap(r->cq_ring, r->cq_ring_size);
  if (r->sq_ring && r->sq_ring != MAP_FAILED) munmap(r->sq_ring, r->sq_ring_size);
  if (r->fd >= 0) close(r->fd);
  free(r);
}

/*
 * Creates a ring of `entries` SQEs (CQ twice that); with `eventfd` >= 0 the
 * kernel signals it on completions: every one, or with `async_only` only
 * those that did not complete inside the submitting io_uring_enter
 * (IORING_REGISTER_EVENTFD_ASYNC). Returns the ring's handle (a host
 * pointer) or -errno.
 */
int64_t vkio_uring_setup(uint32_t entries, int eventfd, uint32_t async_only) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  struct vkio_ring *r = calloc(1, sizeof *r);
  if (r == NULL) return -ENOMEM;
  r->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
  if (r->fd < 0) {
    int e = errno;
    free(r);
    return -e;
  }
  r->sq_ring_size = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
  r->cq_ring_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (p.features & IORING_FEAT_SINGLE_MMAP) {
    if (r->cq_ring_size > r->sq_ring_size) r->sq_ring_size = r->cq_ring_size;
    r->cq_ring_size = r->sq_ring_size;
  }
  r->sq_ring = mmap(NULL, r->sq_ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                    r->fd, IORING_OFF_SQ_RING);
  if (r->sq_ring == MAP_FAILED) goto fail;
  if (p.features & IORING_FEAT_SINGLE_MMAP) {
    r->cq_ring = r->sq_ring;
  } else {
    r->cq_ring = mmap(NULL, r->cq_ring_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      r->fd, IORING_OFF_CQ_RING);
    if (r->cq_ring == MAP_FAILED) goto fail;
  }
  r->sqes_size = p.sq_entries * sizeof(struct io_uring_sqe);
  r->sqes = mmap(NULL, r->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                 IORING_OFF_SQES);
  if (r->sqes == MAP_FAILED) goto fail;
  char *sq = r->sq_ring, *cq = r->cq_ring;
  r->sq_entries = p.sq_entries;
  r->cq_entries = p.cq_entries;
  r->sq_head = (uint32_t *)(sq + p.sq_off.head);
  r->sq_tail = (uint32_t *)(sq + p.sq_off.tail);
  r->sq_mask = (uint32_t *)(sq + p.sq_off.ring_mask);
  r->sq_array = (uint32_t *)(sq + p.sq_off.array);
  r->cq_head = (uint32_t *)(cq + p.cq_off.head);
  r->cq_tail = (uint32_t *)(cq + p.cq_off.tail);
  r->cq_mask = (uint32_t *)(cq + p.cq_off.ring_mask);
  r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
  if (eventfd >= 0) {
    int32_t efd = eventfd;
    unsigned op = async_only ? IORING_REGISTER_EVENTFD_ASYNC : IORING_REGISTER_EVENTFD;
    if (syscall(__NR_io_uring_register, r->fd, op, &efd, 1) < 0) goto fail;
  }
  return (int64_t)(uintptr_t)r;
fail: {
  int e = errno;
  ring_free(r);
  return -e;
}
}

/* Releases the ring (requests still in flight complete into nothing). */
int vkio_uring_close(uint64_t handle) {
  struct vkio_ring *r = (struct vkio_ring *)(uintptr_t)handle;
  if (r == NULL) return -EINVAL;
  ring_free(r);
  return 0;
}

/* Completions waiting in the CQ now (no syscall). */
int vkio_uring_ready(uint64_t handle) {
  struct vkio_ring *r = (struct vkio_ring *)(uintptr_t)handle;
  return (int)(__atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) - *r->cq_head);
}

/* SQ slots free now. */
int vkio_uring_space(uint64_t handle) {
  struct vkio_ring *r = (struct vkio_ring *)(uintptr_t)handle;
  uint32_t head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
  return (int)(r->sq_entries - (*r->sq_tail - head));
}

/*
 * Queues `n` requests (VKIO_REQ_BYTES each, see above) from `reqs` and
 * submits them with one io_uring_enter. Returns how many the kernel took
 * (fewer when the SQ is full), or -errno.
 */
int vkio_uring_submit(uint64_t handle, const uint8_t *reqs, uint32_t len, uint32_t n) {
  struct vkio_ring *r = (struct vkio_ring *)(uintptr_t)handle;
  if (r == NULL || (uint64_t)n * VKIO_REQ_BYTES > len) return -EINVAL;
  uint32_t head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
  uint32_t tail = *r->sq_tail;
  uint32_t space = r->sq_entries - (tail - head);
  if (n > space) n = space;
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *q = reqs + (size_t)i * VKIO_REQ_BYTES;
    uint32_t idx = tail & *r->sq_mask;
    struct io_uring_sqe *s = &r->sqes[idx];
    memset(s, 0, sizeof *s);
    uint16_t fl;
    uint32_t u32;
    uint64_t u64;
    s->opcode = q[0];
    memcpy(&fl, q + 2, 2);
    s->flags = (uint8_t)fl;
    memcpy(&s->fd, q + 4, 4);
    memcpy(&u64, q + 8, 8);
    s->addr = u64;
    memcpy(&u32, q + 16, 4);
    s->len = u32;
    memcpy(&u32, q + 20, 4);
    s->rw_flags = (__kernel_rwf_t)u32;
    memcpy(&u64, q + 24, 8);
    s->user_data = u64;
    memcpy(&u64, q + 32, 8);
    s->off = u64;
    r->sq_array[idx] = idx;
    tail++;
  }
  __atomic_store_n(r->sq_tail, tail, __ATOMIC_RELEASE);
  if (n == 0) return 0;
  int ret;
  do {
    ret = (int)syscall(__NR_io_uring_enter, r->fd, n, 0, 0, NULL, 0);
  } while (ret < 0 && errno == EINTR);
  return ret < 0 ? -errno : ret;
}

/*
 * Copies up to `max` completions into `out` (16 bytes each: user_data u64,
 * res i32, flags u32) and consumes them; returns how many. With `wait` set
 * and nothing completed, blocks in io_uring_enter for at least one.
 */
int vkio_uring_reap(uint64_t handle, uint8_t *out, uint32_t len, uint32_t max, uint32_t wait) {
  struct vkio_ring *r = (struct vkio_ring *)(uintptr_t)handle;
  if (r == NULL || (uint64_t)max * 16 > len) return -EINVAL;
  uint32_t head = *r->cq_head;
  uint32_t tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
  if (head == tail && wait) {
    int ret;
    do {
      ret = (int)syscall(__NR_io_uring_enter, r->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) return -errno;
    tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
  }
  uint32_t n = 0;
  while (head != tail && n < max) {
    const struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
    memcpy(out + (size_t)n * 16, &c->user_data, 8);
    memcpy(out + (size_t)n * 16 + 8, &c->res, 4);
    memcpy(out + (size_t)n * 16 + 12, &c->flags, 4);
    head++;
    n++;
  }
  __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
  return (int)n;
}

/* ---- files -------------------------------------------------------------- */

#define VKIO_IOV_MAX 1024 /* UIO_MAXIOV */

/*
 * preadv(2)/pwritev(2) on the calling thread: the `n` iovecs start `at`
 * bytes into `iovs` (a buffer of `len` bytes), the file offset is
 * off_hi:off_lo (two u32 halves, so a caller passes no 64-bit integer).
 * Returns the bytes moved (short at EOF) or -errno.
 */
static int rw_iov(int write, int fd, const uint8_t *iovs, uint32_t len, uint32_t at, uint32_t n,
                  uint32_t off_lo, uint32_t off_hi) {
  if (n == 0 || n > VKIO_IOV_MAX || at % 8 != 0 ||
      (uint64_t)at + (uint64_t)n * sizeof(struct iovec) > len)
    return -EINVAL;
  const struct iovec *iov = (const struct iovec *)(iovs + at);
  off_t off = (off_t)(((uint64_t)off_hi << 32) | off_lo);
  ssize_t r;
  do {
    r = write ? pwritev(fd, iov, (int)n, off) : preadv(fd, iov, (int)n, off);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : (r > INT_MAX ? INT_MAX : (int)r);
}

int vkio_preadv(int fd, const uint8_t *iovs, uint32_t len, uint32_t at, uint32_t n,
                uint32_t off_lo, uint32_t off_hi) {
  return rw_iov(0, fd, iovs, len, at, n, off_lo, off_hi);
}

int vkio_pwritev(int fd, const uint8_t *iovs, uint32_t len, uint32_t at, uint32_t n,
                 uint32_t off_lo, uint32_t off_hi) {
  return rw_iov(1, fd, iovs, len, at, n, off_lo, off_hi);
}

/*
 * Runs the read of the first request record in `reqs` (the layout
 * vkio_uring_submit takes: IORING_OP_READ into one buffer, or
 * IORING_OP_READV of `len` iovecs at `addr`) on the calling thread with
 * preadv2(RWF_NOWAIT): it copies only what the page cache holds and never
 * waits for the disk. Returns the bytes read (short when part is not cached
 * or at end of file), -EAGAIN when the first bytes are not cached, -EINVAL
 * for another opcode, or -errno.
 */
int vkio_uring_read_nowait(const uint8_t *reqs, uint32_t len) {
  if (reqs == NULL || len < VKIO_REQ_BYTES) return -EINVAL;
  int fd;
  uint64_t addr, off;
  uint32_t n;
  memcpy(&fd, reqs + 4, 4);
  memcpy(&addr, reqs + 8, 8);
  memcpy(&n, reqs + 16, 4);
  memcpy(&off, reqs + 32, 8);
  struct iovec one;
  const struct iovec *iov;
  int cnt;
  if (reqs[0] == IORING_OP_READ) {
    one.iov_base = (void *)(uintptr_t)addr;
    one.iov_len = n;
    iov = &one;
    cnt = 1;
  } else if (reqs[0] == IORING_OP_READV) {
    if (n == 0 || n > VKIO_IOV_MAX) return -EINVAL;
    iov = (const struct iovec *)(uintptr_t)addr;
    cnt = (int)n;
  } else {
    return -EINVAL;
  }
  ssize_t r;
  do {
    r = preadv2(fd, iov, cnt, (off_t)off, RWF_NOWAIT);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : (r > INT_MAX ? INT_MAX : (int)r);
}

/* open(2) with O_CLOEXEC added; `flags` as the kernel takes them. */
int vkio_open(const char *path, int flags, uint32_t mode) {
  return io_ret(open(path, flags | O_CLOEXEC, mode));
}
