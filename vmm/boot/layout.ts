/**
 * Where the boot loaders put their data in low guest memory. Kernels must be
 * loaded above {@link BOOT_DATA_END}; the loaders refuse images that overlap it.
 *
 * @module
 */

/** The GDT the boot vCPU starts with (5 descriptors, see `gdt.ts`). */
export const GDT_ADDR = 0x500;
/** PVH: `struct hvm_start_info` (EBX points here). */
export const START_INFO_ADDR = 0x6000;
/** PVH: the module list (`hvm_modlist_entry`, one entry: the initrd). */
export const MODLIST_ADDR = 0x6040;
/** PVH: the memory map (`hvm_memmap_table_entry[]`). */
export const MEMMAP_ADDR = 0x6080;
/** Linux boot protocol: the zero page (`struct boot_params`; RSI points here). */
export const ZERO_PAGE_ADDR = 0x7000;
/** Top of a small boot stack (one page below the page tables), handed in RSP. */
export const BOOT_STACK_TOP = 0x9000;
/** Long mode: the PML4 of the identity map. */
export const PML4_ADDR = 0x9000;
/** Long mode: the PDPT of the identity map. */
export const PDPT_ADDR = 0xa000;
/** Long mode: the first of the page directories (2 MiB pages) of the identity map. */
export const PD_ADDR = 0xb000;
/** GiB covered by the identity map (one page directory each). */
export const IDENTITY_MAP_GIB = 4;
/** The kernel command line, NUL-terminated. */
export const CMDLINE_ADDR = 0x2_0000;
/** Bytes reserved for the command line, including its NUL. */
export const CMDLINE_MAX = 0x1_0000;
/** End of the loader's boot data area `[0, BOOT_DATA_END)`. */
export const BOOT_DATA_END = CMDLINE_ADDR + CMDLINE_MAX;
/** End of conventional RAM below the EBDA; `[EBDA_START, HIGH_MEMORY)` is reserved. */
export const EBDA_START = 0x9_fc00;
/** Start of high memory (1 MiB). */
export const HIGH_MEMORY = 0x10_0000;

/**
 * True when `[start, start + len)` overlaps the reserved BIOS area
 * `[EBDA_START, HIGH_MEMORY)`, which holds the ACPI tables: no kernel may be
 * loaded there.
 */
export function overlapsBiosArea(start: number, len: number): boolean {
  return start < HIGH_MEMORY && start + len > EBDA_START;
}
/** The 4 GiB line: 32-bit entry protocols need the initrd and boot data below it. */
export const FOUR_GIB = 0x1_0000_0000;
/** Page size used to align the initrd. */
export const PAGE_SIZE = 0x1000;
