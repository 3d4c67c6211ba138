/*
 * Checkpoint test and bench modes of the guest:
 *
 *   mode=outseq  writes 1, 2, 3, ... (32-bit) to port 0x510 forever (the test
 *                device there counts a value written twice: a vCPU saved
 *                between its I/O exit and KVM's completion of it repeats the
 *                OUT when restored).
 *   mode=inseq   reads port 0x510 forever (the test device answers 1, 2, 3, ...)
 *                and debug-exits 3 when a value is not the last plus one (a
 *                vCPU saved before KVM completed its IN reads again when
 *                restored, and skips a value).
 *   mode=tsc:MIB:PAGES
 *                touches every page of RAM from 16 MiB up to MIB MiB (writes
 *                a non-zero word, so checkpoints really hold the memory; RAM
 *                above 4 GiB through a window of IA-32e paging in the PVH
 *                guest), prints
 *                "touched N", then writes sequence numbers over PAGES pages
 *                from 16 MiB, reading the TSC between writes and keeping the
 *                largest gap. Every 4096 writes it polls COM1: 'r' resets the
 *                largest gap, 'g' prints "gap G tsc T loops L" (TSC ticks).
 */
#include "guest.h"

#define SEQ_PORT 0x510
#define TOUCH_FROM 0x1000000ull
#define SEQ_BASE 0x1000000u
#define POLL_EVERY 4096u
#define E820_RAM 1

static inline uint32_t rdtsc_lo(uint32_t *hi)
{
	uint32_t lo, h;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(h));
	*hi = h;
	return lo;
}

static inline uint64_t rdtsc64(void)
{
	uint32_t hi;
	uint32_t lo = rdtsc_lo(&hi);
	return ((uint64_t)hi << 32) | lo;
}

void inseq_main(void)
{
	puts_serial("inseq ready\n");
	__asm__ volatile("xorl %%ebx, %%ebx\n"
			 "1:\tinl %%dx, %%eax\n\t"
			 "leal 1(%%ebx), %%ecx\n\t"
			 "cmpl %%ecx, %%eax\n\t"
			 "jne 2f\n\t"
			 "movl %%eax, %%ebx\n\t"
			 "jmp 1b\n"
			 "2:"
			 :
			 : "d"((uint16_t)SEQ_PORT)
			 : "eax", "ebx", "ecx", "memory", "cc");
	debug_exit(3);
}

void outseq_main(void)
{
	puts_serial("outseq ready\n");
	for (uint32_t v = 1;; v++)
		__asm__ volatile("outl %0, %w1" : : "a"(v), "Nd"((uint16_t)SEQ_PORT));
}

#if defined(__i386__)
/*
 * IA-32e paging in compatibility mode (the code stays 32-bit): 2 MiB pages,
 * the low 3 GiB identity-mapped, the fourth GiB a window moved over RAM
 * above 4 GiB. (Legacy 32-bit and PAE paging cannot be turned on in this
 * host's emulator; the switch to long mode, as the AP trampoline does it,
 * works.)
 */
static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd[4][512] __attribute__((aligned(4096)));
#define PTE_PW 0x3ull  /* present, writable */
#define PDE_2M 0x83ull /* present, writable, 2 MiB page */
#define WINDOW 0xc0000000u

static void paging_on(void)
{
	for (unsigned i = 0; i < 4; i++) {
		for (unsigned j = 0; j < 512; j++)
			pd[i][j] = ((uint64_t)(i * 512 + j) << 21) | PDE_2M;
		pdpt[i] = (uint32_t)(uintptr_t)pd[i] | PTE_PW;
	}
	pml4[0] = (uint32_t)(uintptr_t)pdpt | PTE_PW;
	uint32_t cr4, cr0, lo, hi;
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	__asm__ volatile("mov %0, %%cr4" : : "r"(cr4 | 0x20u)); /* PAE */
	__asm__ volatile("mov %0, %%cr3" : : "r"((uint32_t)(uintptr_t)pml4));
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0xc0000080u));
	__asm__ volatile("wrmsr" : : "a"(lo | 0x100u), "d"(hi), "c"(0xc0000080u)); /* EFER.LME */
	__asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
	__asm__ volatile("mov %0, %%cr0" : : "r"(cr0 | 0x80000000u) : "memory");
}

