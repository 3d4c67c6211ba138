/*
 * A guest-side virtio-mmio (version 2, virtio 1.x modern) driver core, from
 * the virtio 1.2 spec: sections 2.7 (split virtqueues), 3.1 (device
 * initialization) and 4.2 (virtio over MMIO). Device drivers (virtio_net.c)
 * build on it; nothing here knows a device type.
 */
#ifndef VMKIT_VIRTIO_MMIO_H
#define VMKIT_VIRTIO_MMIO_H

#include "guest.h"

/* MMIO register offsets (4.2.2). */
#define VMMIO_MAGIC 0x000
#define VMMIO_VERSION 0x004
#define VMMIO_DEVICE_ID 0x008
#define VMMIO_DEVICE_FEATURES 0x010
#define VMMIO_DEVICE_FEATURES_SEL 0x014
#define VMMIO_DRIVER_FEATURES 0x020
#define VMMIO_DRIVER_FEATURES_SEL 0x024
#define VMMIO_QUEUE_SEL 0x030
#define VMMIO_QUEUE_NUM_MAX 0x034
#define VMMIO_QUEUE_NUM 0x038
#define VMMIO_QUEUE_READY 0x044
#define VMMIO_QUEUE_NOTIFY 0x050
#define VMMIO_INTERRUPT_STATUS 0x060
#define VMMIO_INTERRUPT_ACK 0x064
#define VMMIO_STATUS 0x070
#define VMMIO_QUEUE_DESC_LOW 0x080
#define VMMIO_QUEUE_DESC_HIGH 0x084
#define VMMIO_QUEUE_DRIVER_LOW 0x090
#define VMMIO_QUEUE_DRIVER_HIGH 0x094
#define VMMIO_QUEUE_DEVICE_LOW 0x0a0
#define VMMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VMMIO_CONFIG_GENERATION 0x0fc
#define VMMIO_CONFIG 0x100

#define VMMIO_MAGIC_VALUE 0x74726976u /* "virt" */

/* Device status bits (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 1u
#define VIRTIO_STATUS_DRIVER 2u
#define VIRTIO_STATUS_DRIVER_OK 4u
#define VIRTIO_STATUS_FEATURES_OK 8u
#define VIRTIO_STATUS_NEEDS_RESET 64u
#define VIRTIO_STATUS_FAILED 128u

/* Reserved feature bits (6). */
#define VIRTIO_F_VERSION_1 32

/* Split virtqueue layout (2.7). */
#define VIRTQ_DESC_F_NEXT 1u
#define VIRTQ_DESC_F_WRITE 2u
#define VIRTQ_USED_F_NO_NOTIFY 1u

struct virtq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct virtq_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];
};

struct virtq_used_elem {
	uint32_t id;
	uint32_t len;
};

struct virtq_used {
	uint16_t flags;
	uint16_t idx;
	struct virtq_used_elem ring[];
};

/* One device found on the command line. */
struct vmmio_dev {
	uintptr_t base;
	uint32_t size;
	uint32_t irq;
	uint32_t device_id;
};

/* A driver's view of one split virtqueue. */
struct vq {
	unsigned index;
	unsigned num;
	volatile struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
	uint16_t avail_idx; /* next avail->idx to publish */
	uint16_t last_used; /* next used entry to consume */
};

/* Bytes a queue of `num` entries needs (descriptor table, avail, used, each aligned). */
#define VQ_BYTES(num) (16u * (num) + 4096u + 6u + 2u * (num) + 4096u + 6u + 8u * (num))

static inline uint32_t mmio_r32(const struct vmmio_dev *d, unsigned off)
{
	return *(volatile uint32_t *)(d->base + off);
}

static inline void mmio_w32(const struct vmmio_dev *d, unsigned off, uint32_t v)
{
	*(volatile uint32_t *)(d->base + off) = v;
}

static inline uint8_t mmio_r8(const struct vmmio_dev *d, unsigned off)
{
	return *(volatile uint8_t *)(d->base + off);
}

/* Compiler barrier: x86 keeps stores in order and loads in order (TSO). */
static inline void vq_barrier(void)
{
	__asm__ volatile("" : : : "memory");
}

/* Full barrier: the avail index store before the used->flags load. */
static inline void vq_mb(void)
{
	__asm__ volatile("mfence" : : : "memory");
}

/*
 * Finds the `nth` (0-based) `virtio_mmio.device=<size>@<base>:<irq>` entry
 * of `cmdline` whose device has `device_id`. Returns 0, or -1 if none.
 */
int vmmio_find(const char *cmdline, uint32_t device_id, unsigned nth, struct vmmio_dev *out);

/*
 * Resets the device and negotiates features: offers `wanted` ∩ device
 * features (VIRTIO_F_VERSION_1 is required). Returns 0 and the accepted set
 * in `*got`, or -1 (status FAILED set).
 */
int vmmio_negotiate(const struct vmmio_dev *d, uint64_t wanted, uint64_t *got);

/*
 * Sets up queue `index` with up to `num` entries (a power of two, capped by
 * QueueNumMax) in `mem` (4096-aligned, VQ_BYTES(num) long). Returns 0, or -1.
 */
int vmmio_queue(const struct vmmio_dev *d, unsigned index, unsigned num, void *mem,
		struct vq *q);

/* Sets DRIVER_OK. */
void vmmio_driver_ok(const struct vmmio_dev *d);

/* Adds descriptor chain `head` to the avail ring (not yet published). */
static inline void vq_push(struct vq *q, uint16_t head)
{
	q->avail->ring[q->avail_idx & (q->num - 1)] = head;
	q->avail_idx++;
}

/* Publishes pushed chains and notifies the device unless it asked not to. */
void vq_kick(const struct vmmio_dev *d, struct vq *q);

/* Entries the device has used and the driver not consumed yet. */
static inline uint16_t vq_used_pending(const struct vq *q)
{
	uint16_t idx = q->used->idx;
	vq_barrier();
	return (uint16_t)(idx - q->last_used);
}

/* The next used entry (call only when vq_used_pending() > 0). */
static inline struct virtq_used_elem vq_pop(struct vq *q)
{
	volatile struct virtq_used_elem *e = &q->used->ring[q->last_used & (q->num - 1)];
	struct virtq_used_elem out = {e->id, e->len};
	q->last_used++;
	return out;
}

/* Reads and acknowledges InterruptStatus; returns what it was. */
uint32_t vmmio_ack_interrupt(const struct vmmio_dev *d);

/* ---- interrupts (irq.c): LAPIC timer tick and one IOAPIC line, for `sti; hlt` waits ---- */

/*
 * Installs an IDT, masks the 8259s, enables the LAPIC with a periodic
 * timer of about `tick_ms`, and routes IOAPIC pin `gsi` (edge, active
 * high) to the boot CPU. Interrupts stay off until irq_wait().
 */
void irq_init(uint32_t gsi, uint32_t tick_ms);

/* Sleeps until an interrupt (the device's, or the timer tick). */
void irq_wait(void);

/* Interrupts taken so far (timer and device). */
extern volatile uint32_t irq_count;

#endif
