/*
 * uffd.c: the userfaultfd write-protect mechanism under live checkpoints.
 *
 * One vk_wp context owns one userfaultfd registered (write-protect mode) over
 * guest RAM regions, and one pthread that reads its fault events. The thread
 * never waits on the JS event loop, so guest writes through KVM and device
 * writes from I/O Worker threads are served the same way. It has two modes,
 * both pure mechanism (the TS side decides when to switch):
 *
 *  - RECORD: a fault sets the page's dirty bit, logs the page as unprotected,
 *    and unprotects it (wakes the writer).
 *  - COPY: a fault on a page still to be saved copies the page into the next
 *    slot of the caller's ring before unprotecting it; a page the background
 *    writer is saving is left to the writer, whose release wakes the fault.
 *
 * Per page, one state byte (VK_ST_*) says who saved it; claim/release give the
 * background writer the same pages in address order. vk_wp_freeze() is what a
 * pause calls: it re-protects only the pages unprotected since the last
 * re-protect, swaps the dirty bitmap, and switches to COPY, under the mutex
 * the fault thread holds while it handles an event, so no event is half done.
 *
 * Also here: page scanning (zero test + CRC32C), positioned writes from a raw
 * address and fixed file mappings, which the checkpoint writer and restore use.
 * Every function returns >= 0 or -errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Debian 12's headers predate these (kernel 6.4+). */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif

#define VK_PAGE 4096u
#define VK_MAX_REGIONS 8
#define VK_MSG_BATCH 32

/* Page states (one byte per page, zeroed by vk_wp_reset). */
enum { VK_ST_TODO = 0, VK_ST_CLAIMED = 1, VK_ST_COPIED = 2, VK_ST_SAVED = 3 };
/* Modes. */
enum { VK_MODE_RECORD = 0, VK_MODE_COPY = 1 };
/* Page kinds reported by the scanners. */
enum { VK_KIND_NONE = 0, VK_KIND_ZERO = 1, VK_KIND_DATA = 2 };
/* Counter indices of vk_wp_counters. */
enum {
  VK_C_FAULTS = 0, VK_C_COPIES, VK_C_RECORDED, VK_C_LEFT_TO_WRITER, VK_C_RING_WAITS,
  VK_C_FAULT_NS, VK_C_REPROTECTED, VK_C_MAX_FAULT_NS, VK_C_MISSING, VK_C_ERRORS, VK_C_MINOR,
  VK_C_STORED, VK_C_COUNT
};

struct vk_region {
  uint64_t base, size, pages;
  uint8_t *state;
  uint64_t *dirty;   /* written since the last freeze */
  uint64_t *spare;   /* zeroed, becomes dirty at the next freeze */
  uint64_t *save;    /* pages to save (NULL: all); the dirty map of the previous freeze */
  uint64_t *unprot;  /* unprotected by the handler since the last re-protect */
  uint64_t source;   /* lazily restored: missing pages are copied from here (0: none) */
  int store;         /* shared page store (tmpfs file mapped MAP_PRIVATE here), or -1 */
  uint64_t store_off; /* the region's offset in the store */
};

struct vk_wp {
  int uffd, evfd;
  pthread_t thread;
  int started;
  pthread_mutex_t mu;
  int mode, stop, diff, aborting;
  int protecting;    /* pages are write-protected unless logged (set by protect_all) */
  int nreg;
  struct vk_region reg[VK_MAX_REGIONS];
  uint64_t *log;     /* (region << 56) | page, pages unprotected since the last re-protect */
  uint64_t log_cap, log_len;
  int log_overflow;
  uint8_t *ring;     /* ring_slots pages */
  uint64_t *ring_page;
  uint32_t ring_slots;
  uint64_t ring_head, ring_tail; /* produced / consumed counts (atomics) */
  uint64_t counters[VK_C_COUNT];
};

static int ret_errno(long r) { return r < 0 ? -errno : (int)r; }

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static inline int bit_test(const uint64_t *m, uint64_t i) { return (m[i >> 6] >> (i & 63)) & 1; }
static inline void bit_set(uint64_t *m, uint64_t i) {
  __atomic_fetch_or(&m[i >> 6], 1ull << (i & 63), __ATOMIC_RELAXED);
}

static int wp_range(int uffd, uint64_t addr, uint64_t len, int protect) {
  struct uffdio_writeprotect w;
  w.range.start = addr;
  w.range.len = len;
  w.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0;
  for (;;) {
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &w) == 0) return 0;
    if (errno != EAGAIN && errno != EINTR) return -errno;
  }
}

static int wake_range(int uffd, uint64_t addr, uint64_t len) {
  struct uffdio_range r = {.start = addr, .len = len};
  return ret_errno(ioctl(uffd, UFFDIO_WAKE, &r));
}

/* ---- CRC32C (Castagnoli), SSE4.2 when the CPU has it ---------------------- */

static uint32_t crc_table[8][256];
static int crc_hw = -1;

static void crc_init(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    crc_table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++)
    for (int t = 1; t < 8; t++)
      crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xff];
  __builtin_cpu_init();
  crc_hw = __builtin_cpu_supports("sse4.2");
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_run(uint32_t c, const uint8_t *p,
                                                            uint64_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
    p += 8;
    n -= 8;
  }
  c = (uint32_t)c64;
  while (n--) c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}

