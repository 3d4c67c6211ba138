/*
 * mode=net: a virtio-net driver (virtio 1.2 section 5.1) over the
 * virtio-mmio core, with the smallest useful network stack: it answers ARP
 * requests and ICMP echo requests for its address, and counts the rest.
 * Replies are made in place in the receive buffers and sent from there (one
 * transmit descriptor per receive buffer of the frame), so nothing is copied:
 * the guest runs at ~2 M instructions/s here.
 *
 * Command line:
 *   virtio_mmio.device=<size>@<base>:<irq>   where the device is (Linux syntax; the first net one)
 *   net.ip=A.B.C.D     its IPv4 address (default 10.0.0.2)
 *   net.buf=N          receive buffer bytes, 128..4096 (default 1536)
 *   net.qsize=N        queue entries, a power of two up to 256 (default 64)
 *   net.nomrg          do not negotiate VIRTIO_NET_F_MRG_RXBUF (then net.buf >= 1526)
 *   net.flood          keep the last quarter of the buffers for transmitting a flood
 *
 * Serial: prints "net up mac ... ip ... features 0x..." once ready; the
 * line "stats" prints "net stats rx=.. tx=.. arp=.. icmp=.. other=..
 * merged=.. bad=.."; "quit" prints the stats and powers off; with net.flood,
 * "flood N" sends N UDP frames (60 bytes, to port 9 of A.B.C.1 and the
 * broadcast MAC) as fast as the device takes them, then prints
 * "net flood done sent=N".
 */
#include "virtio_mmio.h"

#define VIRTIO_ID_NET 1
#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_MRG_RXBUF 15
#define VIRTIO_NET_F_STATUS 16
#define NET_HDR_LEN 12 /* struct virtio_net_hdr with num_buffers (always, in virtio 1.x) */
#define MAX_Q 256
#define MAX_BUF 4096
#define ETH_ARP 0x0806
#define ETH_IPV4 0x0800

static struct vmmio_dev dev;
static struct vq rxq, txq;
/* Rings and buffers live in guest RAM at 8 MiB, outside the image (which stays small). */
#define NET_MEM_BASE 0x800000u
#define RING_BYTES 0x4000u /* >= VQ_BYTES(MAX_Q) */
static uint8_t *rx_mem = (uint8_t *)(uintptr_t)NET_MEM_BASE;
static uint8_t *tx_mem = (uint8_t *)(uintptr_t)(NET_MEM_BASE + RING_BYTES);
static uint8_t *bufs = (uint8_t *)(uintptr_t)(NET_MEM_BASE + 2 * RING_BYTES);
static unsigned buf_size = 1536;
/* Buffers [0, rx_bufs) take frames; [rx_bufs, qsize) carry the flood (net.flood). */
static unsigned rx_bufs;
static uint16_t flood_free[MAX_Q];
static unsigned flood_nfree, flood_left, flood_sent, flood_busy;
static int mergeable;
static uint8_t mac[6] = {0x02, 0, 0, 0, 0, 0x01};
static uint8_t ip[4] = {10, 0, 0, 2};

static struct {
	uint32_t rx, tx, arp, icmp, other, merged, bad;
} stats;

/* The frame being collected from the used ring (MRG_RXBUF: several buffers). */
static uint16_t frame_ids[MAX_Q];
static uint32_t frame_lens[MAX_Q];
static unsigned frame_want, frame_got;

static uint8_t *buf_of(unsigned id)
{
	return bufs + (uintptr_t)id * buf_size;
}

