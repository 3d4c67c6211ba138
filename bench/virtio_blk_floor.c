/*
 * Host floors under bench/virtio_blk_bench.ts's latency rows, measured on
 * this machine in C (no device, no JavaScript): what a thread wake-up through
 * an eventfd costs (the notify and the interrupt of a virtio request are one
 * each), and what one 4 KiB page-cache read costs through pread, through
 * preadv2(RWF_NOWAIT) and through a one-entry io_uring_enter (what the
 * device's I/O Worker pays per depth-1 read).
 *
 * Built into the same library as virtio_blk_driver.c (see virtio_blk_rig.ts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static uint64_t floor_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

struct pong {
  int ping, pong;
  uint32_t n;
};

static int wait_fd(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  uint64_t v;
  for (;;) {
    int r = poll(&p, 1, 5000);
    if (r > 0) break;
    if (r == 0) return -ETIMEDOUT;
    if (errno != EINTR) return -errno;
  }
  return read(fd, &v, 8) == 8 ? 0 : -errno;
}

static int kick_fd(int fd) {
  uint64_t v = 1;
  return write(fd, &v, 8) == 8 ? 0 : -errno;
}

static void *ponger(void *arg) {
  struct pong *p = arg;
  for (uint32_t i = 0; i < p->n; i++) {
    if (wait_fd(p->ping) < 0 || kick_fd(p->pong) < 0) break;
  }
  return NULL;
}

/*
 * `n` round trips between this thread and a second one, each blocked in
 * poll on its own eventfd until the other writes it; the nanoseconds of each
 * round trip (two wake-ups) go to `ns`. Returns 0 or -errno.
 */
int64_t vbf_wake_rtt(uint32_t n, uint32_t *ns) {
  struct pong p = {eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC), n};
  int64_t ret = 0;
  pthread_t t;
  if (p.ping < 0 || p.pong < 0 || pthread_create(&t, NULL, ponger, &p) != 0) {
    if (p.ping >= 0) close(p.ping);
    if (p.pong >= 0) close(p.pong);
    return -EIO;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint64_t a = floor_now();
    int r = kick_fd(p.ping);
    if (r == 0) r = wait_fd(p.pong);
    if (r < 0) {
      ret = r;
      break;
    }
    ns[i] = (uint32_t)(floor_now() - a);
  }
  if (ret != 0) {
    pthread_detach(t); /* it times out in its poll and ends; its fds stay open */
    return ret;
  }
  pthread_join(t, NULL);
  close(p.ping);
  close(p.pong);
  return 0;
}

/*
 * `n` 4 KiB reads of `fd` at random block offsets below `span` into `buf`
 * (4 KiB), one at a time: mode 0 pread, 1 preadv2(RWF_NOWAIT), 2 a
 * one-entry IORING_OP_READ submitted and reaped. Returns the nanoseconds in
 * all, or -errno (a short read is -EIO; NOWAIT on an uncached page -EAGAIN).
 */
int64_t vbf_reads(int fd, uint64_t span, uint32_t n, uint32_t mode, uint8_t *buf) {
  uint64_t blocks = span / 4096, s = 0x9e3779b97f4a7c15ull;
  if (blocks == 0 || mode > 2) return -EINVAL;
  int rfd = -1;
  struct io_uring_params p;
  uint8_t *sq = MAP_FAILED, *cq = MAP_FAILED;
  struct io_uring_sqe *sqes = MAP_FAILED;
  size_t sq_len = 0, cq_len = 0, sqe_len = 0;
  int64_t ret = 0;
  if (mode == 2) {
    memset(&p, 0, sizeof p);
    rfd = (int)syscall(__NR_io_uring_setup, 8, &p);
    if (rfd < 0) return -errno;
    sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    sqe_len = p.sq_entries * sizeof(struct io_uring_sqe);
    sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, rfd,
              IORING_OFF_SQ_RING);
    cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, rfd,
              IORING_OFF_CQ_RING);
    sqes = mmap(NULL, sqe_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, rfd,
                IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
      ret = -ENOMEM;
      goto out;
    }
  }
  uint64_t t0 = floor_now();
  for (uint32_t i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    off_t off = (off_t)((s % blocks) * 4096);
    ssize_t r;
    if (mode == 0) {
      r = pread(fd, buf, 4096, off);
    } else if (mode == 1) {
      struct iovec v = {buf, 4096};
      r = preadv2(fd, &v, 1, off, RWF_NOWAIT);
    } else {
      uint32_t *tail = (uint32_t *)(sq + p.sq_off.tail);
      uint32_t mask = *(uint32_t *)(sq + p.sq_off.ring_mask);
      uint32_t *array = (uint32_t *)(sq + p.sq_off.array);
      uint32_t *cq_head = (uint32_t *)(cq + p.cq_off.head);
      uint32_t *cq_tail = (uint32_t *)(cq + p.cq_off.tail);
      uint32_t cq_mask = *(uint32_t *)(cq + p.cq_off.ring_mask);
      uint32_t idx = *tail & mask;
      struct io_uring_sqe *e = &sqes[idx];
      memset(e, 0, sizeof *e);
      e->opcode = IORING_OP_READ;
      e->fd = fd;
      e->addr = (uint64_t)(uintptr_t)buf;
      e->len = 4096;
      e->off = (uint64_t)off;
      array[idx] = idx;
      __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
      if (syscall(__NR_io_uring_enter, rfd, 1, 0, 0, NULL, 0) < 0) {
        ret = -errno;
        goto out;
      }
      while (__atomic_load_n(cq_tail, __ATOMIC_ACQUIRE) == *cq_head) {
        if (syscall(__NR_io_uring_enter, rfd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0 &&
            errno != EINTR) {
          ret = -errno;
          goto out;
        }
      }
      struct io_uring_cqe *c = (struct io_uring_cqe *)(cq + p.cq_off.cqes) + (*cq_head & cq_mask);
      r = c->res;
      __atomic_store_n(cq_head, *cq_head + 1, __ATOMIC_RELEASE);
      if (r < 0) {
        errno = (int)-r;
        r = -1;
      }
    }
    if (r != 4096) {
      ret = r < 0 ? -errno : -EIO;
      goto out;
    }
  }
  ret = (int64_t)(floor_now() - t0);
out:
  if (sqes != MAP_FAILED) munmap(sqes, sqe_len);
  if (cq != MAP_FAILED) munmap(cq, cq_len);
  if (sq != MAP_FAILED) munmap(sq, sq_len);
  if (rfd >= 0) close(rfd);
  return ret;
}