static uint32_t crc_sw_run(uint32_t c, const uint8_t *p, uint64_t n) {
  while (n >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
        crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^
        crc_table[2][(hi >> 8) & 0xff] ^ crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
  return c;
}

static uint32_t crc32c(uint32_t crc, const uint8_t *p, uint64_t n) {
  if (crc_hw < 0) crc_init();
  uint32_t c = ~crc;
  c = crc_hw ? crc_hw_run(c, p, n) : crc_sw_run(c, p, n);
  return ~c;
}

/*
 * CRC32C of one 4 KiB page in three interleaved lanes: the crc32 instruction
 * has a latency of 3 cycles and a throughput of 1, so three independent
 * streams run about three times as fast as one. The lanes' registers are
 * joined by the linearity of CRCs: reg(A||B) = M^|B| reg(A) xor reg0(B),
 * where M^|B| ("shift over |B| zero bytes") is applied with four byte tables
 * built once for the lane length.
 */
#define LANE 1360u /* 3 * 1360 = 4080; the last 16 bytes follow the join */
static uint32_t lane_shift[4][256];

/* reg * x^(8*len) mod P (reflected), bit by bit: only to build the tables. */
static uint32_t shift_slow(uint32_t reg, uint32_t len) {
  for (uint32_t i = 0; i < len * 8; i++) reg = reg & 1 ? (reg >> 1) ^ 0x82f63b78u : reg >> 1;
  return reg;
}

static void lane_init(void) {
  /* Linear in reg: build from the images of single bits, then byte tables. */
  uint32_t bit[32];
  for (int b = 0; b < 32; b++) bit[b] = shift_slow(1u << b, LANE);
  for (int k = 0; k < 4; k++)
    for (uint32_t v = 0; v < 256; v++) {
      uint32_t r = 0;
      for (int b = 0; b < 8; b++)
        if (v & (1u << b)) r ^= bit[k * 8 + b];
      lane_shift[k][v] = r;
    }
}

static inline uint32_t lane_apply(uint32_t r) {
  return lane_shift[0][r & 0xff] ^ lane_shift[1][(r >> 8) & 0xff] ^
         lane_shift[2][(r >> 16) & 0xff] ^ lane_shift[3][r >> 24];
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_page(const uint8_t *p) {
  uint64_t a = 0xffffffffu, b = 0, c = 0;
  const uint8_t *pa = p, *pb = p + LANE, *pc = p + 2 * LANE;
  for (uint32_t i = 0; i < LANE; i += 8) {
    uint64_t x, y, z;
    memcpy(&x, pa + i, 8);
    memcpy(&y, pb + i, 8);
    memcpy(&z, pc + i, 8);
    a = __builtin_ia32_crc32di(a, x);
    b = __builtin_ia32_crc32di(b, y);
    c = __builtin_ia32_crc32di(c, z);
  }
  uint32_t r = lane_apply(lane_apply((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
  r = crc_hw_run(r, p + 3 * LANE, VK_PAGE - 3 * LANE);
  return ~r;
}

/* CRC32C of one page (the fast path of the scanners). */
static pthread_once_t lane_once = PTHREAD_ONCE_INIT;
static void lane_setup(void) {
  if (crc_hw < 0) crc_init();
  lane_init();
}

static uint32_t crc32c_page(const uint8_t *p) {
  pthread_once(&lane_once, lane_setup);
  if (!crc_hw) return crc32c(0, p, VK_PAGE);
  return crc_hw_page(p);
}

/* CRC32C of buf[0..len) continuing from `crc` (0 to start). */
uint32_t vk_crc32c(uint32_t crc, const uint8_t *buf, uint64_t len) { return crc32c(crc, buf, len); }
/* The same over a raw address (guest memory, a mapping). */
uint32_t vk_crc32c_addr(uint32_t crc, uint64_t addr, uint64_t len) {
  return crc32c(crc, (const uint8_t *)(uintptr_t)addr, len);
}

static int page_is_zero(const uint8_t *p) {
  const uint64_t *q = (const uint64_t *)p;
  uint64_t acc = 0;
  for (unsigned i = 0; i < VK_PAGE / 8; i += 8)
    acc |= q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7];
  return acc == 0;
}

/*
 * For each of `pages` pages at addr: kinds[i] = ZERO or DATA, and for DATA
 * pages crcs[i] = CRC32C of the page. Returns the number of DATA pages.
 */
int vk_scan_pages(uint64_t addr, uint32_t pages, uint8_t *kinds, uint32_t *crcs) {
  int data = 0;
  for (uint32_t i = 0; i < pages; i++) {
    const uint8_t *p = (const uint8_t *)(uintptr_t)(addr + (uint64_t)i * VK_PAGE);
    if (page_is_zero(p)) {
      kinds[i] = VK_KIND_ZERO;
      crcs[i] = 0;
    } else {
      kinds[i] = VK_KIND_DATA;
      crcs[i] = crc32c_page(p);
      data++;
    }
  }
  return data;
}

/* ---- files --------------------------------------------------------------- */

int vk_file_open(const char *path, int flags, int mode) {
  return ret_errno(open(path, flags | O_CLOEXEC, mode));
}
int vk_file_close(int fd) { return ret_errno(close(fd)); }
int vk_file_fsync(int fd) { return ret_errno(fsync(fd)); }
int vk_file_truncate(int fd, uint64_t len) { return ret_errno(ftruncate(fd, (off_t)len)); }
/* fsync of a directory, so a rename inside it is durable. */
int vk_dir_fsync(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int r = fsync(fd) < 0 ? -errno : 0;
  close(fd);
  return r;
}
/* Writes len bytes from the raw address addr at file offset off (all of them, or -errno). */
int vk_pwrite_addr(int fd, uint64_t addr, uint64_t len, uint64_t off) {
  const uint8_t *p = (const uint8_t *)(uintptr_t)addr;
  while (len > 0) {
    ssize_t n = pwrite(fd, p, len > (1u << 30) ? (1u << 30) : len, (off_t)off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;
    p += n;
    off += (uint64_t)n;
    len -= (uint64_t)n;
  }
  return 0;
}
/* The same from a JS buffer. */
int vk_pwrite_buf(int fd, const uint8_t *buf, uint64_t len, uint64_t off) {
  return vk_pwrite_addr(fd, (uint64_t)(uintptr_t)buf, len, off);
}
/* Reads up to len bytes at off into buf; returns the count (short only at end of file). */
int64_t vk_pread_buf(int fd, uint8_t *buf, uint64_t len, uint64_t off) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    done += (uint64_t)n;
  }
  return (int64_t)done;
}
/* flock(2) of fd with op (LOCK_SH 1, LOCK_EX 2, LOCK_NB 4, LOCK_UN 8). */
int vk_file_lock(int fd, int op) { return ret_errno(flock(fd, op)); }
/* out[0..5) = size, owner uid, link count, mode, inode of an open file. */
int vk_file_stat(int fd, uint64_t *out) {
  struct stat st;
  if (fstat(fd, &st) < 0) return -errno;
  out[0] = (uint64_t)st.st_size;
  out[1] = (uint64_t)st.st_uid;
  out[2] = (uint64_t)st.st_nlink;
  out[3] = (uint64_t)st.st_mode;
  out[4] = (uint64_t)st.st_ino;
  return 0;
}
/* The f_type magic of the file system holding fd (statfs(2); tmpfs is 0x01021994). */
int64_t vk_fs_magic(int fd) {
  struct statfs sf;
  if (fstatfs(fd, &sf) < 0) return -(int64_t)errno;
  return (int64_t)(uint64_t)sf.f_type;
}
/* Effective uid of the process. */
int64_t vk_geteuid(void) { return (int64_t)geteuid(); }
/* Size of an open file. */
int64_t vk_file_size(int fd) {
  off_t e = lseek(fd, 0, SEEK_END);
  return e < 0 ? -(int64_t)errno : (int64_t)e;
}

static int64_t map_result(void *p) { return p == MAP_FAILED ? -(int64_t)errno : (int64_t)(uintptr_t)p; }

/* MAP_PRIVATE|MAP_FIXED of fd[off..off+len) at addr, read-write (copy on write). */
int64_t vk_map_file_fixed(uint64_t addr, uint64_t len, int fd, uint64_t off) {
  return map_result(mmap((void *)(uintptr_t)addr, len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, (off_t)off));
}
/* Fresh zero anonymous pages at addr (MAP_FIXED), as guest RAM is mapped. */
int64_t vk_map_anon_fixed(uint64_t addr, uint64_t len) {
  return map_result(mmap((void *)(uintptr_t)addr, len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0));
}
/* Read-only shared mapping of a file (for verify and merge). */
int64_t vk_map_file_ro(int fd, uint64_t len, uint64_t off) {
  return map_result(mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)off));
}
int vk_unmap(uint64_t addr, uint64_t len) { return ret_errno(munmap((void *)(uintptr_t)addr, len)); }
int vk_advise(uint64_t addr, uint64_t len, int advice) {
  return ret_errno(madvise((void *)(uintptr_t)addr, len, advice));
}

/* ---- the write-protect context ------------------------------------------- */

static struct vk_region *find_region(struct vk_wp *w, uint64_t addr, int *idx) {
  for (int i = 0; i < w->nreg; i++) {
    struct vk_region *r = &w->reg[i];
    if (addr >= r->base && addr < r->base + r->size) {
      *idx = i;
      return r;
    }
  }
  return NULL;
}

static void log_unprotected(struct vk_wp *w, int ri, struct vk_region *r, uint64_t page) {
  if (bit_test(r->unprot, page)) return;
  bit_set(r->unprot, page);
  if (w->log_len < w->log_cap) w->log[w->log_len++] = ((uint64_t)ri << 56) | page;
  else w->log_overflow = 1;
}

static void handle_fault(struct vk_wp *w, uint64_t addr) {
  int ri;
  struct vk_region *r = find_region(w, addr, &ri);
  if (r == NULL) return;
  uint64_t page = (addr - r->base) / VK_PAGE;
  uint64_t pa = r->base + page * VK_PAGE;
  bit_set(r->dirty, page);
  if (w->mode == VK_MODE_COPY) {
    int wanted = r->save == NULL || bit_test(r->save, page);
    uint8_t expect = VK_ST_TODO;
    if (wanted && __atomic_compare_exchange_n(&r->state[page], &expect, VK_ST_COPIED, 0,
                                              __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      /* Wait for a free slot: the writer drains the ring. */
      while (__atomic_load_n(&w->ring_head, __ATOMIC_ACQUIRE) -
                 __atomic_load_n(&w->ring_tail, __ATOMIC_ACQUIRE) >=
             w->ring_slots) {
        if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&w->aborting, __ATOMIC_ACQUIRE)) {
          /* The save is being abandoned: let the write go on. */
          __atomic_store_n(&r->state[page], VK_ST_SAVED, __ATOMIC_RELEASE);
          wp_range(w->uffd, pa, VK_PAGE, 0);
          return;
        }
        w->counters[VK_C_RING_WAITS]++;
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
      }
      uint64_t slot = w->ring_head % w->ring_slots;
      memcpy(w->ring + slot * VK_PAGE, (const void *)(uintptr_t)pa, VK_PAGE);
      w->ring_page[slot] = ((uint64_t)ri << 56) | page;
      __atomic_store_n(&w->ring_head, w->ring_head + 1, __ATOMIC_RELEASE);
      w->counters[VK_C_COPIES]++;
    } else if (wanted && expect == VK_ST_CLAIMED) {
      /* The writer is saving it; its release unprotects (or wakes) the page. */
      w->counters[VK_C_LEFT_TO_WRITER]++;
      return;
    }
  } else {
    w->counters[VK_C_RECORDED]++;
  }
  log_unprotected(w, ri, r, page);
  wp_range(w->uffd, pa, VK_PAGE, 0);
}