/* Maps physical [base, base + 1 GiB) at WINDOW (base 2 MiB-aligned). */
static void window_at(uint64_t base)
{
	for (unsigned j = 0; j < 512; j++)
		pd[3][j] = (base + ((uint64_t)j << 21)) | PDE_2M;
	__asm__ volatile("mov %0, %%cr3" : : "r"((uint32_t)(uintptr_t)pml4) : "memory");
}

static void touch_range(uint64_t from, uint64_t to)
{
	uint64_t a = from;
	while (a < to) {
		if (a + 4096 <= WINDOW) { /* identity-mapped */
			*(volatile uint32_t *)(uintptr_t)a = (uint32_t)(a >> 12) | 1u;
			a += 4096;
			continue;
		}
		uint64_t base = a & ~((1ull << 30) - 1);
		window_at(base);
		uint64_t end = base + (1ull << 30) < to ? base + (1ull << 30) : to;
		for (; a < end; a += 4096)
			*(volatile uint32_t *)(uintptr_t)(WINDOW + (uint32_t)(a - base)) =
			    (uint32_t)(a >> 12) | 1u;
	}
}
#else
static void paging_on(void) {}
static void touch_range(uint64_t from, uint64_t to)
{
	for (uint64_t a = from; a < to && a < 0x40000000ull; a += 4096)
		*(volatile uint32_t *)(uintptr_t)a = (uint32_t)(a >> 12) | 1u;
}
#endif

void tsc_main(const struct boot_info *bi, const char *args)
{
	uint32_t mib = parse_dec(args);
	while (*args >= '0' && *args <= '9')
		args++;
	uint32_t pages = *args == ':' ? parse_dec(args + 1) : 256;
	if (pages == 0)
		pages = 1;
	/* RAM pages below `mib` MiB of RAM (the gap below 4 GiB holds none). */
	uint64_t want = (uint64_t)mib << 20, seen = 0;
	paging_on();
	for (unsigned i = 0; i < bi->nmem && seen < want; i++) {
		const struct mem_entry *e = &bi->mem[i];
		if (e->type != E820_RAM)
			continue;
		uint64_t from = e->addr, to = e->addr + e->size;
		if (to - from > want - seen)
			to = from + (want - seen);
		seen += to - from;
		if (from < TOUCH_FROM)
			from = TOUCH_FROM;
		if (from < to)
			touch_range(from, to);
	}
	struct line l = {.len = 0};
	add_str(&l, "touched ");
	add_dec(&l, (uint32_t)(seen >> 20));
	emit(&l);

	volatile uint32_t *base = (volatile uint32_t *)(uintptr_t)SEQ_BASE;
	uint64_t last = rdtsc64(), max = 0;
	uint32_t loops = 0;
	for (uint32_t s = 1;; s++) {
		base[(s % pages) * 1024u + (s / pages) % 1024u] = s;
		uint64_t t = rdtsc64();
		if (t - last > max)
			max = t - last;
		last = t;
		if (++loops % POLL_EVERY != 0)
			continue;
		int c = poll_serial();
		if (c == 'r') {
			max = 0;
		} else if (c == 'g') {
			l.len = 0;
			add_str(&l, "gap ");
			add_hex(&l, max);
			add_str(&l, " tsc ");
			add_hex(&l, t);
			add_str(&l, " loops ");
			add_dec(&l, loops);
			emit(&l);
			last = rdtsc64(); /* printing is not a gap the VMM made */
		}
	}
}