static void post_rx(uint16_t id)
{
	volatile struct virtq_desc *d = &rxq.desc[id];
	d->addr = (uintptr_t)buf_of(id);
	d->len = buf_size;
	d->flags = VIRTQ_DESC_F_WRITE;
	d->next = 0;
	vq_push(&rxq, id);
}

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static int same4(const uint8_t *a, const uint8_t *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static void copy_n(uint8_t *d, const uint8_t *s, unsigned n)
{
	while (n--)
		*d++ = *s++;
}

/* One's-complement sum of `n` bytes (n even), not folded. */
static uint32_t csum_add(const uint8_t *p, unsigned n, uint32_t sum)
{
	for (unsigned i = 0; i + 1 < n; i += 2)
		sum += be16(p + i);
	return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* Sends the frame in buffers frame_ids[0..n) as one chain from the same buffers. */
static void send_in_place(unsigned n)
{
	memset(buf_of(frame_ids[0]), 0, NET_HDR_LEN);
	for (unsigned j = 0; j < n; j++) {
		volatile struct virtq_desc *d = &txq.desc[frame_ids[j]];
		d->addr = (uintptr_t)buf_of(frame_ids[j]);
		d->len = frame_lens[j];
		d->flags = j + 1 < n ? VIRTQ_DESC_F_NEXT : 0;
		d->next = j + 1 < n ? frame_ids[j + 1] : 0;
	}
	vq_push(&txq, frame_ids[0]);
	stats.tx++;
}

/* ARP request for our address: turn it into the reply. Returns 1 if sent. */
static int answer_arp(uint8_t *f, uint32_t len, unsigned n)
{
	uint8_t *a = f + 14;
	if (len < 42 || be16(a) != 1 || be16(a + 2) != ETH_IPV4 || a[4] != 6 || a[5] != 4 ||
	    be16(a + 6) != 1 || !same4(a + 24, ip))
		return 0;
	copy_n(f, a + 8, 6);	  /* to the asker */
	copy_n(f + 6, mac, 6);
	put_be16(a + 6, 2);	  /* reply */
	copy_n(a + 18, a + 8, 10); /* target = asker's MAC and IP */
	copy_n(a + 8, mac, 6);
	copy_n(a + 14, ip, 4);
	send_in_place(n);
	stats.arp++;
	return 1;
}

/* ICMP echo request to our address: turn it into the reply. Returns 1 if sent. */
static int answer_icmp(uint8_t *f, uint32_t len, uint32_t first_len, unsigned n)
{
	uint8_t *h = f + 14;
	if (len < 14 + 20 + 8 || (h[0] >> 4) != 4)
		return 0;
	unsigned ihl = (h[0] & 15u) * 4u;
	/* Headers must sit in the first buffer (net.buf >= 128 makes sure). */
	if (ihl < 20 || 14 + ihl + 8 > first_len || h[9] != 1 || !same4(h + 16, ip))
		return 0;
	if ((be16(h + 6) & 0x3fff) != 0 || be16(h + 2) + 14u > len)
		return 0;
	uint8_t *icmp = h + ihl;
	if (icmp[0] != 8 || icmp[1] != 0)
		return 0;
	uint8_t tmp[6];
	copy_n(tmp, f + 6, 6);
	copy_n(f, tmp, 6);
	copy_n(f + 6, mac, 6);
	copy_n(tmp, h + 12, 4);
	copy_n(h + 12, h + 16, 4);
	copy_n(h + 16, tmp, 4);
	h[8] = 64;
	put_be16(h + 10, 0);
	put_be16(h + 10, csum_fold(csum_add(h, ihl, 0)));
	/* RFC 1624: HC' = ~(~HC + ~m + m') for the type word 0x0800 -> 0x0000. */
	icmp[0] = 0;
	uint32_t sum = (uint16_t)~be16(icmp + 2) + (uint16_t)~0x0800u;
	put_be16(icmp + 2, csum_fold(sum));
	send_in_place(n);
	stats.icmp++;
	return 1;
}

static void handle_frame(unsigned n)
{
	uint8_t *b = buf_of(frame_ids[0]);
	uint32_t total = 0;
	for (unsigned j = 0; j < n; j++)
		total += frame_lens[j];
	stats.rx++;
	if (n > 1)
		stats.merged++;
	if (frame_lens[0] < NET_HDR_LEN + 14) {
		stats.bad++;
		for (unsigned j = 0; j < n; j++)
			post_rx(frame_ids[j]);
		return;
	}
	uint8_t *f = b + NET_HDR_LEN;
	uint32_t len = total - NET_HDR_LEN;
	uint32_t first = frame_lens[0] - NET_HDR_LEN;
	uint16_t type = be16(f + 12);
	if (type == ETH_ARP && answer_arp(f, len, n))
		return;
	if (type == ETH_IPV4 && answer_icmp(f, len, first, n))
		return;
	stats.other++;
	for (unsigned j = 0; j < n; j++)
		post_rx(frame_ids[j]);
}

static void service_rx(void)
{
	while (vq_used_pending(&rxq) > 0) {
		struct virtq_used_elem e = vq_pop(&rxq);
		if (e.id >= rxq.num || e.len > buf_size) {
			stats.bad++;
			continue;
		}
		if (frame_want == 0) {
			uint16_t nb = 1;
			if (e.len >= NET_HDR_LEN) {
				const uint8_t *hdr = buf_of(e.id);
				nb = (uint16_t)(hdr[10] | hdr[11] << 8);
			}
			/* The spec says 1 without MRG_RXBUF; QEMU 7.2 and vhost before 2025 leave 0. */
			if (!mergeable && nb > 1)
				stats.bad++;
			if (!mergeable || nb == 0 || nb > rxq.num)
				nb = 1;
			frame_want = nb;
			frame_got = 0;
		}
		frame_ids[frame_got] = (uint16_t)e.id;
		frame_lens[frame_got] = e.len;
		if (++frame_got == frame_want) {
			handle_frame(frame_got);
			frame_want = 0;
		}
	}
}

static void service_tx(void)
{
	while (vq_used_pending(&txq) > 0) {
		struct virtq_used_elem e = vq_pop(&txq);
		unsigned id = e.id;
		for (unsigned hops = 0; id < txq.num && hops < txq.num; hops++) {
			uint16_t flags = txq.desc[id].flags;
			uint16_t next = txq.desc[id].next;
			if (id >= rx_bufs) {
				flood_free[flood_nfree++] = (uint16_t)id;
				flood_busy--;
			} else {
				post_rx((uint16_t)id);
			}
			if (!(flags & VIRTQ_DESC_F_NEXT))
				break;
			id = next;
		}
	}
}

/* Queues flood frames while buffers are free; prints once the last has been taken. */
static void service_flood(void)
{
	while (flood_left > 0 && flood_nfree > 0) {
		uint16_t id = flood_free[--flood_nfree];
		uint8_t *b = buf_of(id);
		memset(b, 0, NET_HDR_LEN + 60);
		uint8_t *f = b + NET_HDR_LEN;
		memset(f, 0xff, 6);
		copy_n(f + 6, mac, 6);
		put_be16(f + 12, ETH_IPV4);
		uint8_t *h = f + 14;
		h[0] = 0x45;
		put_be16(h + 2, 20 + 8 + 18);
		put_be16(h + 4, (uint16_t)flood_sent);
		h[8] = 64;
		h[9] = 17;
		copy_n(h + 12, ip, 4);
		copy_n(h + 16, ip, 3);
		h[19] = 1;
		put_be16(h + 10, csum_fold(csum_add(h, 20, 0)));
		put_be16(h + 20, 40000);
		put_be16(h + 22, 9);
		put_be16(h + 24, 8 + 18); /* UDP checksum 0: none (IPv4) */
		volatile struct virtq_desc *d = &txq.desc[id];
		d->addr = (uintptr_t)b;
		d->len = NET_HDR_LEN + 60;
		d->flags = 0;
		d->next = 0;
		vq_push(&txq, id);
		stats.tx++;
		flood_left--;
		flood_sent++;
		flood_busy++;
		if (flood_left == 0)
			flood_busy |= 1u << 31; /* say done once the device has taken them all */
	}
	if (flood_busy == 1u << 31) {
		flood_busy = 0;
		struct line l = {.len = 0};
		add_str(&l, "net flood done sent=");
		add_dec(&l, flood_sent);
		emit(&l);
	}
}

static void print_stats(void)
{
	struct line l = {.len = 0};
	add_str(&l, "net stats rx=");
	add_dec(&l, stats.rx);
	add_str(&l, " tx=");
	add_dec(&l, stats.tx);
	add_str(&l, " arp=");
	add_dec(&l, stats.arp);
	add_str(&l, " icmp=");
	add_dec(&l, stats.icmp);
	add_str(&l, " other=");
	add_dec(&l, stats.other);
	add_str(&l, " merged=");
	add_dec(&l, stats.merged);
	add_str(&l, " bad=");
	add_dec(&l, stats.bad);
	emit(&l);
}

static void __attribute__((noreturn)) fail(const char *why)
{
	struct line l = {.len = 0};
	add_str(&l, "net: ");
	add_str(&l, why);
	emit(&l);
	debug_exit(3);
}

/* Value of `key` (e.g. "net.ip=") on the command line, or NULL. */
static const char *arg(const char *cmd, const char *key)
{
	for (const char *p = cmd; *p; p++) {
		if ((p == cmd || p[-1] == ' ') && starts_with(p, key)) {
			while (*key) {
				key++;
				p++;
			}
			return p;
		}
	}
	return 0;
}

static void parse_ip(const char *s)
{
	for (unsigned i = 0; i < 4; i++) {
		uint32_t v = parse_dec(s);
		if (v > 255)
			fail("bad net.ip");
		ip[i] = (uint8_t)v;
		while (*s >= '0' && *s <= '9')
			s++;
		if (i < 3 && *s++ != '.')
			fail("bad net.ip");
	}
}

static void add_mac(struct line *l)
{
	for (unsigned i = 0; i < 6; i++) {
		char h[4] = {"0123456789abcdef"[mac[i] >> 4], "0123456789abcdef"[mac[i] & 15],
			     i < 5 ? ':' : 0, 0};
		add_str(l, h);
	}
}

static void read_mac(void)
{
	uint32_t gen;
	do {
		gen = mmio_r32(&dev, VMMIO_CONFIG_GENERATION);
		for (unsigned i = 0; i < 6; i++)
			mac[i] = mmio_r8(&dev, VMMIO_CONFIG + i);
	} while (mmio_r32(&dev, VMMIO_CONFIG_GENERATION) != gen);
}

/* Whether [base, base+len) is inside one RAM entry of the memory map. */
static int in_ram(const struct boot_info *bi, uint64_t base, uint64_t len)
{
	for (unsigned i = 0; i < bi->nmem; i++) {
		const struct mem_entry *m = &bi->mem[i];
		if (m->type == 1 && m->addr <= base && base + len <= m->addr + m->size)
			return 1;
	}
	return 0;
}

void net_main(const struct boot_info *bi)
{
	const char *cmdline = bi->cmdline;
	const char *v;
	if ((v = arg(cmdline, "net.ip=")))
		parse_ip(v);
	if ((v = arg(cmdline, "net.buf="))) {
		buf_size = parse_dec(v);
		if (buf_size < 128 || buf_size > MAX_BUF)
			fail("net.buf must be 128..4096");
	}
	unsigned qsize = 64;
	if ((v = arg(cmdline, "net.qsize="))) {
		qsize = parse_dec(v);
		if (qsize == 0 || qsize > MAX_Q || (qsize & (qsize - 1)))
			fail("net.qsize must be a power of two up to 256");
	}
	if (!in_ram(bi, NET_MEM_BASE, 2 * RING_BYTES + (uint64_t)qsize * buf_size))
		fail("needs RAM from 8 MiB for its rings and buffers (give the VM 16 MiB or more)");
	uint64_t want = 1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_STATUS;
	if (!arg(cmdline, "net.nomrg"))
		want |= 1ull << VIRTIO_NET_F_MRG_RXBUF;
	if (vmmio_find(cmdline, VIRTIO_ID_NET, 0, &dev) != 0)
		fail("no virtio-net device on the command line (virtio_mmio.device=)");
	uint64_t got;
	if (vmmio_negotiate(&dev, want, &got) != 0)
		fail("feature negotiation failed");
	mergeable = (got >> VIRTIO_NET_F_MRG_RXBUF) & 1;
	if (!mergeable && buf_size < NET_HDR_LEN + 1514)
		fail("without MRG_RXBUF, net.buf must be at least 1526");
	if (got & (1ull << VIRTIO_NET_F_MAC))
		read_mac();
	if (vmmio_queue(&dev, 0, qsize, rx_mem, &rxq) != 0 ||
	    vmmio_queue(&dev, 1, qsize, tx_mem, &txq) != 0)
		fail("queue setup failed");
	/* Transmit descriptors are indexed by receive buffer: both queues need one size. */
	if (txq.num != rxq.num)
		fail("receive and transmit queues differ in size");
	rx_bufs = arg(cmdline, "net.flood") ? rxq.num - rxq.num / 4 : rxq.num;
	for (unsigned i = 0; i < rx_bufs; i++)
		post_rx((uint16_t)i);
	for (unsigned i = rx_bufs; i < rxq.num; i++)
		flood_free[flood_nfree++] = (uint16_t)i;
	vmmio_driver_ok(&dev);
	vq_kick(&dev, &rxq);
	irq_init(dev.irq, 10);

	struct line l = {.len = 0};
	add_str(&l, "net up mac ");
	add_mac(&l);
	add_str(&l, " ip ");
	for (unsigned i = 0; i < 4; i++) {
		add_dec(&l, ip[i]);
		if (i < 3)
			add_str(&l, ".");
	}
	add_str(&l, " base ");
	add_hex(&l, dev.base);
	add_str(&l, " irq ");
	add_dec(&l, dev.irq);
	add_str(&l, " features ");
	add_hex(&l, got);
	add_str(&l, " queue ");
	add_dec(&l, rxq.num);
	add_str(&l, " buf ");
	add_dec(&l, buf_size);
	emit(&l);

	struct line in = {.len = 0};
	int reset_said = 0;
	for (;;) {
		uint32_t isr = vmmio_ack_interrupt(&dev);
		if ((isr & 2) && !reset_said &&
		    (mmio_r32(&dev, VMMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET)) {
			puts_serial("net: device needs reset\n");
			reset_said = 1;
		}
		service_tx();
		service_rx();
		service_flood();
		vq_kick(&dev, &txq);
		vq_kick(&dev, &rxq);
		for (int c; (c = poll_serial()) >= 0;) {
			if (c == '\r')
				continue;
			if (c != '\n') {
				if (in.len < sizeof(in.buf) - 1)
					in.buf[in.len++] = (char)c;
				continue;
			}
			in.buf[in.len] = 0;
			if (starts_with(in.buf, "stats"))
				print_stats();
			if (starts_with(in.buf, "flood ") && rx_bufs < rxq.num && flood_left == 0) {
				flood_left = parse_dec(in.buf + 6);
				flood_sent = 0;
			}
			if (starts_with(in.buf, "quit")) {
				print_stats();
				puts_serial("bye\n");
				poweroff();
			}
			in.len = 0;
		}
		if (vq_used_pending(&rxq) == 0 && vq_used_pending(&txq) == 0 &&
		    (flood_left == 0 || flood_nfree == 0))
			irq_wait();
	}
}
