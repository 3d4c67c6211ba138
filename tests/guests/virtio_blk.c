/*
 * A small virtio-blk driver for the test guests, written from the virtio 1.2
 * specification (§2 basic facilities, §2.7 split virtqueues, §4.2
 * virtio-mmio, §5.2 block device). It finds its device from the kernel
 * command line's `virtio_mmio.device=<size>@<base>:<irq>` (Linux syntax),
 * negotiates VERSION_1, EVENT_IDX, INDIRECT_DESC and FLUSH, takes completions by
 * interrupt in the 64-bit guest (IOAPIC pin <irq> -> vector 0x40 -> this
 * CPU's LAPIC; the 32-bit guest polls InterruptStatus, see wait_used) and
 * prints what it did, one line per step, for the host test to check:
 *
 *   blk found base=<hex> irq=<n> id=2
 *   blk capacity <sectors>
 *   blk serial <GET_ID text>
 *   blk sector0 <first 24 bytes of sector 0, printable>
 *   blk write status <s>          (sector 1 <- a pattern)
 *   blk flush status <s>
 *   blk readback ok|mismatch      (only when the write succeeded)
 *   blk inflight ok <n>           (n reads in flight at once, one by indirect table)
 *   blk irqs <count>
 *   blk done
 *
 * With `blk.seq` it then writes sequence numbers forever (see blk_seq).
 * With `blk.again` on the command line it then prints "blk waiting", waits
 * for a byte on COM1 (the host swapped the disk: PATCH /drives), and reads
 * the device again:
 *
 *   blk again capacity <sectors>
 *   blk again sector0 <first 24 bytes of sector 0>
 */
#include "guest.h"

#define VIRTIO_MAGIC 0x74726976u
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INTERRUPT_STATUS 0x060
#define R_INTERRUPT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC_LOW 0x080
#define R_QUEUE_DESC_HIGH 0x084
#define R_QUEUE_DRIVER_LOW 0x090
#define R_QUEUE_DRIVER_HIGH 0x094
#define R_QUEUE_DEVICE_LOW 0x0a0
#define R_QUEUE_DEVICE_HIGH 0x0a4
#define R_CONFIG 0x100

#define ST_ACK 1u
#define ST_DRIVER 2u
#define ST_DRIVER_OK 4u
#define ST_FEATURES_OK 8u

#define F_INDIRECT_DESC 28
#define F_EVENT_IDX 29
#define F_VERSION_1 32 /* bit 0 of the high word */
#define F_BLK_FLUSH 9 /* it sends T_FLUSH, so it accepts FLUSH (else every write is write-through) */

#define D_NEXT 1
#define D_WRITE 2
#define D_INDIRECT 4

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8

#define QSIZE 32
#define INFLIGHT 8
#define VECTOR 0x40
#define IOAPIC 0xfec00000UL
#define LAPIC 0xfee00000UL

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct req_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
};

static struct desc ring_desc[QSIZE] __attribute__((aligned(4096)));
static struct {
	uint16_t flags, idx, ring[QSIZE], used_event;
} ring_avail __attribute__((aligned(4096)));
static struct {
	uint16_t flags, idx;
	struct {
		uint32_t id, len;
	} ring[QSIZE];
	uint16_t avail_event;
} ring_used __attribute__((aligned(4096)));
static struct desc indirect[3] __attribute__((aligned(16)));
static struct req_hdr hdrs[INFLIGHT];
static uint8_t stat[INFLIGHT];
static uint8_t data[INFLIGHT][512] __attribute__((aligned(512)));

static uintptr_t base;
static volatile uint32_t irqs;
static uint16_t avail_idx, last_used;
static int event_idx;

