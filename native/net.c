/*
 * vmkit network shim: what Deno cannot do alone for netguard's live inputs
 * and the virtio-net back end. TAP devices (TUNSETIFF, optionally with a
 * virtio-net header: IFF_VNET_HDR, TUNSETVNETHDRSZ, TUNSETOFFLOAD), AF_PACKET
 * sockets bound to an interface, both optionally created inside a named
 * network namespace (on a short-lived thread, so the caller's namespace
 * never changes), batched reads with a poll timeout so a Deno `nonblocking`
 * FFI call never spins, and batched scatter/gather TAP I/O straight to and
 * from iovecs the caller built (the device validates every address first:
 * nothing here knows guest memory or virtqueues).
 *
 * Every function returns a non-negative result or -errno.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define VMKIT_NET_META_WORDS 4 /* caplen, origlen, pkttype, offset */

struct open_req {
  const char *ifname;
  const char *netns; /* path of a netns file, or NULL/"" for the current one */
  int kind;          /* 0 = TAP, 1 = AF_PACKET */
  int promisc;       /* AF_PACKET: promiscuous; TAP: virtio-net header bytes (0 = none) */
  int result;
};

static int open_tap(const char *ifname, int vnet_hdr) {
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return -errno;
  if (vnet_hdr > 0) {
    unsigned int features = 0;
    if (ioctl(fd, TUNGETFEATURES, &features) < 0 || !(features & IFF_VNET_HDR)) {
      close(fd);
      return -EOPNOTSUPP;
    }
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr > 0 ? IFF_VNET_HDR : 0);
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0 ||
      (vnet_hdr > 0 && ioctl(fd, TUNSETVNETHDRSZ, &vnet_hdr) < 0)) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

static int open_packet(const char *ifname, int promisc) {
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL));
  if (fd < 0) return -errno;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = ifr.ifr_ifindex;
  if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  /* Kernel receive timestamps, so a busy reader does not bunch frames in time. */
  int on = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  if (promisc) {
    struct packet_mreq mr;
    memset(&mr, 0, sizeof mr);
    mr.mr_ifindex = ifr.ifr_ifindex;
    mr.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) {
      int e = errno;
      close(fd);
      return -e;
    }
  }
  return fd;
}

static void *open_thread(void *arg) {
  struct open_req *r = arg;
  if (r->netns != NULL && r->netns[0] != '\0') {
    int nsfd = open(r->netns, O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) {
      r->result = -errno;
      return NULL;
    }
    if (setns(nsfd, CLONE_NEWNET) < 0) {
      r->result = -errno;
      close(nsfd);
      return NULL;
    }
    close(nsfd);
  }
  r->result = r->kind == 0 ? open_tap(r->ifname, r->promisc) : open_packet(r->ifname, r->promisc);
  return NULL;
}

static int open_in_netns(struct open_req *r) {
  if (r->ifname == NULL || r->ifname[0] == '\0' || strlen(r->ifname) >= IFNAMSIZ) return -EINVAL;
  if (r->netns == NULL || r->netns[0] == '\0') {
    open_thread(r);
    return r->result;
  }
  pthread_t t;
  int e = pthread_create(&t, NULL, open_thread, r);
  if (e != 0) return -e;
  pthread_join(t, NULL);
  return r->result;
}

/* Opens (creating if needed) TAP device `ifname`, in netns file `netns` if set. */
int vmkit_net_tap_open(const char *ifname, const char *netns) {
  struct open_req r = {ifname, netns, 0, 0, 0};
  return open_in_netns(&r);
}

/*
 * Opens TAP device `ifname` (in netns `netns` if set) so that every frame
 * read or written starts with a `vnet_hdr`-byte virtio-net header
 * (IFF_VNET_HDR + TUNSETVNETHDRSZ; 12 = struct virtio_net_hdr_v1).
 * Returns the non-blocking fd or -errno (-EOPNOTSUPP without IFF_VNET_HDR).
 */
