/*
 * The shared core of the vmkit test guests. Behaviour is chosen by the
 * kernel command line (`mode=...`), so one binary serves every test:
 *
 *   mode=info     cmdline=<...>, each memory map entry "mem <start> <end> <type>",
 *                 "initrd <addr> <size> sum <sum>" if there is one; powers off
 *   mode=echo     echoes each COM1 line as "echo: <line>" until "quit"
 *   mode=spin     "tick N" every 200000 iterations, forever
 *   mode=exit:N   writes N to the debug-exit port 0xf4
 *   mode=reset    writes 0xFE to the i8042 command port 0x64
 *   mode=triple   zero-limit IDT + int3: triple fault
 *   mode=pio:N    N writes to port 0x80, then debug-exit 0
 *   mode=smp:N    starts the APs by INIT-SIPI-SIPI, waits for N CPUs, "smp ok N"
 *   mode=kbd      "kbd ready", then prints the first 4 i8042 keyboard bytes as
 *                 "kbd XX XX XX XX"; on Ctrl-Alt-Del (set 1 or set 2 make codes)
 *                 prints "ctrl-alt-del" and resets through the i8042, as Linux does
 *   mode=demo     a tour: memory map, command line, CPU vendor, a computation
 *   mode=net      virtio-net driver answering ARP and ICMP echo (virtio_net.c)
 *   mode=seq:N    "seq ready", then forever writes sequence numbers over N pages
 *                 from 16 MiB: number s goes to page s%N, word (s/N)%1024
 *   mode=outseq, inseq, tsc:MIB:PAGES   checkpoint test and bench modes (ckpt.c)
 *   mode=acpi     finds the RSDP (boot pointer and BIOS-area scan), walks XSDT, FADT,
 *                 MADT and DSDT checking checksums (acpi.c); powers off if all is well
 *   mode=vmgenid  prints the VM generation id again at each GED interrupt (acpi.c)
 *   mode=blk      drives the virtio-blk device named by virtio_mmio.device= (virtio_blk.c),
 *                 then powers off
 *
 * Without mode= the guest runs DEFAULT_MODE (info, or demo for demo.elf).
 */
#include "guest.h"

#ifndef DEFAULT_MODE
#define DEFAULT_MODE "info"
#endif

#define COM1 0x3f8
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20
#define DEBUG_EXIT_PORT 0xf4
#define I8042_CMD 0x64
#define LAPIC_BASE 0xfee00000UL
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_BUSY (1u << 12)
#define ICR_INIT_ALL_BUT_SELF 0x000c4500u
#define ICR_SIPI_ALL_BUT_SELF 0x000c4600u