static inline uint32_t rd(unsigned off) { return *(volatile uint32_t *)(base + off); }
static inline void wr(unsigned off, uint32_t v) { *(volatile uint32_t *)(base + off) = v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static void say(const char *a, const char *b)
{
	char line[160];
	unsigned n = 0;
	for (const char *p = a; *p && n < sizeof(line) - 2; p++)
		line[n++] = *p;
	for (const char *p = b; *p && n < sizeof(line) - 2; p++)
		line[n++] = *p;
	line[n++] = '\n';
	line[n] = 0;
	puts_serial(line);
}

static void num(char *out, uint64_t v, int hex)
{
	char tmp[24];
	int i = 0;
	do {
		tmp[i++] = "0123456789abcdef"[v % (hex ? 16 : 10)];
		v /= hex ? 16 : 10;
	} while (v);
	int j = 0;
	if (hex) {
		out[j++] = '0';
		out[j++] = 'x';
	}
	while (i)
		out[j++] = tmp[--i];
	out[j] = 0;
}

static void say_num(const char *a, uint64_t v)
{
	char b[24];
	num(b, v, 0);
	say(a, b);
}

/* ---- finding the device on the command line ---- */

static uint64_t parse_num(const char **s, int *ok)
{
	const char *p = *s;
	uint64_t v = 0;
	int base10 = !(p[0] == '0' && (p[1] == 'x' || p[1] == 'X'));
	if (!base10)
		p += 2;
	const char *start = p;
	for (;; p++) {
		char c = *p;
		int d = c >= '0' && c <= '9' ? c - '0'
			: !base10 && c >= 'a' && c <= 'f' ? c - 'a' + 10
			: !base10 && c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			break;
		v = v * (base10 ? 10 : 16) + (uint64_t)d;
	}
	*ok = p != start;
	*s = p;
	return v;
}

/* Parses the first virtio_mmio.device=<size>[K|M]@<base>:<irq>. */
/* Whether `word` appears in the command line as a whole space-separated word. */
static int has_word(const char *cmd, const char *word)
{
	for (const char *p = cmd; *p; p++) {
		if (p != cmd && p[-1] != ' ')
			continue;
		const char *a = p, *b = word;
		while (*b && *a == *b)
			a++, b++;
		if (!*b && (*a == 0 || *a == ' '))
			return 1;
	}
	return 0;
}

static int find_device(const char *cmd, uint64_t *addr, uint32_t *irq)
{
	static const char key[] = "virtio_mmio.device=";
	for (const char *p = cmd; *p; p++) {
		if (p != cmd && p[-1] != ' ')
			continue;
		unsigned i = 0;
		while (key[i] && p[i] == key[i])
			i++;
		if (key[i])
			continue;
		const char *s = p + i;
		int ok;
		uint64_t size = parse_num(&s, &ok);
		if (!ok)
			return 0;
		if (*s == 'K' || *s == 'k')
			size <<= 10, s++;
		else if (*s == 'M' || *s == 'm')
			size <<= 20, s++;
		if (*s++ != '@' || size < 0x200)
			return 0;
		*addr = parse_num(&s, &ok);
		if (!ok || *s++ != ':')
			return 0;
		*irq = (uint32_t)parse_num(&s, &ok);
		return ok;
	}
	return 0;
}

/* ---- interrupts: IDT gate for VECTOR, IOAPIC pin -> LAPIC ---- */

struct interrupt_frame;

#ifdef __x86_64__
__attribute__((interrupt)) static void virtio_isr(struct interrupt_frame *f)
{
	(void)f;
	uint32_t st = rd(R_INTERRUPT_STATUS);
	wr(R_INTERRUPT_ACK, st);
	irqs++;
	*(volatile uint32_t *)(LAPIC + 0xb0) = 0; /* EOI */
}

#ifdef __x86_64__
static uint64_t idt[256 * 2] __attribute__((aligned(16)));
#else
static uint64_t idt[256] __attribute__((aligned(8)));
#endif

static void setup_irq(uint32_t irq)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	uintptr_t h = (uintptr_t)virtio_isr;
#ifdef __x86_64__
	idt[VECTOR * 2] = (h & 0xffff) | ((uint64_t)cs << 16) | (0x8eULL << 40) |
			  (((uint64_t)h >> 16 & 0xffff) << 48);
	idt[VECTOR * 2 + 1] = (uint64_t)h >> 32;
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) idtr = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
#else
	idt[VECTOR] = (h & 0xffff) | ((uint64_t)cs << 16) | (0x8eULL << 40) |
		      ((uint64_t)(h >> 16 & 0xffff) << 48);
	struct {
		uint16_t limit;
		uint32_t base;
	} __attribute__((packed)) idtr = {sizeof(idt) - 1, (uint32_t)(uintptr_t)idt};