int vmkit_net_tap_open_vnet(const char *ifname, const char *netns, int vnet_hdr) {
  if (vnet_hdr < 10 || vnet_hdr > 64) return -EINVAL;
  struct open_req r = {ifname, netns, 0, vnet_hdr, 0};
  return open_in_netns(&r);
}

/*
 * TUNSETOFFLOAD: which offloads (TUN_F_CSUM 1, TSO4 2, TSO6 4, TSO_ECN 8,
 * UFO 16) frames read from the TAP may carry. Returns 0 or -errno.
 */
int vmkit_net_tap_set_offload(int fd, unsigned int flags) {
  return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags) < 0 ? -errno : 0;
}

/*
 * Reads frames from TAP `fd` (non-blocking) straight into caller-built
 * buffers. The buffers are `nchains` groups of iovecs: group c is
 * iov[first[c] .. first[c+1]). Each frame goes into the next unused group;
 * with `merge` set it may run on into the groups after it (virtio-net
 * mergeable receive buffers), and is read only when the groups left hold
 * at least `need` bytes (0: no minimum), so a frame is not cut short for
 * lack of buffers. Behind the groups given to one read sits `scratch`
 * (`scratch_len` bytes, the caller's): a frame longer than its groups spills
 * there, which is how a cut-short frame is told from one that just fits
 * (the TAP returns no more than the space it was given).
 *
 * out[2*i] is frame i's length (capped at the groups' space plus
 * `scratch_len`), out[2*i+1] the number of groups it filled, or 0 when it
 * did not fit (the caller drops it; its groups stay free for the next frame).
 * With `max_plain` > 0 a frame whose 12-byte virtio-net header says no
 * segmentation (gso_type NONE, with or without ECN) and whose Ethernet
 * payload exceeds `max_plain` bytes (the guest's VIRTIO_NET_F_MTU) is
 * dropped the same way.
 * Returns the number of frames (0 when the TAP is empty or space ran out),
 * or -errno for a failed read before any frame.
 */
static int vec_byte(const struct iovec *vec, int nvec, int64_t at) {
  for (int i = 0; i < nvec; i++) {
    if (at < (int64_t)vec[i].iov_len) return ((const uint8_t *)vec[i].iov_base)[at];
    at -= (int64_t)vec[i].iov_len;
  }
  return -1;
}

static int over_mtu(const struct iovec *vec, int nvec, int64_t n, int max_plain) {
  const int64_t vnet = 12;
  int gso = vec_byte(vec, nvec, 1);
  if (gso < 0 || (gso & 0x7f) != 0) return 0; /* segmented frames follow gso_size instead */
  int t0 = vec_byte(vec, nvec, vnet + 12), t1 = vec_byte(vec, nvec, vnet + 13);
  int type = t0 < 0 || t1 < 0 ? 0 : (t0 << 8) | t1;
  int64_t eth = (type == 0x8100 || type == 0x88a8) ? 18 : 14;
  return n - vnet - eth > (int64_t)max_plain;
}