/* Whether a page being filled gets mapped write-protected. */
static int fill_protected(struct vk_wp *w, struct vk_region *r, uint64_t page) {
  int protect = w->protecting && !bit_test(r->unprot, page);
  if (w->mode == VK_MODE_COPY && protect) {
    uint8_t st = __atomic_load_n(&r->state[page], __ATOMIC_ACQUIRE);
    /* A page still to be saved stays protected; a saved one is filled as it was. */
    protect = st == VK_ST_TODO || st == VK_ST_CLAIMED;
  }
  return protect;
}

/* Maps the store's page-cache page at pa (UFFDIO_CONTINUE; wakes the fault). */
static int store_continue(struct vk_wp *w, uint64_t pa, int protect) {
  struct uffdio_continue c = {.range = {.start = pa, .len = VK_PAGE},
                              .mode = protect ? UFFDIO_CONTINUE_MODE_WP : 0};
  for (;;) {
    if (ioctl(w->uffd, UFFDIO_CONTINUE, &c) == 0) return 0;
    if (errno == EEXIST) return wake_range(w->uffd, pa, VK_PAGE); /* mapped meanwhile */
    if (errno != EAGAIN && errno != EINTR) return -errno;
  }
}

/* A zero page: the shared zero page, write-protected before the fault is woken when tracking. */
static int fill_zero(struct vk_wp *w, uint64_t pa, int protect) {
  struct uffdio_zeropage z = {.range = {.start = pa, .len = VK_PAGE},
                              .mode = protect ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0};
  for (;;) {
    if (ioctl(w->uffd, UFFDIO_ZEROPAGE, &z) == 0) break;
    if (errno == EEXIST) {
      /* A write-protect marker (protect_all over an unmapped page) holds the PTE: clear it. */
      if (wp_range(w->uffd, pa, VK_PAGE, 0) < 0 || ioctl(w->uffd, UFFDIO_ZEROPAGE, &z) < 0) {
        if (errno != EEXIST) return -errno;
        return wake_range(w->uffd, pa, VK_PAGE); /* filled meanwhile */
      }
      break;
    }
    if (errno != EAGAIN && errno != EINTR) return -errno;
  }
  if (!protect) return 0;
  int e = wp_range(w->uffd, pa, VK_PAGE, 1);
  int k = wake_range(w->uffd, pa, VK_PAGE);
  return e < 0 ? e : k;
}