void *memset(void *d, int c, size_t n)
{
	unsigned char *p = d;
	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *p = d;
	const unsigned char *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

/* ---- serial (polled 16550A) with a spinlock so CPUs do not interleave ---- */

static volatile uint32_t serial_lock;

static void lock(volatile uint32_t *l)
{
	uint32_t one = 1;
	for (;;) {
		uint32_t v = one;
		__asm__ volatile("xchgl %0, %1" : "+r"(v), "+m"(*l) : : "memory");
		if (v == 0)
			return;
		while (*l)
			__asm__ volatile("pause");
	}
}

static void unlock(volatile uint32_t *l)
{
	__asm__ volatile("" : : : "memory");
	*l = 0;
}

static void putc_serial(char c)
{
	while (!(inb(COM1 + 5) & LSR_THR_EMPTY))
		__asm__ volatile("pause");
	outb(COM1, (uint8_t)c);
}

/* Unlocked: callers hold serial_lock or are the only CPU. */
static void put_raw(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

void puts_serial(const char *s)
{
	lock(&serial_lock);
	put_raw(s);
	unlock(&serial_lock);
}

static char getc_serial(void)
{
	while (!(inb(COM1 + 5) & LSR_DATA_READY))
		__asm__ volatile("pause");
	return (char)inb(COM1);
}

int poll_serial(void)
{
	if (!(inb(COM1 + 5) & LSR_DATA_READY))
		return -1;
	return (uint8_t)inb(COM1);
}

/* ---- formatting into a line buffer ---- */

void add_str(struct line *l, const char *s)
{
	while (*s && l->len < sizeof(l->buf) - 1)
		l->buf[l->len++] = *s++;
	l->buf[l->len] = 0;
}

void add_hex(struct line *l, uint64_t v)
{
	char tmp[19];
	int i = 18;
	tmp[i] = 0;
	do {
		tmp[--i] = "0123456789abcdef"[v & 0xf];
		v >>= 4;
	} while (v);
	tmp[--i] = 'x';
	tmp[--i] = '0';
	add_str(l, tmp + i);
}

void add_dec(struct line *l, uint32_t v)
{
	char tmp[11];
	int i = 10;
	tmp[i] = 0;
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	add_str(l, tmp + i);
}

void emit(struct line *l)
{
	add_str(l, "\n");
	puts_serial(l->buf);
	l->len = 0;
	l->buf[0] = 0;
}

/* ---- command line ---- */

int starts_with(const char *s, const char *p)
{
	while (*p)
		if (*s++ != *p++)
			return 0;
	return 1;
}

/* Copies the value of `mode=` (up to a space) into out, or DEFAULT_MODE. */
static void find_mode(const char *cmd, char *out, unsigned cap)
{
	const char *src = DEFAULT_MODE;
	for (const char *p = cmd; *p; p++) {
		if ((p == cmd || p[-1] == ' ') && starts_with(p, "mode=")) {
			src = p + 5;
			break;
		}
	}
	unsigned i = 0;
	while (src[i] && src[i] != ' ' && i + 1 < cap) {
		out[i] = src[i];
		i++;
	}
	out[i] = 0;
}

uint32_t parse_dec(const char *s)
{
	uint32_t v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (uint32_t)(*s++ - '0');
	return v;
}

/* ---- ways to stop ---- */

void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

void debug_exit(uint8_t v)
{
	outb(DEBUG_EXIT_PORT, v);
	halt_forever();
}

void poweroff(void)
{
	outb(I8042_CMD, 0xfe);
	halt_forever();
}

static void __attribute__((noreturn)) triple_fault(void)
{
	struct {
		uint16_t limit;
		uintptr_t base;
	} __attribute__((packed)) idtr = {0, 0};
	__asm__ volatile("lidt %0; ud2" : : "m"(idtr));
	halt_forever();
}

/* ---- modes ---- */

static void print_info(const struct boot_info *bi)
{
	struct line l = {.len = 0};
	add_str(&l, "boot=");
	add_str(&l, bi->boot);
	emit(&l);
	add_str(&l, "cmdline=");
	add_str(&l, bi->cmdline);
	emit(&l);
	for (unsigned i = 0; i < bi->nmem; i++) {
		add_str(&l, "mem ");
		add_hex(&l, bi->mem[i].addr);
		add_str(&l, " ");
		add_hex(&l, bi->mem[i].addr + bi->mem[i].size);
		add_str(&l, " ");
		add_dec(&l, bi->mem[i].type);
		emit(&l);
	}
	if (bi->initrd_size) {
		uint32_t sum = 0;
		const uint8_t *p = (const uint8_t *)(uintptr_t)bi->initrd_addr;
		for (uint64_t i = 0; i < bi->initrd_size; i++)
			sum += p[i];
		add_str(&l, "initrd ");
		add_hex(&l, bi->initrd_addr);
		add_str(&l, " ");
		add_hex(&l, bi->initrd_size);
		add_str(&l, " sum ");
		add_hex(&l, sum);
		emit(&l);
	}
}

static void __attribute__((noreturn)) echo_loop(void)
{
	struct line in = {.len = 0};
	puts_serial("echo ready\n");
	for (;;) {
		char c = getc_serial();
		if (c == '\r')
			continue;
		if (c != '\n') {
			if (in.len < sizeof(in.buf) - 1)
				in.buf[in.len++] = c;
			continue;
		}
		in.buf[in.len] = 0;
		if (in.len == 4 && starts_with(in.buf, "quit")) {
			puts_serial("bye\n");
			poweroff();
		}
		struct line out = {.len = 0};
		add_str(&out, "echo: ");
		add_str(&out, in.buf);
		emit(&out);
		in.len = 0;
	}
}

static void __attribute__((noreturn)) spin(void)
{
	struct line l = {.len = 0};
	for (uint32_t tick = 0;; tick++) {
		add_str(&l, "tick ");
		add_dec(&l, tick);
		emit(&l);
		for (volatile uint32_t i = 0; i < 200000; i++)
			;
	}
}

/* Polls the i8042 for keyboard bytes (no IRQ needed), as a BIOS-less kernel's early driver would. */
static void __attribute__((noreturn)) kbd(void)
{
	static const uint8_t set1[4] = {0x1d, 0x38, 0xe0, 0x53};
	static const uint8_t set2[4] = {0x14, 0x11, 0xe0, 0x71};
	uint8_t got[4];
	struct line l = {.len = 0};
	puts_serial("kbd ready\n");
	for (unsigned n = 0; n < 4;) {
		if (inb(0x64) & 1)
			got[n++] = inb(0x60);
	}
	add_str(&l, "kbd");
	int is1 = 1, is2 = 1;
	for (unsigned i = 0; i < 4; i++) {
		static const char hex[] = "0123456789abcdef";
		char b[4] = {' ', hex[got[i] >> 4], hex[got[i] & 15], 0};
		add_str(&l, b);
		is1 &= got[i] == set1[i];
		is2 &= got[i] == set2[i];
	}
	emit(&l);
	if (is1 || is2) {
		puts_serial("ctrl-alt-del\n");
		poweroff();
	}
	debug_exit(4);
}

static void __attribute__((noreturn)) pio(uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		outb(0x80, (uint8_t)i);
	debug_exit(0);
}

/* ---- SMP ---- */

static volatile uint32_t cpus_up;

static inline void lapic_write(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(LAPIC_BASE + reg) = v;
}

static inline uint32_t lapic_read(uint32_t reg)
{
	return *(volatile uint32_t *)(LAPIC_BASE + reg);
}

static void lapic_ipi(uint32_t icr)
{
	lapic_write(LAPIC_ICR_HI, 0);
	lapic_write(LAPIC_ICR_LO, icr);
	for (uint32_t i = 0; i < 100000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		__asm__ volatile("pause");
}

static void delay(uint32_t n)
{
	for (volatile uint32_t i = 0; i < n; i++)
		;
}

static uint8_t rtc_seconds(void)
{
	outb(0x70, 0x00);
	return inb(0x71);
}

void ap_main(unsigned cpu)
{
	struct line l = {.len = 0};
	add_str(&l, "cpu ");
	add_dec(&l, cpu);
	add_str(&l, " up");
	emit(&l);
	/* Check in only after the line is out: the BSP powers off once all have. */
	uint32_t one = 1;
	__asm__ volatile("lock xaddl %0, %1" : "+r"(one), "+m"(cpus_up) : : "memory");
	halt_forever();
}

static void __attribute__((noreturn)) smp(uint32_t n)
{
	uintptr_t cr3;
	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	memcpy((void *)TRAMP_BASE, tramp_start, (size_t)(tramp_end - tramp_start));
	*(volatile uint32_t *)(TRAMP_BASE + (uintptr_t)(tramp_cr3 - tramp_start)) = (uint32_t)cr3;
	cpus_up = 1; /* the BSP */
	puts_serial("cpu 0 up\n");
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x1ff);
	lapic_ipi(ICR_INIT_ALL_BUT_SELF);
	delay(10000);
	lapic_ipi(ICR_SIPI_ALL_BUT_SELF | (TRAMP_BASE >> 12));
	delay(2000);
	lapic_ipi(ICR_SIPI_ALL_BUT_SELF | (TRAMP_BASE >> 12));
	/* Wait for the APs: about 3 s of RTC time, or a loop cap if the RTC stands still. */
	uint8_t last = rtc_seconds();
	uint32_t changes = 0;
	for (uint32_t spins = 0; cpus_up < n; spins++) {
		uint8_t now = rtc_seconds();
		if (now != last) {
			last = now;
			changes++;
		}
		if (changes > 3 || spins > 20000000) {
			puts_serial("smp timeout\n");
			debug_exit(3);
		}
		__asm__ volatile("pause");
	}
	struct line l = {.len = 0};
	add_str(&l, "smp ok ");
	add_dec(&l, n);
	emit(&l);
	poweroff();
}

/* ---- sequence writer (checkpoint tests) ---- */

#define SEQ_BASE 0x1000000u

static void __attribute__((noreturn)) seq_writer(uint32_t pages)
{
	volatile uint32_t *base = (volatile uint32_t *)(uintptr_t)SEQ_BASE;
	if (pages == 0)
		pages = 1;
	puts_serial("seq ready\n");
	for (uint32_t s = 1;; s++)
		base[(s % pages) * 1024u + (s / pages) % 1024u] = s;
}

/* ---- demo ---- */

static void __attribute__((noreturn)) demo(const struct boot_info *bi)
{
	struct line l = {.len = 0};
	puts_serial("vmkit demo guest: hello from inside the VM\n");
	add_str(&l, "booted by the ");
	add_str(&l, bi->boot);
	add_str(&l, " protocol; my command line is \"");
	add_str(&l, bi->cmdline);
	add_str(&l, "\"");
	emit(&l);
	puts_serial("my memory map:\n");
	uint64_t ram = 0;
	for (unsigned i = 0; i < bi->nmem; i++) {
		add_str(&l, "  ");
		add_hex(&l, bi->mem[i].addr);
		add_str(&l, " - ");
		add_hex(&l, bi->mem[i].addr + bi->mem[i].size);
		add_str(&l, bi->mem[i].type == 1 ? "  RAM" : "  reserved");
		emit(&l);
		if (bi->mem[i].type == 1)
			ram += bi->mem[i].size;
	}
	add_str(&l, "usable RAM: ");
	add_dec(&l, (uint32_t)(ram >> 20));
	add_str(&l, " MiB");
	emit(&l);
	uint32_t a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
	char vendor[13];
	memcpy(vendor, &b, 4);
	memcpy(vendor + 4, &d, 4);
	memcpy(vendor + 8, &c, 4);
	vendor[12] = 0;
	add_str(&l, "CPU vendor (CPUID 0): ");
	add_str(&l, vendor);
	emit(&l);
	/* A small computation: the primes below 5000, by a sieve. */
	static uint8_t composite[5000];
	uint32_t primes = 0, sum = 0;
	for (uint32_t i = 2; i < 5000; i++) {
		if (composite[i])
			continue;
		primes++;
		sum += i;
		for (uint32_t j = i * i; j < 5000; j += i)
			composite[j] = 1;
	}
	add_str(&l, "primes below 5000: ");
	add_dec(&l, primes);
	add_str(&l, " of them, summing to ");
	add_dec(&l, sum);
	emit(&l);
	for (uint32_t i = 1; i <= 5; i++) {
		add_str(&l, "counting: ");
		add_dec(&l, i);
		emit(&l);
	}
	puts_serial("powering off through the i8042 (0xFE to port 0x64)\n");
	poweroff();
}

void guest_main(const struct boot_info *bi)
{
	char mode[32];
	find_mode(bi->cmdline, mode, sizeof(mode));
	outb(COM1 + 1, 0x00); /* no UART interrupts: we poll */
	outb(COM1 + 3, 0x03); /* 8N1 */
	if (starts_with(mode, "info") && mode[4] == 0) {
		print_info(bi);
		poweroff();
	}
	if (starts_with(mode, "echo"))
		echo_loop();
	if (starts_with(mode, "spin"))
		spin();
	if (starts_with(mode, "exit:"))
		debug_exit((uint8_t)parse_dec(mode + 5));
	if (starts_with(mode, "reset"))
		poweroff();
	if (starts_with(mode, "triple"))
		triple_fault();
	if (starts_with(mode, "kbd") && mode[3] == 0)
		kbd();
	if (starts_with(mode, "pio:"))
		pio(parse_dec(mode + 4));
	if (starts_with(mode, "smp:"))
		smp(parse_dec(mode + 4));
	if (starts_with(mode, "demo"))
		demo(bi);
	if (starts_with(mode, "net") && mode[3] == 0)
		net_main(bi);
	if (starts_with(mode, "seq:"))
		seq_writer(parse_dec(mode + 4));
	if (starts_with(mode, "vmgenid"))
		vmgenid_main();
	if (starts_with(mode, "outseq"))
		outseq_main();
	if (starts_with(mode, "inseq"))
		inseq_main();
	if (starts_with(mode, "tsc:"))
		tsc_main(bi, mode + 4);
	if (starts_with(mode, "acpi")) {
		if (acpi_check(bi) == 0)
			poweroff();
		debug_exit(3);
	}
	if (starts_with(mode, "blk")) {
		virtio_blk_test(bi->cmdline);
		poweroff();
	}
	struct line l = {.len = 0};
	add_str(&l, "unknown mode: ");
	add_str(&l, mode);
	emit(&l);
	debug_exit(2);
}