int vmkit_net_tap_read_chains(int fd, const struct iovec *iov, const int32_t *first, int nchains,
                              int merge, int need, uint8_t *scratch, int scratch_len, int32_t *out,
                              int max_frames, int max_plain) {
  if (fd < 0 || iov == NULL || first == NULL || out == NULL || scratch == NULL ||
      scratch_len <= 0 || nchains < 0 || max_frames < 0)
    return -EINVAL;
  struct iovec vec[IOV_MAX];
  int frames = 0;
  int c = 0;
  while (frames < max_frames && c < nchains) {
    /* The groups this frame may use, and their space. */
    int end = c;
    int64_t given = 0;
    int nvec = 0;
    do {
      int lo = first[end], hi = first[end + 1];
      if (hi < lo || nvec + (hi - lo) > IOV_MAX - 1) break;
      for (int i = lo; i < hi; i++) {
        vec[nvec++] = iov[i];
        given += (int64_t)iov[i].iov_len;
      }
      end++;
    } while (merge && end < nchains && (need <= 0 || given < need));
    if (end == c) return frames > 0 ? frames : -EINVAL;
    if (merge && need > 0 && given < need) break;
    vec[nvec].iov_base = scratch;
    vec[nvec].iov_len = (size_t)scratch_len;
    ssize_t n = readv(fd, vec, nvec + 1);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || frames > 0) break;
      return -errno;
    }
    int used = 0;
    if (n > 0 && n <= given) {
      /* Groups the frame filled: up to the one its last byte landed in. */
      for (int64_t covered = 0; covered < n; used++) {
        for (int i = first[c + used]; i < first[c + used + 1]; i++) {
          covered += (int64_t)iov[i].iov_len;
        }
      }
    }
    if (used > 0 && max_plain > 0 && over_mtu(vec, nvec, n, max_plain)) used = 0;
    out[2 * frames] = n > 0x7fffffff ? 0x7fffffff : (int32_t)n;
    out[2 * frames + 1] = used;
    frames++;
    if (n == 0) break;
    c += used;
  }
  return frames;
}

/*
 * Writes frames to TAP `fd`, frame i being the next counts[i] iovecs of
 * `iov`. res[i] is bytes written or -errno (a bad frame fails alone).
 * Stops early when the TAP would block (EAGAIN); returns the number of
 * frames attempted.
 */
int vmkit_net_tap_write_frames(int fd, const struct iovec *iov, const int32_t *counts, int nframes,
                               int32_t *res) {
  if (fd < 0 || iov == NULL || counts == NULL || res == NULL || nframes < 0) return -EINVAL;
  int pos = 0;
  for (int f = 0; f < nframes; f++) {
    int n = counts[f];
    if (n <= 0 || n > IOV_MAX) {
      res[f] = -EINVAL;
      pos += n > 0 ? n : 0;
      continue;
    }
    ssize_t w = writev(fd, iov + pos, n);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return f;
    res[f] = w < 0 ? -errno : (int32_t)w;
    pos += n;
  }
  return nframes;
}

/* Opens an AF_PACKET socket bound to `ifname` (all protocols), in netns `netns` if set. */
int vmkit_net_packet_open(const char *ifname, const char *netns, int promisc) {
  struct open_req r = {ifname, netns, 1, promisc, 0};
  return open_in_netns(&r);
}

/*
 * Waits up to `timeout_ms` for `fd` to be readable, then reads up to
 * `max_frames` frames into `buf` (each at most `snaplen` bytes, packed one
 * after another). For each frame, `meta` receives caplen, original length,
 * Linux packet type (AF_PACKET; -1 for TAP) and offset in `buf`, and `ts`
 * the receive time in ms since the epoch (the kernel's timestamp for
 * AF_PACKET, the read time for TAP). Returns the number of frames.
 */