/* A private copy of the source page (UFFDIO_COPY: anonymous memory, or a store that is full). */
static int fill_copy(struct vk_wp *w, uint64_t pa, uint64_t src, int protect) {
  struct uffdio_copy c = {.dst = pa, .src = src, .len = VK_PAGE,
                          .mode = protect ? UFFDIO_COPY_MODE_WP : 0};
  for (;;) {
    if (ioctl(w->uffd, UFFDIO_COPY, &c) == 0) return 0;
    if (errno == EEXIST) return wake_range(w->uffd, pa, VK_PAGE); /* filled meanwhile */
    if (errno != EAGAIN && errno != EINTR) return -errno;
  }
}

/*
 * Fills a missing page of a lazily restored region from its source mapping.
 * With a shared store, a data page is written into the store (the page cache
 * every clone of the checkpoint maps) and mapped from there, so a page the
 * guest only reads is never copied per VM; zero pages map the zero page.
 */
static void handle_missing(struct vk_wp *w, uint64_t addr) {
  int ri;
  struct vk_region *r = find_region(w, addr, &ri);
  if (r == NULL || r->source == 0) return;
  uint64_t page = (addr - r->base) / VK_PAGE;
  uint64_t pa = r->base + page * VK_PAGE;
  uint64_t src = r->source + page * VK_PAGE;
  int protect = fill_protected(w, r, page);
  w->counters[VK_C_MISSING]++;
  int e;
  if (r->store < 0) {
    e = fill_copy(w, pa, src, protect);
  } else if (page_is_zero((const uint8_t *)(uintptr_t)src)) {
    e = fill_zero(w, pa, protect);
  } else if (pwrite(r->store, (const void *)(uintptr_t)src, VK_PAGE,
                    (off_t)(r->store_off + page * VK_PAGE)) == VK_PAGE) {
    w->counters[VK_C_STORED]++;
    e = store_continue(w, pa, protect);
  } else {
    e = fill_copy(w, pa, src, protect); /* the store is full (ENOSPC): a private copy */
  }
  if (e < 0) {
    w->counters[VK_C_ERRORS]++;
    wake_range(w->uffd, pa, VK_PAGE);
  }
}

