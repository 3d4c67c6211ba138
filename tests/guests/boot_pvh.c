/*
 * PVH side of the 32-bit guest: reads struct hvm_start_info (Xen
 * start_info.h) that EBX pointed at, and hands the core a boot_info.
 */
#include "guest.h"

#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
	uint32_t magic;
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;
	uint32_t memmap_entries;
	uint32_t reserved;
};

struct hvm_modlist_entry {
	uint64_t paddr;
	uint64_t size;
	uint64_t cmdline_paddr;
	uint64_t reserved;
};

struct hvm_memmap_table_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
};

static struct boot_info bi;

void pvh_main(const struct hvm_start_info *si) __attribute__((noreturn));

void pvh_main(const struct hvm_start_info *si)
{
	if (si->magic != HVM_START_MAGIC) {
		puts_serial("pvh: bad hvm_start_info magic\n");
		outb(0xf4, 2);
		for (;;)
			__asm__ volatile("cli; hlt");
	}
	bi.boot = "pvh";
	bi.cmdline = si->cmdline_paddr ? (const char *)(uintptr_t)si->cmdline_paddr : "";
	bi.rsdp = si->rsdp_paddr;
	if (si->version >= 1) {
		const struct hvm_memmap_table_entry *m =
			(const struct hvm_memmap_table_entry *)(uintptr_t)si->memmap_paddr;
		for (uint32_t i = 0; i < si->memmap_entries && bi.nmem < MAX_MEM; i++) {
			bi.mem[bi.nmem].addr = m[i].addr;
			bi.mem[bi.nmem].size = m[i].size;
			bi.mem[bi.nmem].type = m[i].type;
			bi.nmem++;
		}
	}
	if (si->nr_modules > 0 && si->modlist_paddr) {
		const struct hvm_modlist_entry *mod =
			(const struct hvm_modlist_entry *)(uintptr_t)si->modlist_paddr;
		bi.initrd_addr = mod->paddr;
		bi.initrd_size = mod->size;
	}
	guest_main(&bi);
}
