/*
 * Guest-side virtio-mmio core (see virtio_mmio.h): device discovery from the
 * kernel command line in Linux's syntax, the initialization sequence of
 * virtio 1.2 section 3.1.1 and split-queue setup per section 4.2.3.2.
 */
#include "virtio_mmio.h"

/* Linux memparse(): a number (decimal or 0x hex) with an optional K/M/G suffix. */
static const char *parse_num(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		s += 2;
		for (;;) {
			char c = *s;
			unsigned dgt;
			if (c >= '0' && c <= '9')
				dgt = (unsigned)(c - '0');
			else if (c >= 'a' && c <= 'f')
				dgt = (unsigned)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				dgt = (unsigned)(c - 'A' + 10);
			else
				break;
			v = v * 16 + dgt;
			s++;
		}
	} else {
		while (*s >= '0' && *s <= '9')
			v = v * 10 + (uint64_t)(*s++ - '0');
	}
	switch (*s) {
	case 'G':
	case 'g':
		v <<= 10;
		/* fall through */
	case 'M':
	case 'm':
		v <<= 10;
		/* fall through */
	case 'K':
	case 'k':
		v <<= 10;
		s++;
		break;
	default:
		break;
	}
	*out = v;
	return s;
}

int vmmio_find(const char *cmdline, uint32_t device_id, unsigned nth, struct vmmio_dev *out)
{
	static const char key[] = "virtio_mmio.device=";
	for (const char *p = cmdline; *p; p++) {
		if (!((p == cmdline || p[-1] == ' ') && starts_with(p, key)))
			continue;
		uint64_t size, base, irq;
		const char *q = parse_num(p + sizeof(key) - 1, &size);
		if (*q != '@')
			continue;
		q = parse_num(q + 1, &base);
		if (*q != ':')
			continue;
		parse_num(q + 1, &irq);
		if (size < 0x200 || base == 0 || base + size > 0x100000000ull)
			continue;
		struct vmmio_dev d = {(uintptr_t)base, (uint32_t)size, (uint32_t)irq, 0};
		if (mmio_r32(&d, VMMIO_MAGIC) != VMMIO_MAGIC_VALUE || mmio_r32(&d, VMMIO_VERSION) != 2)
			continue;
		d.device_id = mmio_r32(&d, VMMIO_DEVICE_ID);
		if (d.device_id != device_id)
			continue;
		if (nth-- == 0) {
			*out = d;
			return 0;
		}
	}
	return -1;
}

static uint64_t device_features(const struct vmmio_dev *d)
{
	mmio_w32(d, VMMIO_DEVICE_FEATURES_SEL, 1);
	uint64_t hi = mmio_r32(d, VMMIO_DEVICE_FEATURES);
	mmio_w32(d, VMMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t lo = mmio_r32(d, VMMIO_DEVICE_FEATURES);
	return hi << 32 | lo;
}

int vmmio_negotiate(const struct vmmio_dev *d, uint64_t wanted, uint64_t *got)
{
	mmio_w32(d, VMMIO_STATUS, 0);
	while (mmio_r32(d, VMMIO_STATUS) != 0)
		__asm__ volatile("pause");
	mmio_w32(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	mmio_w32(d, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	uint64_t offered = device_features(d);
	uint64_t accept = offered & (wanted | (1ull << VIRTIO_F_VERSION_1));
	if (!(accept & (1ull << VIRTIO_F_VERSION_1))) {
		mmio_w32(d, VMMIO_STATUS, VIRTIO_STATUS_FAILED);
		return -1;
	}
	mmio_w32(d, VMMIO_DRIVER_FEATURES_SEL, 0);
	mmio_w32(d, VMMIO_DRIVER_FEATURES, (uint32_t)accept);
	mmio_w32(d, VMMIO_DRIVER_FEATURES_SEL, 1);
	mmio_w32(d, VMMIO_DRIVER_FEATURES, (uint32_t)(accept >> 32));
	uint32_t st = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
	mmio_w32(d, VMMIO_STATUS, st);
	if (!(mmio_r32(d, VMMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
		mmio_w32(d, VMMIO_STATUS, VIRTIO_STATUS_FAILED);
		return -1;
	}
	*got = accept;
	return 0;
}

int vmmio_queue(const struct vmmio_dev *d, unsigned index, unsigned num, void *mem,
		struct vq *q)
{
	mmio_w32(d, VMMIO_QUEUE_SEL, index);
	if (mmio_r32(d, VMMIO_QUEUE_READY) != 0)
		return -1;
	unsigned max = mmio_r32(d, VMMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return -1;
	while (num > max)
		num >>= 1;
	if (num == 0)
		return -1;
	uintptr_t desc = (uintptr_t)mem;
	uintptr_t avail = desc + 16u * num;
	/* The used ring on its own page: a device must not assume the rings are adjacent. */
	uintptr_t used = (avail + 6u + 2u * num + 4095u) & ~(uintptr_t)4095u;
	memset(mem, 0, used + 6u + 8u * num - desc);
	q->index = index;
	q->num = num;
	q->desc = (volatile struct virtq_desc *)desc;
	q->avail = (volatile struct virtq_avail *)avail;
	q->used = (volatile struct virtq_used *)used;
	q->avail_idx = 0;
	q->last_used = 0;
	mmio_w32(d, VMMIO_QUEUE_NUM, num);
	mmio_w32(d, VMMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	mmio_w32(d, VMMIO_QUEUE_DESC_HIGH, 0);
	mmio_w32(d, VMMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	mmio_w32(d, VMMIO_QUEUE_DRIVER_HIGH, 0);
	mmio_w32(d, VMMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	mmio_w32(d, VMMIO_QUEUE_DEVICE_HIGH, 0);
	mmio_w32(d, VMMIO_QUEUE_READY, 1);
	return 0;
}

void vmmio_driver_ok(const struct vmmio_dev *d)
{
	uint32_t st = mmio_r32(d, VMMIO_STATUS);
	mmio_w32(d, VMMIO_STATUS, st | VIRTIO_STATUS_DRIVER_OK);
}

void vq_kick(const struct vmmio_dev *d, struct vq *q)
{
	vq_barrier();
	if (q->avail->idx == q->avail_idx)
		return;
	q->avail->idx = q->avail_idx;
	vq_mb();
	if (!(q->used->flags & VIRTQ_USED_F_NO_NOTIFY))
		mmio_w32(d, VMMIO_QUEUE_NOTIFY, q->index);
}

uint32_t vmmio_ack_interrupt(const struct vmmio_dev *d)
{
	uint32_t s = mmio_r32(d, VMMIO_INTERRUPT_STATUS);
	if (s)
		mmio_w32(d, VMMIO_INTERRUPT_ACK, s);
	return s;
}