/* A page the store holds (another clone, or an earlier fill) but this VM has not mapped yet. */
static void handle_minor(struct vk_wp *w, uint64_t addr) {
  int ri;
  struct vk_region *r = find_region(w, addr, &ri);
  if (r == NULL) return;
  uint64_t page = (addr - r->base) / VK_PAGE;
  uint64_t pa = r->base + page * VK_PAGE;
  w->counters[VK_C_MINOR]++;
  if (store_continue(w, pa, fill_protected(w, r, page)) < 0) {
    w->counters[VK_C_ERRORS]++;
    wake_range(w->uffd, pa, VK_PAGE);
  }
}

static void *fault_thread(void *arg) {
  struct vk_wp *w = arg;
  struct pollfd p[2] = {{.fd = w->uffd, .events = POLLIN}, {.fd = w->evfd, .events = POLLIN}};
  struct uffd_msg msgs[VK_MSG_BATCH];
  while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents & POLLIN) {
      uint64_t v;
      if (read(w->evfd, &v, sizeof v) < 0 && errno != EAGAIN) break;
    }
    if (!(p[0].revents & POLLIN)) continue;
    ssize_t n = read(w->uffd, msgs, sizeof msgs);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      break;
    }
    uint64_t t0 = now_ns();
    pthread_mutex_lock(&w->mu);
    for (ssize_t i = 0; i < n / (ssize_t)sizeof msgs[0]; i++) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      w->counters[VK_C_FAULTS]++;
      uint64_t a = msgs[i].arg.pagefault.address & ~(uint64_t)(VK_PAGE - 1);
      uint64_t flags = msgs[i].arg.pagefault.flags;
      if (flags & UFFD_PAGEFAULT_FLAG_WP) handle_fault(w, a);
      else if (flags & UFFD_PAGEFAULT_FLAG_MINOR) handle_minor(w, a);
      else handle_missing(w, a);
    }
    pthread_mutex_unlock(&w->mu);
    uint64_t dt = now_ns() - t0;
    w->counters[VK_C_FAULT_NS] += dt;
    if (dt > w->counters[VK_C_MAX_FAULT_NS]) w->counters[VK_C_MAX_FAULT_NS] = dt;
  }
  return NULL;
}

static void free_regions(struct vk_wp *w) {
  for (int i = 0; i < w->nreg; i++) {
    struct vk_region *r = &w->reg[i];
    free(r->state);
    free(r->dirty);
    free(r->spare);
    free(r->save);
    free(r->unprot);
  }
  w->nreg = 0;
}

/*
 * A context over `n` regions (bases/sizes: page-aligned host ranges of guest
 * RAM), with a ring of ring_slots pages and a log of log_cap entries. Registers
 * every region for write-protect faults (nothing is protected yet) and starts
 * the fault thread in RECORD mode. A non-zero sources[i] makes region i lazy:
 * it is also registered for missing faults, each filled from sources[i] at the
 * same offset (a mapping of a checkpoint's memory). A region i with
 * stores[i] >= 0 is a MAP_PRIVATE mapping of that tmpfs file from
 * store_offs[i]: missing pages are written into the file and mapped from its
 * page cache, and pages the file already holds are mapped on first access
 * (minor faults), so every VM mapping the file shares the pages it only
 * reads. Returns the context address or -errno.
 */
int64_t vk_wp_create(const uint64_t *bases, const uint64_t *sizes, const uint64_t *sources,
                     const int64_t *stores, const uint64_t *store_offs, uint32_t n,
                     uint32_t ring_slots, uint32_t log_cap) {
  if (n == 0 || n > VK_MAX_REGIONS || ring_slots == 0 || log_cap == 0) return -EINVAL;
  struct vk_wp *w = calloc(1, sizeof *w);
  if (w == NULL) return -ENOMEM;
  w->uffd = w->evfd = -1;
  pthread_mutex_init(&w->mu, NULL);
  int err = 0;
  w->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (w->uffd < 0) {
    err = -errno;
    goto fail;
  }
  int stored = 0;
  for (uint32_t i = 0; i < n; i++) stored |= stores[i] >= 0;
  struct uffdio_api api = {.api = UFFD_API,
                           .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_UNPOPULATED |
                                       (stored ? UFFD_FEATURE_MINOR_SHMEM : 0)};
  if (ioctl(w->uffd, UFFDIO_API, &api) < 0) {
    err = -errno;
    goto fail;
  }
  w->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w->evfd < 0) {
    err = -errno;
    goto fail;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (bases[i] % VK_PAGE || sizes[i] % VK_PAGE || sizes[i] == 0) {
      err = -EINVAL;
      goto fail;
    }
    struct vk_region *r = &w->reg[w->nreg++];
    r->base = bases[i];
    r->size = sizes[i];
    r->pages = sizes[i] / VK_PAGE;
    uint64_t words = (r->pages + 63) / 64;
    r->state = calloc(r->pages, 1);
    r->dirty = calloc(words, 8);
    r->spare = calloc(words, 8);
    r->unprot = calloc(words, 8);
    if (!r->state || !r->dirty || !r->spare || !r->unprot) {
      err = -ENOMEM;
      goto fail;
    }
    r->source = sources[i];
    r->store = r->source != 0 && stores[i] >= 0 ? (int)stores[i] : -1;
    r->store_off = store_offs[i];
    struct uffdio_register reg = {
        .range = {.start = r->base, .len = r->size},
        .mode = UFFDIO_REGISTER_MODE_WP | (r->source ? UFFDIO_REGISTER_MODE_MISSING : 0) |
                (r->store >= 0 ? UFFDIO_REGISTER_MODE_MINOR : 0)};
    if (ioctl(w->uffd, UFFDIO_REGISTER, &reg) < 0) {
      err = -errno;
      goto fail;
    }
  }
  w->ring_slots = ring_slots;
  w->ring = mmap(NULL, (uint64_t)ring_slots * VK_PAGE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (w->ring == MAP_FAILED) {
    w->ring = NULL;
    err = -ENOMEM;
    goto fail;
  }
  w->ring_page = calloc(ring_slots, 8);
  w->log = calloc(log_cap, 8);
  w->log_cap = log_cap;
  if (!w->ring_page || !w->log) {
    err = -ENOMEM;
    goto fail;
  }
  int e = pthread_create(&w->thread, NULL, fault_thread, w);
  if (e != 0) {
    err = -e;
    goto fail;
  }
  w->started = 1;
  return (int64_t)(uintptr_t)w;
fail:
  if (w->uffd >= 0) close(w->uffd); /* closing the uffd unregisters and wakes everything */
  if (w->evfd >= 0) close(w->evfd);
  free_regions(w);
  if (w->ring) munmap(w->ring, (uint64_t)ring_slots * VK_PAGE);
  free(w->ring_page);
  free(w->log);
  free(w);
  return err;
}