#endif
	__asm__ volatile("lidt %0" : : "m"(idtr));
	outb(0x21, 0xff); /* the 8259s stay masked: only the IOAPIC delivers */
	outb(0xa1, 0xff);
	volatile uint32_t *lapic = (volatile uint32_t *)LAPIC;
	lapic[0xf0 / 4] = 0x1ff; /* software enable, spurious vector 0xff */
	lapic[0x80 / 4] = 0;     /* task priority 0 */
	volatile uint32_t *ioapic = (volatile uint32_t *)IOAPIC;
	ioapic[0] = 0x10 + 2 * irq + 1;
	ioapic[4] = 0; /* destination APIC id 0 */
	ioapic[0] = 0x10 + 2 * irq;
	ioapic[4] = VECTOR; /* fixed, physical, active high, edge, unmasked */
}
#endif

/* ---- the queue ---- */

static void put_desc(unsigned i, const void *p, uint32_t len, uint16_t flags, uint16_t next)
{
	ring_desc[i].addr = (uint64_t)(uintptr_t)p;
	ring_desc[i].len = len;
	ring_desc[i].flags = flags;
	ring_desc[i].next = next;
}

static void publish(uint16_t head)
{
	ring_avail.ring[avail_idx % QSIZE] = head;
	barrier();
	avail_idx++;
	ring_avail.idx = avail_idx;
	barrier();
}

/*
 * Waits (bounded) until `n` more chains are used. The 64-bit guest takes the
 * completion interrupts; the 32-bit one polls InterruptStatus instead,
 * because this host's instruction emulator cannot execute a protected-mode
 * IRET (KVM's emulator handles IRET in real mode only).
 */
static int wait_used(unsigned n)
{
	uint16_t want = (uint16_t)(last_used + n);
	uint32_t irqs_before = irqs;
#ifdef __x86_64__
	__asm__ volatile("sti");
	/* Done when the chains are used and their interrupt has arrived. */
#define WAITING ((uint16_t)(ring_used.idx - want) > 0x8000u || irqs == irqs_before)
#else
	(void)irqs_before;
#define WAITING ((uint16_t)(ring_used.idx - want) > 0x8000u)
#endif
	for (uint32_t spins = 0; WAITING; spins++) {
		if (spins > 4000000) {
			__asm__ volatile("cli");
			return 0;
		}
		__asm__ volatile("pause");
	}
#undef WAITING
	__asm__ volatile("cli");
#ifndef __x86_64__
	uint32_t st = rd(R_INTERRUPT_STATUS);
	if (st & 1)
		irqs++;
	wr(R_INTERRUPT_ACK, st);
#endif
	last_used = want;
	if (event_idx)
		ring_avail.used_event = last_used;
	return 1;
}

/* One request of header + (optional) one data buffer + status, chain at descriptor slot*3. */
static uint8_t do_req(unsigned slot, uint32_t type, uint64_t sector, void *buf, uint32_t len, int dev_writes)
{
	unsigned d = slot * 3;
	hdrs[slot].type = type;
	hdrs[slot].reserved = 0;
	hdrs[slot].sector = sector;
	stat[slot] = 0xff;
	if (len) {
		put_desc(d, &hdrs[slot], sizeof(hdrs[slot]), D_NEXT, (uint16_t)(d + 1));
		put_desc(d + 1, buf, len, (uint16_t)(D_NEXT | (dev_writes ? D_WRITE : 0)), (uint16_t)(d + 2));
		put_desc(d + 2, &stat[slot], 1, D_WRITE, 0);
	} else {
		put_desc(d, &hdrs[slot], sizeof(hdrs[slot]), D_NEXT, (uint16_t)(d + 2));
		put_desc(d + 2, &stat[slot], 1, D_WRITE, 0);
	}
	publish((uint16_t)d);
	wr(R_QUEUE_NOTIFY, 0);
	if (!wait_used(1))
		return 0xfe;
	return stat[slot];
}

static uint64_t cfg64(unsigned off)
{
	uint32_t lo = rd(R_CONFIG + off), hi = rd(R_CONFIG + off + 4);
	return ((uint64_t)hi << 32) | lo;
}

