/*
 * The guest side of bench/virtio_blk_bench.ts: a virtio-blk driver loop in C
 * that plays a busy guest against vmkit's real device. It keeps `depth`
 * requests in a split virtqueue in guest RAM, publishes them, rings the
 * queue's notify eventfd only when the device's avail_event asks (EVENT_IDX,
 * as Linux's virtqueue_kick_prepare does), and waits on the interrupt eventfd
 * (what KVM's irqfd would inject) only after re-arming used_event and
 * re-checking used.idx (Linux's virtqueue_enable_cb). Completed requests are
 * refilled at once, the whole batch published with one kick.
 *
 * It runs on the calling thread (the bench's main thread) while the device
 * runs on its I/O Worker, as a guest's vCPU runs beside the device thread.
 *
 * Build: cc -O2 -Wall -Wextra -Werror -fPIC -shared -o libvbd.so virtio_blk_driver.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Parameter block (u64 each); "io" fields are read and written back. */
enum {
  P_DESC,        /* offset of the descriptor table in RAM */
  P_AVAIL,       /* offset of the driver (avail) ring */
  P_USED,        /* offset of the device (used) ring */
  P_QSIZE,       /* queue size (power of two) */
  P_SLOTS,       /* offset of the request slots */
  P_SLOT_BYTES,  /* bytes per slot: header at 0, data at 0x1000, status at STATUS_AT */
  P_STATUS_AT,   /* offset of the status byte in a slot */
  P_DEPTH,       /* requests in flight (descriptors 3s, 3s+1, 3s+2 belong to slot s) */
  P_TYPE,        /* 0 read, 1 write */
  P_BS,          /* bytes per request */
  P_OPS,         /* requests to complete */
  P_RANDOM,      /* 1: uniform random offsets (xorshift32), 0: sequential */
  P_SPAN,        /* bytes of the disk the offsets cover */
  P_SEED,        /* xorshift32 seed */
  P_NOTIFY_FD,   /* the queue's notify eventfd */
  P_IRQ_FD,      /* the interrupt eventfd */
  P_AVAIL_IDX,   /* io: the driver's avail.idx */
  P_LAST_USED,   /* io: used entries consumed */
  P_KICKED_AT,   /* io: avail.idx at the last kick decision */
  P_ELAPSED_NS,  /* out: first submit to last completion */
  P_ERRORS,      /* out: requests with a non-zero status */
  P_KICKS,       /* out: notify eventfd writes */
  P_WAITS,       /* out: sleeps on the interrupt eventfd */
  P_COUNT
};

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

struct drv {
  uint8_t *ram;
  uint64_t *p;
  uint16_t *avail_idx, *avail_ring, *used_event;
  volatile uint16_t *used_idx, *avail_event;
  uint8_t *used_ring;
  uint32_t qmask;
  uint16_t next_avail, last_used, kicked_at;
  uint32_t rng;
  uint64_t seq;
};

static uint64_t next_offset(struct drv *d) {
  uint64_t bs = d->p[P_BS], blocks = d->p[P_SPAN] / bs;
  if (!d->p[P_RANDOM]) {
    uint64_t o = d->seq;
    d->seq = (d->seq + bs) % (blocks * bs);
    return o;
  }
  uint32_t x = d->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  d->rng = x;
  return (x % blocks) * bs;
}

static void set_desc(struct drv *d, uint32_t i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next) {
  uint8_t *at = d->ram + d->p[P_DESC] + 16u * i;
  memcpy(at, &addr, 8);
  memcpy(at + 8, &len, 4);
  memcpy(at + 12, &flags, 2);
  memcpy(at + 14, &next, 2);
}

/* Queues slot s as a new request (not yet visible to the device). */
static void submit(struct drv *d, uint32_t s) {
  uint64_t at = d->p[P_SLOTS] + s * d->p[P_SLOT_BYTES];
  uint32_t type = (uint32_t)d->p[P_TYPE], zero = 0;
  uint64_t sector = next_offset(d) / 512;
  memcpy(d->ram + at, &type, 4);
  memcpy(d->ram + at + 4, &zero, 4);
  memcpy(d->ram + at + 8, &sector, 8);
  d->ram[at + d->p[P_STATUS_AT]] = 0xff;
  set_desc(d, 3 * s, at, 16, 1, (uint16_t)(3 * s + 1));
  set_desc(d, 3 * s + 1, at + 0x1000, (uint32_t)d->p[P_BS], type == 0 ? 3 : 1,
           (uint16_t)(3 * s + 2));
  set_desc(d, 3 * s + 2, at + d->p[P_STATUS_AT], 1, 2, 0);
  d->avail_ring[d->next_avail & d->qmask] = (uint16_t)(3 * s);
  d->next_avail++;
}

/* Publishes avail.idx; kicks when vring_need_event(avail_event, new, old). */
static void publish(struct drv *d) {
  uint16_t idx = d->next_avail, old = d->kicked_at;
  __atomic_store_n(d->avail_idx, idx, __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST); /* virtio_mb before reading avail_event */
  uint16_t event = *d->avail_event;
  d->kicked_at = idx;
  if ((uint16_t)(idx - event - 1) < (uint16_t)(idx - old)) {
    uint64_t one = 1;
    while (write((int)d->p[P_NOTIFY_FD], &one, 8) < 0 && errno == EINTR) {
    }
    d->p[P_KICKS]++;
  }
}