#define CTX(h) ((struct vk_wp *)(uintptr_t)(h))

/*
 * Writes len bytes of buf into registered RAM at host address addr on the
 * calling thread, handled as the fault thread handles a guest's write but
 * without a fault round trip (a VMM writing restored RAM before the vCPUs
 * run, e.g. a new VM generation id): each page is recorded as written
 * (dirty, logged), filled first if it is still missing (lazy regions) and
 * unprotected, then written. Refused with -EBUSY while a checkpoint copies
 * pages before writes (COPY mode), -EFAULT outside the regions.
 */
int vk_wp_write(uint64_t h, uint64_t addr, const uint8_t *buf, uint64_t len) {
  struct vk_wp *w = CTX(h);
  pthread_mutex_lock(&w->mu);
  int err = w->mode == VK_MODE_COPY ? -EBUSY : addr + len < addr ? -EFAULT : 0;
  for (uint64_t a = addr & ~(uint64_t)(VK_PAGE - 1); err == 0 && a < addr + len; a += VK_PAGE) {
    int ri;
    if (find_region(w, a, &ri) == NULL) err = -EFAULT;
  }
  for (uint64_t done = 0; err == 0 && done < len;) {
    uint64_t a = addr + done;
    int ri;
    struct vk_region *r = find_region(w, a, &ri);
    uint64_t page = (a - r->base) / VK_PAGE;
    uint64_t pa = r->base + page * VK_PAGE;
    uint64_t n = pa + VK_PAGE - a;
    if (n > len - done) n = len - done;
    bit_set(r->dirty, page);
    log_unprotected(w, ri, r, page); /* so that a fill maps it unprotected */
    if (r->source != 0) {
      uint64_t errors = w->counters[VK_C_ERRORS];
      handle_missing(w, pa); /* a page mapped already is left as it is */
      if (w->counters[VK_C_ERRORS] != errors) err = -EIO;
    }
    if (err == 0) err = wp_range(w->uffd, pa, VK_PAGE, 0);
    if (err == 0) memcpy((void *)(uintptr_t)a, buf + done, n);
    done += n;
  }
  pthread_mutex_unlock(&w->mu);
  return err;
}

/* Stops the thread, unprotects and unregisters everything, frees the context. */
int vk_wp_destroy(uint64_t h) {
  struct vk_wp *w = CTX(h);
  /* Stop before the thread may wait for ring slots nobody will free. */
  __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
  uint64_t one = 1;
  if (write(w->evfd, &one, sizeof one) < 0) return -errno;
  if (w->started) pthread_join(w->thread, NULL);
  for (int i = 0; i < w->nreg; i++) wp_range(w->uffd, w->reg[i].base, w->reg[i].size, 0);
  close(w->uffd);
  close(w->evfd);
  free_regions(w);
  munmap(w->ring, (uint64_t)w->ring_slots * VK_PAGE);
  free(w->ring_page);
  free(w->log);
  pthread_mutex_destroy(&w->mu);
  free(w);
  return 0;
}

/*
 * Prepares a new checkpoint while the VM runs: every page state back to TODO,
 * the ring empty, RECORD mode; `diff` non-zero makes the next freeze save only
 * the pages written since the previous freeze.
 */
int vk_wp_reset(uint64_t h, int diff) {
  struct vk_wp *w = CTX(h);
  pthread_mutex_lock(&w->mu);
  for (int i = 0; i < w->nreg; i++) memset(w->reg[i].state, 0, w->reg[i].pages);
  w->mode = VK_MODE_RECORD;
  w->diff = diff;
  __atomic_store_n(&w->ring_head, 0, __ATOMIC_RELEASE);
  __atomic_store_n(&w->ring_tail, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&w->mu);
  return 0;
}

/* Write-protects all of every region (while the VM runs; faults then record). */
int vk_wp_protect_all(uint64_t h) {
  struct vk_wp *w = CTX(h);
  pthread_mutex_lock(&w->mu);
  int r = 0;
  for (int i = 0; i < w->nreg && r == 0; i++) {
    struct vk_region *g = &w->reg[i];
    r = wp_range(w->uffd, g->base, g->size, 1);
    memset(g->unprot, 0, (g->pages + 63) / 64 * 8);
  }
  w->log_len = 0;
  w->log_overflow = 0;
  w->protecting = 1;
  pthread_mutex_unlock(&w->mu);
  return r;
}

