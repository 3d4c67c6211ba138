/*
 * The peer of the virtio-net benchmark: a small C program doing, as fast as
 * it can, what vmkit's net device does with the same TAP.
 *
 *   net_tap_peer write NETNS TAP FRAMES COUNT
 *       writes COUNT frames from file FRAMES (see below) to persistent TAP in
 *       namespace NETNS, each behind a 12-byte virtio-net header (IFF_VNET_HDR),
 *       cycling through the file's frames; one write(2) per frame (a TAP takes
 *       one frame per call; nothing batches TAP writes).
 *   net_tap_peer read NETNS TAP COUNT
 *       reads COUNT frames from the TAP (poll(2) when it is empty).
 *   net_tap_peer inject NETNS IFACE FRAMES COUNT
 *       sends COUNT frames on interface IFACE in NETNS by AF_PACKET sendmmsg
 *       (64 per call): the namespace side of the receive benchmark.
 *
 * FRAMES holds records of a little-endian u32 length then that many bytes
 * (virtio-net header included for write). Prints one line of JSON:
 * {"frames":N,"bytes":B,"ns":T,"errors":E,"again":A}.
 *
 * Environment: VMKIT_PEER_NONBLOCK=1 opens the TAP O_NONBLOCK (EAGAIN is
 * retried at once); VMKIT_PEER_OFFLOAD=N sets TUNSETOFFLOAD (default 0).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAMES 64
#define BURST 64

static uint8_t *frames[MAX_FRAMES];
static uint32_t lens[MAX_FRAMES];
static int nframes;

static void die(const char *what)
{
	fprintf(stderr, "net_tap_peer: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void enter_netns(const char *name)
{
	char path[256];
	snprintf(path, sizeof path, "/var/run/netns/%s", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
		die(path);
	close(fd);
}

static void load_frames(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die(path);
	uint8_t lenb[4];
	while (nframes < MAX_FRAMES && fread(lenb, 1, 4, f) == 4) {
		uint32_t n = (uint32_t)lenb[0] | (uint32_t)lenb[1] << 8 | (uint32_t)lenb[2] << 16 |
			     (uint32_t)lenb[3] << 24;
		if (n == 0 || n > 70000) {
			errno = EINVAL;
			die("frame length");
		}
		frames[nframes] = malloc(n);
		if (!frames[nframes] || fread(frames[nframes], 1, n, f) != n)
			die("frame data");
		lens[nframes++] = n;
	}
	fclose(f);
	if (nframes == 0) {
		errno = EINVAL;
		die("no frames");
	}
}

static int open_tap(const char *name)
{
	/* VMKIT_PEER_NONBLOCK=1: O_NONBLOCK writes (as vmkit's device opens the TAP). */
	const char *nb = getenv("VMKIT_PEER_NONBLOCK");
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | (nb && nb[0] == '1' ? O_NONBLOCK : 0));
	if (fd < 0)
		die("/dev/net/tun");
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	int hdr = 12;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0)
		die("TUNSETIFF");
	/* What frames read from the TAP may carry: none unless VMKIT_PEER_OFFLOAD says. */
	const char *off = getenv("VMKIT_PEER_OFFLOAD");
	if (ioctl(fd, TUNSETOFFLOAD, off ? strtoul(off, 0, 0) : 0) < 0)
		die("TUNSETOFFLOAD");
	return fd;
}

static void report(uint64_t n, uint64_t bytes, uint64_t ns, uint64_t errors, uint64_t again)
{
	printf("{\"frames\":%llu,\"bytes\":%llu,\"ns\":%llu,\"errors\":%llu,\"again\":%llu}\n",
	       (unsigned long long)n, (unsigned long long)bytes, (unsigned long long)ns,
	       (unsigned long long)errors, (unsigned long long)again);
}

static void do_write(int fd, uint64_t count)
{
	uint64_t bytes = 0, errors = 0, again = 0;
	uint64_t t0 = now_ns();
	for (uint64_t i = 0; i < count; i++) {
		int k = (int)(i % (uint64_t)nframes);
		ssize_t w = write(fd, frames[k], lens[k]);
		if (w < 0) {
			if (errno == EAGAIN || errno == ENOBUFS) {
				again++;
				i--;
				continue;
			}
			errors++;
			continue;
		}
		bytes += (uint64_t)w;
	}
	report(count, bytes, now_ns() - t0, errors, again);
}

static void do_read(int fd, uint64_t count)
{
	static uint8_t buf[65536 + 64];
	uint64_t bytes = 0, again = 0, n = 0;
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	struct pollfd p = {fd, POLLIN, 0};
	uint64_t t0 = 0, t_last = 0;
	while (n < count) {
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0) {
			if (errno != EAGAIN)
				die("read");
			again++;
			if (poll(&p, 1, n == 0 ? 5000 : 1000) == 0)
				break; /* the sender stopped */
			continue;
		}
		t_last = now_ns();
		if (n == 0)
			t0 = t_last;
		bytes += (uint64_t)r;
		n++;
	}
	/* First to last frame, as the vmkit side is timed. */
	report(n, bytes, t_last - t0, 0, again);
}

static void do_inject(const char *ifname, uint64_t count)
{
	int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
	if (s < 0)
		die("AF_PACKET");
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	if (ioctl(s, SIOCGIFINDEX, &ifr) < 0)
		die(ifname);
	struct sockaddr_ll sll;
	memset(&sll, 0, sizeof sll);
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = ifr.ifr_ifindex;
	sll.sll_protocol = htons(ETH_P_ALL);
	if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0)
		die("bind");
	struct mmsghdr msgs[BURST];
	struct iovec iov[BURST];
	uint64_t sent = 0, bytes = 0, errors = 0;
	uint64_t t0 = now_ns();
	while (sent < count) {
		int n = count - sent < BURST ? (int)(count - sent) : BURST;
		for (int j = 0; j < n; j++) {
			int k = (int)((sent + (uint64_t)j) % (uint64_t)nframes);
			iov[j].iov_base = frames[k];
			iov[j].iov_len = lens[k];
			memset(&msgs[j], 0, sizeof msgs[j]);
			msgs[j].msg_hdr.msg_iov = &iov[j];
			msgs[j].msg_hdr.msg_iovlen = 1;
		}
		int r = sendmmsg(s, msgs, (unsigned)n, 0);
		if (r < 0) {
			if (errno == ENOBUFS || errno == EAGAIN) {
				errors++;
				continue;
			}
			die("sendmmsg");
		}
		for (int j = 0; j < r; j++)
			bytes += msgs[j].msg_len;
		sent += (uint64_t)r;
	}
	report(sent, bytes, now_ns() - t0, errors, 0);
}

int main(int argc, char **argv)
{
	if (argc >= 6 && strcmp(argv[1], "write") == 0) {
		load_frames(argv[4]);
		enter_netns(argv[2]);
		do_write(open_tap(argv[3]), strtoull(argv[5], 0, 10));
		return 0;
	}
	if (argc >= 5 && strcmp(argv[1], "read") == 0) {
		enter_netns(argv[2]);
		do_read(open_tap(argv[3]), strtoull(argv[4], 0, 10));
		return 0;
	}
	if (argc >= 6 && strcmp(argv[1], "inject") == 0) {
		load_frames(argv[4]);
		enter_netns(argv[2]);
		do_inject(argv[3], strtoull(argv[5], 0, 10));
		return 0;
	}
	fprintf(stderr, "usage: net_tap_peer write NETNS TAP FRAMES COUNT | read NETNS TAP COUNT |"
			" inject NETNS IFACE FRAMES COUNT\n");
	return 2;
}