/*
 * blk.seq (checkpoint tests): forever writes sequence number s over all of
 * sector BLK_SEQ_FIRST + s % BLK_SEQ_SECTORS, and after each completed write
 * stores s at BLK_SEQ_DONE in RAM, so a test knows what the disk must hold.
 */
#define BLK_SEQ_FIRST 16
#define BLK_SEQ_SECTORS 64
#define BLK_SEQ_DONE 0xf00000u
static void __attribute__((noreturn)) blk_seq(void)
{
	say("blk seq", "");
	for (uint32_t s = 1;; s++) {
		uint32_t *w = (uint32_t *)data[0];
		for (int i = 0; i < 128; i++)
			w[i] = s;
		uint8_t st = do_req(0, T_OUT, BLK_SEQ_FIRST + s % BLK_SEQ_SECTORS, data[0], 512, 0);
		if (st != 0) {
			say_num("blk seq write failed ", st);
			debug_exit(4);
		}
		*(volatile uint32_t *)(uintptr_t)BLK_SEQ_DONE = s;
	}
}

void virtio_blk_test(const char *cmdline)
{
	uint64_t addr;
	uint32_t irq;
	if (!find_device(cmdline, &addr, &irq)) {
		say("blk error: ", "no virtio_mmio.device= on the command line");
		return;
	}
	base = (uintptr_t)addr;
	char a[24];
	num(a, addr, 1);
	if (rd(R_MAGIC) != VIRTIO_MAGIC || rd(R_VERSION) != 2 || rd(R_DEVICE_ID) != 2) {
		say("blk error: no modern virtio-blk at ", a);
		return;
	}
	char line[64], b[24];
	unsigned n = 0;
	for (const char *p = a; *p; p++)
		line[n++] = *p;
	for (const char *p = " irq="; *p; p++)
		line[n++] = *p;
	num(b, irq, 0);
	for (const char *p = b; *p; p++)
		line[n++] = *p;
	for (const char *p = " id=2"; *p; p++)
		line[n++] = *p;
	line[n] = 0;
	say("blk found base=", line);

	wr(R_STATUS, 0);
	while (rd(R_STATUS) != 0)
		__asm__ volatile("pause");
	wr(R_STATUS, ST_ACK);
	wr(R_STATUS, ST_ACK | ST_DRIVER);
	wr(R_DEVICE_FEATURES_SEL, 0);
	uint32_t lo = rd(R_DEVICE_FEATURES);
	wr(R_DEVICE_FEATURES_SEL, 1);
	uint32_t hi = rd(R_DEVICE_FEATURES);
	if (!(hi & 1)) {
		say("blk error: ", "device does not offer VIRTIO_F_VERSION_1");
		return;
	}
	uint32_t want_lo = lo & ((1u << F_INDIRECT_DESC) | (1u << F_EVENT_IDX) | (1u << F_BLK_FLUSH));
	event_idx = (want_lo >> F_EVENT_IDX) & 1;
	wr(R_DRIVER_FEATURES_SEL, 0);
	wr(R_DRIVER_FEATURES, want_lo);
	wr(R_DRIVER_FEATURES_SEL, 1);
	wr(R_DRIVER_FEATURES, 1);
	wr(R_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
	if (!(rd(R_STATUS) & ST_FEATURES_OK)) {
		say("blk error: ", "FEATURES_OK not accepted");
		return;
	}
	wr(R_QUEUE_SEL, 0);
	if (rd(R_QUEUE_NUM_MAX) < QSIZE) {
		say("blk error: ", "queue too small");
		return;
	}
	wr(R_QUEUE_NUM, QSIZE);
	wr(R_QUEUE_DESC_LOW, (uint32_t)(uintptr_t)ring_desc);
	wr(R_QUEUE_DESC_HIGH, 0);
	wr(R_QUEUE_DRIVER_LOW, (uint32_t)(uintptr_t)&ring_avail);
	wr(R_QUEUE_DRIVER_HIGH, 0);
	wr(R_QUEUE_DEVICE_LOW, (uint32_t)(uintptr_t)&ring_used);
	wr(R_QUEUE_DEVICE_HIGH, 0);
	wr(R_QUEUE_READY, 1);
#ifdef __x86_64__
	setup_irq(irq);
#endif
	wr(R_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);

	say_num("blk capacity ", cfg64(0));

	uint8_t s = do_req(0, T_GET_ID, 0, data[0], 20, 1);
	char serial[21];
	for (int i = 0; i < 20; i++)
		serial[i] = (char)data[0][i];
	serial[20] = 0;
	say("blk serial ", s == 0 ? serial : "(failed)");

	s = do_req(0, T_IN, 0, data[0], 512, 1);
	char text[25];
	for (int i = 0; i < 24; i++) {
		char c = (char)data[0][i];
		text[i] = c >= 0x20 && c < 0x7f ? c : '.';
	}
	text[24] = 0;
	say("blk sector0 ", s == 0 ? text : "(read failed)");

	for (int i = 0; i < 512; i++)
		data[1][i] = (uint8_t)(i * 7 + 3);
	s = do_req(1, T_OUT, 1, data[1], 512, 0);
	say_num("blk write status ", s);
	uint8_t fs = do_req(1, T_FLUSH, 0, 0, 0, 0);
	say_num("blk flush status ", fs);
	if (s == 0) {
		memset(data[2], 0, 512);
		do_req(2, T_IN, 1, data[2], 512, 1);
		int same = 1;
		for (int i = 0; i < 512; i++)
			same &= data[2][i] == (uint8_t)(i * 7 + 3);
		say("blk readback ", same ? "ok" : "mismatch");
	}

	/* INFLIGHT reads of sectors 0..7 at once; the last through an indirect table. */
	for (unsigned k = 0; k < INFLIGHT; k++) {
		hdrs[k].type = T_IN;
		hdrs[k].reserved = 0;
		hdrs[k].sector = k;
		stat[k] = 0xff;
	}
	for (unsigned k = 0; k + 1 < INFLIGHT; k++) {
		unsigned d = k * 3;
		put_desc(d, &hdrs[k], sizeof(hdrs[k]), D_NEXT, (uint16_t)(d + 1));
		put_desc(d + 1, data[k], 512, D_NEXT | D_WRITE, (uint16_t)(d + 2));
		put_desc(d + 2, &stat[k], 1, D_WRITE, 0);
	}
	unsigned k = INFLIGHT - 1, ind = (INFLIGHT - 1) * 3;
	indirect[0] = (struct desc){(uint64_t)(uintptr_t)&hdrs[k], sizeof(hdrs[k]), D_NEXT, 1};
	indirect[1] = (struct desc){(uint64_t)(uintptr_t)data[k], 512, D_NEXT | D_WRITE, 2};
	indirect[2] = (struct desc){(uint64_t)(uintptr_t)&stat[k], 1, D_WRITE, 0};
	put_desc(ind, indirect, sizeof(indirect), D_INDIRECT, 0);
	for (unsigned j = 0; j + 1 < INFLIGHT; j++)
		ring_avail.ring[(avail_idx + j) % QSIZE] = (uint16_t)(j * 3);
	ring_avail.ring[(avail_idx + INFLIGHT - 1) % QSIZE] = (uint16_t)ind;
	barrier();
	avail_idx = (uint16_t)(avail_idx + INFLIGHT);
	ring_avail.idx = avail_idx;
	barrier();
	wr(R_QUEUE_NOTIFY, 0);
	int ok = wait_used(INFLIGHT);
	unsigned good = 0;
	for (unsigned j = 0; j < INFLIGHT; j++)
		good += stat[j] == 0;
	say_num(ok && good == INFLIGHT ? "blk inflight ok " : "blk inflight failed ", good);
	say_num("blk irqs ", irqs);
	say("blk done", "");
	if (has_word(cmdline, "blk.seq"))
		blk_seq();
	if (!has_word(cmdline, "blk.again"))
		return;
	say("blk waiting", "");
	while (poll_serial() < 0)
		__asm__ volatile("pause");
	say_num("blk again capacity ", cfg64(0));
	s = do_req(0, T_IN, 0, data[0], 512, 1);
	for (int i = 0; i < 24; i++) {
		char c = (char)data[0][i];
		text[i] = c >= 0x20 && c < 0x7f ? c : '.';
	}
	say("blk again sector0 ", s == 0 ? text : "(read failed)");
}