/*
 * Lazy restore: with on != 0, missing pages are filled write-protected (unless
 * logged), so writes to a restored VM are tracked from its first instruction.
 */
int vk_wp_set_protecting(uint64_t h, int on) {
  struct vk_wp *w = CTX(h);
  pthread_mutex_lock(&w->mu);
  w->protecting = on;
  pthread_mutex_unlock(&w->mu);
  return 0;
}

/* Re-protects the pages the handler unprotected since the last call; caller holds mu. */
static int reprotect_locked(struct vk_wp *w) {
  int count = 0;
  if (w->log_overflow) {
    for (int i = 0; i < w->nreg; i++) {
      struct vk_region *g = &w->reg[i];
      for (uint64_t word = 0; word < (g->pages + 63) / 64; word++) {
        uint64_t bits = g->unprot[word];
        while (bits) {
          uint64_t p = word * 64 + (uint64_t)__builtin_ctzll(bits);
          bits &= bits - 1;
          int e = wp_range(w->uffd, g->base + p * VK_PAGE, VK_PAGE, 1);
          if (e < 0) return e;
          count++;
        }
        g->unprot[word] = 0;
      }
    }
  } else {
    /* Merge runs of consecutive pages into one ioctl each. */
    uint64_t i = 0;
    while (i < w->log_len) {
      uint64_t first = w->log[i], n = 1;
      while (i + n < w->log_len && w->log[i + n] == first + n) n++;
      struct vk_region *g = &w->reg[first >> 56];
      uint64_t page = first & ((1ull << 56) - 1);
      int e = wp_range(w->uffd, g->base + page * VK_PAGE, n * VK_PAGE, 1);
      if (e < 0) return e;
      for (uint64_t k = 0; k < n; k++) {
        g->unprot[(page + k) >> 6] &= ~(1ull << ((page + k) & 63));
      }
      count += (int)n;
      i += n;
    }
  }
  w->log_len = 0;
  w->log_overflow = 0;
  w->counters[VK_C_REPROTECTED] += (uint64_t)count;
  return count;
}

/* Re-protects what was written since the last re-protect (VM running); returns the page count. */
int vk_wp_reprotect(uint64_t h) {
  struct vk_wp *w = CTX(h);
  pthread_mutex_lock(&w->mu);
  int r = reprotect_locked(w);
  pthread_mutex_unlock(&w->mu);
  return r;
}

/* Pages logged as unprotected since the last re-protect (a hint for convergence). */
int64_t vk_wp_pending(uint64_t h) {
  struct vk_wp *w = CTX(h);
  return w->log_overflow ? (int64_t)w->log_cap : (int64_t)w->log_len;
}

/*
 * The pause step (vCPUs parked, devices quiesced): re-protects the pages
 * written since the last re-protect, so every page is protected; the dirty
 * maps become the save maps (for a diff) and fresh ones start; COPY mode.
 * Returns the number of pages re-protected.
 */
int vk_wp_freeze(uint64_t h) {
  struct vk_wp *w = CTX(h);
  pthread_mutex_lock(&w->mu);
  int r = reprotect_locked(w);
  if (r >= 0) {
    for (int i = 0; i < w->nreg; i++) {
      struct vk_region *g = &w->reg[i];
      uint64_t *old_save = g->save;
      if (w->diff) {
        g->save = g->dirty;
        g->dirty = g->spare;
        g->spare = old_save; /* zeroed by vk_wp_finish before it is reused */
      } else {
        g->save = NULL;
        uint64_t *d = g->dirty;
        g->dirty = g->spare;
        g->spare = d;
        if (old_save != NULL) free(old_save);
      }
    }
    w->mode = VK_MODE_COPY;
  }
  pthread_mutex_unlock(&w->mu);
  return r;
}

/*
 * Ends the save (every page written): back to RECORD mode, and zeroes the
 * spare maps for the next freeze. Pages the handler unprotected stay in the
 * log, so a tracking caller (whose writer left its pages protected) can bring
 * every page back under protection at the next freeze; without `tracking`
 * (the writer unprotected its pages) nothing stays protected.
 */
int vk_wp_finish(uint64_t h, int tracking) {
  struct vk_wp *w = CTX(h);
  pthread_mutex_lock(&w->mu);
  w->mode = VK_MODE_RECORD;
  w->protecting = tracking;
  for (int i = 0; i < w->nreg; i++) {
    struct vk_region *g = &w->reg[i];
    uint64_t words = (g->pages + 63) / 64;
    if (g->spare == NULL) g->spare = calloc(words, 8);
    else memset(g->spare, 0, words * 8);
    if (g->spare == NULL) {
      pthread_mutex_unlock(&w->mu);
      return -ENOMEM;
    }
  }
  pthread_mutex_unlock(&w->mu);
  return 0;
}

/*
 * The writer's claim of pages [first, first+n) of region ri: each page still
 * to be saved and TODO becomes CLAIMED and gets kinds[i] = ZERO/DATA with its
 * CRC; others get kinds[i] = NONE. Returns the number claimed.
 */
int vk_wp_claim(uint64_t h, uint32_t ri, uint64_t first, uint32_t n, uint8_t *kinds,
                uint32_t *crcs) {
  struct vk_wp *w = CTX(h);
  if ((int)ri >= w->nreg) return -EINVAL;
  struct vk_region *g = &w->reg[ri];
  if (first > g->pages || n > g->pages - first) return -EINVAL;
  int claimed = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t p = first + i;
    uint8_t expect = VK_ST_TODO;
    if ((g->save == NULL || bit_test(g->save, p)) &&
        __atomic_compare_exchange_n(&g->state[p], &expect, VK_ST_CLAIMED, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
      const uint8_t *src = (const uint8_t *)(uintptr_t)(g->base + p * VK_PAGE);
      if (page_is_zero(src)) {
        kinds[i] = VK_KIND_ZERO;
        crcs[i] = 0;
      } else {
        kinds[i] = VK_KIND_DATA;
        crcs[i] = crc32c_page(src);
      }
      claimed++;
    } else {
      kinds[i] = VK_KIND_NONE;
      crcs[i] = 0;
    }
  }
  return claimed;
}

