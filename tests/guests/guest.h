/*
 * Shared declarations of the vmkit test guests: one C core (core.c) built
 * as a 32-bit PVH guest and as a 64-bit Linux-boot-protocol guest.
 */
#ifndef VMKIT_GUEST_H
#define VMKIT_GUEST_H

#define MAX_MEM 32
#define MAX_CPUS 16
#define STACK_SIZE 4096
/* Where the BSP copies the real-mode AP trampoline (SIPI vector 0x70). */
#define TRAMP_BASE 0x70000

#ifndef __ASSEMBLER__
#include <stdint.h>
#include <stddef.h>

/* One memory map entry, as both e820 and hvm_memmap describe it. */
struct mem_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
};

/* What the entry code found out about how it was booted. */
struct boot_info {
	const char *boot;    /* "pvh", "linux64" or "bzimage" */
	const char *cmdline; /* NUL-terminated, or "" */
	struct mem_entry mem[MAX_MEM];
	unsigned nmem;
	uint64_t initrd_addr;
	uint64_t initrd_size;
	uint64_t rsdp; /* ACPI RSDP address the loader passed, or 0 */
};

/* A line of serial output being formatted. */
struct line {
	char buf[160];
	unsigned len;
};

/* core.c */
void guest_main(const struct boot_info *bi) __attribute__((noreturn));
void ap_main(unsigned cpu) __attribute__((noreturn));
void puts_serial(const char *s);
/* The next COM1 byte if one is waiting, else -1 (never blocks). */
int poll_serial(void);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void add_str(struct line *l, const char *s);
void add_hex(struct line *l, uint64_t v);
void add_dec(struct line *l, uint32_t v);
void emit(struct line *l);
int starts_with(const char *s, const char *p);
uint32_t parse_dec(const char *s);
void halt_forever(void) __attribute__((noreturn));
void debug_exit(uint8_t v) __attribute__((noreturn));
void poweroff(void) __attribute__((noreturn));

/* acpi.c: walks the ACPI tables and prints what it finds; 0 when all are valid. */
int acpi_check(const struct boot_info *bi);
/* acpi.c: mode=vmgenid (prints the id at every GED interrupt; powers off after two). */
void vmgenid_main(void) __attribute__((noreturn));

/* virtio_net.c */
void net_main(const struct boot_info *bi) __attribute__((noreturn));

/* virtio_blk.c */
void virtio_blk_test(const char *cmdline);

/* ckpt.c: checkpoint test and bench modes (outseq, tsc:MIB:PAGES). */
void outseq_main(void) __attribute__((noreturn));
void inseq_main(void) __attribute__((noreturn));
void tsc_main(const struct boot_info *bi, const char *args) __attribute__((noreturn));

/* The real-mode trampoline (trampoline.S), copied to TRAMP_BASE. */
extern const char tramp_start[], tramp_end[], tramp_cr3[];

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

#endif /* __ASSEMBLER__ */

#endif