/* Waits for the interrupt eventfd and consumes its counter. */
static int wait_irq(struct drv *d) {
  struct pollfd pf = {.fd = (int)d->p[P_IRQ_FD], .events = POLLIN};
  int r;
  do {
    r = poll(&pf, 1, 5000);
  } while (r < 0 && errno == EINTR);
  if (r <= 0) return r == 0 ? -ETIMEDOUT : -errno;
  uint64_t v;
  if (read(pf.fd, &v, 8) < 0 && errno != EAGAIN) return -errno;
  d->p[P_WAITS]++;
  return 0;
}

static void init(struct drv *d, uint8_t *ram, uint64_t *p) {
  uint32_t qsize = (uint32_t)p[P_QSIZE];
  d->ram = ram;
  d->p = p;
  d->qmask = qsize - 1;
  d->avail_idx = (uint16_t *)(ram + p[P_AVAIL] + 2);
  d->avail_ring = (uint16_t *)(ram + p[P_AVAIL] + 4);
  d->used_event = (uint16_t *)(ram + p[P_AVAIL] + 4 + 2 * qsize);
  d->used_idx = (volatile uint16_t *)(ram + p[P_USED] + 2);
  d->used_ring = ram + p[P_USED] + 4;
  d->avail_event = (volatile uint16_t *)(ram + p[P_USED] + 4 + 8 * qsize);
  d->next_avail = (uint16_t)p[P_AVAIL_IDX];
  d->last_used = (uint16_t)p[P_LAST_USED];
  d->kicked_at = (uint16_t)p[P_KICKED_AT];
  d->rng = (uint32_t)p[P_SEED] ? (uint32_t)p[P_SEED] : 1;
  d->seq = 0;
  p[P_ERRORS] = p[P_KICKS] = p[P_WAITS] = 0;
}

static void save(struct drv *d) {
  d->p[P_AVAIL_IDX] = d->next_avail;
  d->p[P_LAST_USED] = d->last_used;
  d->p[P_KICKED_AT] = d->kicked_at;
}

/* Reaps every used entry there is; refills each slot while ops remain. */
static uint64_t reap(struct drv *d, uint64_t *issued) {
  uint64_t n = 0;
  uint16_t used = __atomic_load_n(d->used_idx, __ATOMIC_ACQUIRE);
  while (d->last_used != used) {
    uint32_t id;
    memcpy(&id, d->used_ring + 8u * (d->last_used & d->qmask), 4);
    uint32_t s = id / 3;
    if (d->ram[d->p[P_SLOTS] + s * d->p[P_SLOT_BYTES] + d->p[P_STATUS_AT]] != 0) d->p[P_ERRORS]++;
    d->last_used++;
    n++;
    if (*issued < d->p[P_OPS]) {
      submit(d, s);
      (*issued)++;
    }
  }
  return n;
}

/*
 * Runs p[P_OPS] requests at p[P_DEPTH] in flight over guest RAM at `ram`.
 * Returns 0 or -errno (a timeout: the device stopped answering).
 */
int64_t vbd_run(uint8_t *ram, uint64_t *p) {
  struct drv d;
  init(&d, ram, p);
  uint64_t issued = 0, done = 0, ops = p[P_OPS];
  uint64_t t0 = now_ns();
  for (uint32_t s = 0; s < p[P_DEPTH] && issued < ops; s++, issued++) submit(&d, s);
  publish(&d);
  while (done < ops) {
    uint64_t n = reap(&d, &issued);
    if (n > 0) {
      done += n;
      publish(&d);
      continue;
    }
    /* virtqueue_enable_cb: interrupt at the next completion, then re-check. */
    __atomic_store_n(d.used_event, d.last_used, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(d.used_idx, __ATOMIC_ACQUIRE) != d.last_used) continue;
    int r = wait_irq(&d);
    if (r < 0) {
      save(&d);
      return r;
    }
  }
  p[P_ELAPSED_NS] = now_ns() - t0;
  save(&d);
  return 0;
}

/*
 * One request at a time, p[P_OPS] times: `lat_ns[i]` gets the time from the
 * notify (or the publish the device did not need a notify for) to the used
 * entry being seen: with `spin` the driver watches used.idx (the device's
 * notification-to-completion time alone), without it the driver sleeps on the
 * interrupt eventfd (adds the interrupt's delivery and the driver's wake-up).
 * Returns 0 or -errno.
 */
int64_t vbd_latency(uint8_t *ram, uint64_t *p, uint32_t *lat_ns, uint32_t max, uint32_t spin) {
  struct drv d;
  init(&d, ram, p);
  uint64_t ops = p[P_OPS] < max ? p[P_OPS] : max;
  uint64_t t0 = now_ns();
  for (uint64_t i = 0; i < ops; i++) {
    submit(&d, 0);
    uint64_t a = now_ns();
    publish(&d);
    for (;;) {
      if (__atomic_load_n(d.used_idx, __ATOMIC_ACQUIRE) != d.last_used) break;
      if (spin) {
        sched_yield(); /* lets a device thread on this CPU run: no timeslice-long stalls */
        continue;
      }
      __atomic_store_n(d.used_event, d.last_used, __ATOMIC_RELEASE);
      __atomic_thread_fence(__ATOMIC_SEQ_CST);
      if (__atomic_load_n(d.used_idx, __ATOMIC_ACQUIRE) != d.last_used) break;
      int r = wait_irq(&d);
      if (r < 0) {
        save(&d);
        return r;
      }
    }
    uint64_t b = now_ns();
    uint64_t issued = ops; /* no refill */
    reap(&d, &issued);
    lat_ns[i] = (uint32_t)(b - a);
  }
  p[P_ELAPSED_NS] = now_ns() - t0;
  save(&d);
  return 0;
}