/*
 * The writer's release of [first, first+n): CLAIMED pages become SAVED; then
 * the writer's runs are unprotected (unprotect != 0) or, when tracking, only
 * woken so a fault that waited on a claimed page retries and is recorded.
 */
int vk_wp_release(uint64_t h, uint32_t ri, uint64_t first, uint32_t n, int unprotect) {
  struct vk_wp *w = CTX(h);
  if ((int)ri >= w->nreg) return -EINVAL;
  struct vk_region *g = &w->reg[ri];
  if (first > g->pages || n > g->pages - first) return -EINVAL;
  /* Only the writer's own pages: a COPIED page may still be being copied. */
  uint32_t i = 0;
  while (i < n) {
    if (__atomic_load_n(&g->state[first + i], __ATOMIC_ACQUIRE) != VK_ST_CLAIMED) {
      i++;
      continue;
    }
    uint32_t k = i;
    while (k < n && __atomic_load_n(&g->state[first + k], __ATOMIC_ACQUIRE) == VK_ST_CLAIMED) {
      __atomic_store_n(&g->state[first + k], VK_ST_SAVED, __ATOMIC_RELEASE);
      k++;
    }
    uint64_t addr = g->base + (first + i) * VK_PAGE, len = (uint64_t)(k - i) * VK_PAGE;
    int e = unprotect ? wp_range(w->uffd, addr, len, 0) : wake_range(w->uffd, addr, len);
    if (e < 0) return e;
    i = k;
  }
  return 0;
}

/*
 * Copies filled ring slots out for the writer: up to max entries, ids[i] =
 * (region << 56) | page, and the page bytes at out + i*4096. Frees the slots.
 * Returns the count.
 */
int vk_wp_ring_take(uint64_t h, uint32_t max, uint64_t *ids, uint8_t *out) {
  struct vk_wp *w = CTX(h);
  uint64_t head = __atomic_load_n(&w->ring_head, __ATOMIC_ACQUIRE);
  uint64_t tail = w->ring_tail;
  uint32_t n = 0;
  while (tail + n < head && n < max) {
    uint64_t slot = (tail + n) % w->ring_slots;
    ids[n] = w->ring_page[slot];
    memcpy(out + (uint64_t)n * VK_PAGE, w->ring + slot * VK_PAGE, VK_PAGE);
    n++;
  }
  __atomic_store_n(&w->ring_tail, tail + n, __ATOMIC_RELEASE);
  return (int)n;
}

/*
 * Abandons a save (or tracking): RECORD mode, nothing protected, ring and
 * log empty. The context stays registered, so lazily restored pages go on
 * being filled from their source.
 */
int vk_wp_abort(uint64_t h) {
  struct vk_wp *w = CTX(h);
  __atomic_store_n(&w->aborting, 1, __ATOMIC_RELEASE);
  pthread_mutex_lock(&w->mu);
  int r = 0;
  for (int i = 0; i < w->nreg; i++) {
    struct vk_region *g = &w->reg[i];
    int e = wp_range(w->uffd, g->base, g->size, 0);
    if (e < 0) r = e;
    memset(g->unprot, 0, (g->pages + 63) / 64 * 8);
    memset(g->state, VK_ST_SAVED, g->pages);
  }
  w->mode = VK_MODE_RECORD;
  w->protecting = 0;
  w->log_len = 0;
  w->log_overflow = 0;
  __atomic_store_n(&w->ring_head, 0, __ATOMIC_RELEASE);
  __atomic_store_n(&w->ring_tail, 0, __ATOMIC_RELEASE);
  __atomic_store_n(&w->aborting, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&w->mu);
  return r;
}

/* Waits until the fault thread is between events (it holds the mutex while it handles one). */
int vk_wp_sync(uint64_t h) {
  struct vk_wp *w = CTX(h);
  pthread_mutex_lock(&w->mu);
  pthread_mutex_unlock(&w->mu);
  return 0;
}

/* Copies the dirty map of region ri (written since the last freeze) into out. */
int vk_wp_dirty_map(uint64_t h, uint32_t ri, uint64_t *out, uint64_t words) {
  struct vk_wp *w = CTX(h);
  if ((int)ri >= w->nreg) return -EINVAL;
  struct vk_region *g = &w->reg[ri];
  if (words < (g->pages + 63) / 64) return -EINVAL;
  for (uint64_t i = 0; i < (g->pages + 63) / 64; i++) out[i] = __atomic_load_n(&g->dirty[i], __ATOMIC_RELAXED);
  return 0;
}

/* Copies the counters (VK_C_*) into out[0..VK_C_COUNT). */
int vk_wp_counters(uint64_t h, uint64_t *out, uint32_t len) {
  struct vk_wp *w = CTX(h);
  if (len < VK_C_COUNT) return -EINVAL;
  for (int i = 0; i < VK_C_COUNT; i++) out[i] = __atomic_load_n(&w->counters[i], __ATOMIC_RELAXED);
  return VK_C_COUNT;
}
