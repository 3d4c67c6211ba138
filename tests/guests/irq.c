/*
 * Interrupts for the device-driver guests, so they sleep in `sti; hlt`
 * instead of spinning: an IDT (32- or 64-bit gates), the 8259s masked, the
 * LAPIC on with a periodic timer tick, and one IOAPIC pin (the device's GSI)
 * routed edge-triggered to the boot CPU. Any exception ends the run with
 * debug-exit 4 after printing its vector.
 *
 * The KVM of the machines vmkit is built on cannot emulate IRET in 32-bit
 * protected mode (KVM_INTERNAL_ERROR_EMULATION at the handler's `iret`), so
 * there interrupt-driven tests use the 64-bit guest; the 32-bit build is
 * still right and runs under QEMU (tests/vmm/net_guest_qemu_test.ts).
 */
#include "virtio_mmio.h"

#define LAPIC_BASE 0xfee00000UL
#define LAPIC_EOI 0x0b0
#define LAPIC_SVR 0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0
#define LVT_MASKED (1u << 16)
#define LVT_PERIODIC (1u << 17)
#define IOAPIC_BASE 0xfec00000UL
#define IRQ_VECTOR_TIMER 0x30
#define IRQ_VECTOR_DEVICE 0x31
#define IRQ_VECTOR_SPURIOUS 0xff

volatile uint32_t irq_count;

struct interrupt_frame;

#ifdef __x86_64__
typedef unsigned long long uword;
struct idt_gate {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t zero;
};
#else
typedef unsigned int uword;
struct idt_gate {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t zero;
	uint8_t type;
	uint16_t off_hi;
};
#endif

static struct idt_gate idt[256] __attribute__((aligned(16)));

static inline void lapic_w(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(LAPIC_BASE + reg) = v;
}

static void ioapic_w(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)IOAPIC_BASE = reg;
	*(volatile uint32_t *)(IOAPIC_BASE + 0x10) = v;
}

__attribute__((interrupt)) static void on_irq(struct interrupt_frame *f)
{
	(void)f;
	irq_count++;
	lapic_w(LAPIC_EOI, 0);
}

__attribute__((interrupt)) static void on_spurious(struct interrupt_frame *f)
{
	(void)f;
}

/* An exception: say which and stop (the handler never returns, so error codes do not matter). */
#define EXC(n)                                                                      \
	__attribute__((interrupt)) static void on_exc##n(struct interrupt_frame *f)  \
	{                                                                           \
		(void)f;                                                            \
		struct line l = {.len = 0};                                         \
		add_str(&l, "exception ");                                          \
		add_dec(&l, n);                                                     \
		emit(&l);                                                           \
		debug_exit(4);                                                      \
	}
EXC(0) EXC(1) EXC(2) EXC(3) EXC(4) EXC(5) EXC(6) EXC(7) EXC(8) EXC(9) EXC(10) EXC(11) EXC(12)
EXC(13) EXC(14) EXC(15) EXC(16) EXC(17) EXC(18) EXC(19)

static void set_gate(unsigned v, void (*fn)(struct interrupt_frame *))
{
	uword off = (uword)(uintptr_t)fn;
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	struct idt_gate *g = &idt[v];
	g->off_lo = (uint16_t)off;
	g->sel = cs;
	g->type = 0x8e; /* present, ring 0, interrupt gate */
#ifdef __x86_64__
	g->ist = 0;
	g->off_mid = (uint16_t)(off >> 16);
	g->off_hi = (uint32_t)(off >> 32);
	g->zero = 0;
#else
	g->zero = 0;
	g->off_hi = (uint16_t)(off >> 16);
#endif
}

void irq_init(uint32_t gsi, uint32_t tick_ms)
{
	static void (*const exc[20])(struct interrupt_frame *) = {
		on_exc0,  on_exc1,  on_exc2,  on_exc3,  on_exc4,  on_exc5,  on_exc6,
		on_exc7,  on_exc8,  on_exc9,  on_exc10, on_exc11, on_exc12, on_exc13,
		on_exc14, on_exc15, on_exc16, on_exc17, on_exc18, on_exc19,
	};
	for (unsigned v = 0; v < 20; v++)
		set_gate(v, exc[v]);
	for (unsigned v = 32; v < 255; v++)
		set_gate(v, on_irq);
	set_gate(IRQ_VECTOR_SPURIOUS, on_spurious);
	struct {
		uint16_t limit;
		uword base;
	} __attribute__((packed)) idtr = {sizeof(idt) - 1, (uword)(uintptr_t)idt};
	__asm__ volatile("lidt %0" : : "m"(idtr));

	outb(0x21, 0xff); /* both 8259s fully masked: the IOAPIC delivers */
	outb(0xa1, 0xff);

	lapic_w(LAPIC_SVR, 0x100 | IRQ_VECTOR_SPURIOUS);
	lapic_w(LAPIC_LVT_LINT0, LVT_MASKED);
	lapic_w(LAPIC_LVT_LINT1, LVT_MASKED);
	/* KVM's LAPIC counts at 1 GHz; divide by 16 gives 62500 counts per ms. */
	lapic_w(LAPIC_TIMER_DIV, 0x3);
	lapic_w(LAPIC_LVT_TIMER, LVT_PERIODIC | IRQ_VECTOR_TIMER);
	lapic_w(LAPIC_TIMER_INIT, tick_ms * 62500u);

	if (gsi < 24) {
		ioapic_w(0x11 + 2 * gsi, 0); /* destination: APIC id 0 */
		ioapic_w(0x10 + 2 * gsi, IRQ_VECTOR_DEVICE); /* fixed, physical, high, edge, unmasked */
	}
}

void irq_wait(void)
{
	__asm__ volatile("sti; hlt; cli" : : : "memory");
}