int vmkit_net_read_batch(int fd, int is_packet, uint8_t *buf, int buflen, int snaplen,
                         int32_t *meta, double *ts, int max_frames, int timeout_ms) {
  if (fd < 0 || buf == NULL || meta == NULL || ts == NULL || buflen <= 0 || snaplen <= 0 ||
      max_frames <= 0)
    return -EINVAL;
  struct pollfd p = {fd, POLLIN, 0};
  int pr = poll(&p, 1, timeout_ms);
  if (pr < 0) return errno == EINTR ? 0 : -errno;
  if (pr == 0) return 0;
  if (p.revents & POLLNVAL) return -EBADF;
  if (p.revents & POLLERR) {
    /* A pending socket error (e.g. ENETDOWN: the interface was down when the socket was bound
       or went down since): report it; reading SO_ERROR clears it. */
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return -errno;
    if (err != 0) return -err;
  }
  int n = 0;
  int off = 0;
  while (n < max_frames && buflen - off >= snaplen) {
    ssize_t got;
    int pkttype = -1;
    ssize_t orig;
    struct timespec when;
    int have_when = 0;
    if (is_packet) {
      struct sockaddr_ll from;
      union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
      } ctrl;
      struct iovec iov = {buf + off, (size_t)snaplen};
      struct msghdr msg;
      memset(&msg, 0, sizeof msg);
      msg.msg_name = &from;
      msg.msg_namelen = sizeof from;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = ctrl.buf;
      msg.msg_controllen = sizeof ctrl.buf;
      got = recvmsg(fd, &msg, MSG_TRUNC | MSG_DONTWAIT);
      if (got >= 0) {
        pkttype = from.sll_pkttype;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
          if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
              c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            memcpy(&when, CMSG_DATA(c), sizeof when);
            have_when = 1;
          }
        }
      }
      orig = got;
    } else {
      got = read(fd, buf + off, (size_t)snaplen);
      orig = got;
    }
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
      if (n > 0) break;
      return -errno;
    }
    if (!have_when) clock_gettime(CLOCK_REALTIME, &when);
    int cap = got > snaplen ? snaplen : (int)got;
    meta[n * VMKIT_NET_META_WORDS + 0] = cap;
    meta[n * VMKIT_NET_META_WORDS + 1] = orig > 0x7fffffff ? 0x7fffffff : (int32_t)orig;
    meta[n * VMKIT_NET_META_WORDS + 2] = pkttype;
    meta[n * VMKIT_NET_META_WORDS + 3] = off;
    ts[n] = (double)when.tv_sec * 1000.0 + (double)when.tv_nsec / 1e6;
    off += (cap + 7) & ~7;
    n++;
  }
  return n;
}

/* Writes one frame to `fd` (a TAP: the frame appears as sent by the VM). */
int vmkit_net_write(int fd, const uint8_t *buf, int len) {
  if (fd < 0 || buf == NULL || len <= 0) return -EINVAL;
  ssize_t w = write(fd, buf, (size_t)len);
  return w < 0 ? -errno : (int)w;
}

/* A non-blocking CLOCK_MONOTONIC timerfd (a device's rate-limiter retry), or -errno. */
int vmkit_net_timer_create(void) {
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

/* Arms timerfd `fd` to fire once after `us` microseconds (0 disarms). Returns 0 or -errno. */
int vmkit_net_timer_arm(int fd, double us) {
  struct itimerspec t;
  memset(&t, 0, sizeof t);
  if (us > 0) {
    uint64_t ns = (uint64_t)(us * 1000.0);
    if (ns == 0) ns = 1;
    t.it_value.tv_sec = (time_t)(ns / 1000000000ull);
    t.it_value.tv_nsec = (long)(ns % 1000000000ull);
  }
  return timerfd_settime(fd, 0, &t, NULL) < 0 ? -errno : 0;
}

/* Reads (clears) timerfd `fd`: returns the expirations since the last read (0 if none), or -errno. */
int vmkit_net_timer_drain(int fd) {
  uint64_t n = 0;
  ssize_t r = read(fd, &n, sizeof n);
  if (r < 0) return errno == EAGAIN ? 0 : -errno;
  return n > 0x7fffffff ? 0x7fffffff : (int)n;
}

/* Closes a descriptor opened by this shim. */
int vmkit_net_close(int fd) {
  if (fd < 0) return -EBADF;
  return close(fd) < 0 ? -errno : 0;
}

/* Writes the text of `errnum` (positive) into `out`; returns its length. */
int vmkit_net_strerror(int errnum, char *out, int len) {
  if (out == NULL || len <= 0) return -EINVAL;
  const char *s = strerror(errnum);
  int n = (int)strlen(s);
  if (n >= len) n = len - 1;
  memcpy(out, s, (size_t)n);
  out[n] = '\0';
  return n;
}
