/**
 * The guest's memory map, as the Linux zero page (`e820_table`) and PVH
 * (`hvm_memmap_table_entry`) both describe it.
 *
 * @module
 */

import type { MemoryRegion } from "../guest_memory.ts";
import { BootError, hex } from "./errors.ts";
import { EBDA_START, HIGH_MEMORY } from "./layout.ts";

/** e820 type of usable RAM. */
export const E820_RAM = 1;
/** e820 type of reserved memory. */
export const E820_RESERVED = 2;
/** The most entries the zero page holds (`E820_MAX_ENTRIES_ZEROPAGE`). */
export const E820_MAX_ENTRIES = 128;

/** One memory map entry: `[addr, addr + size)` of `type`. */
export interface E820Entry {
  /** Guest-physical start. */
  readonly addr: number;
  /** Length in bytes. */
  readonly size: number;
  /** {@link E820_RAM} or {@link E820_RESERVED}. */
  readonly type: number;
}

/**
 * The memory map of `regions`: each region is RAM, except that below 1 MiB
 * only `[0, 0x9fc00)` is RAM and `[0x9fc00, 0x100000)` (EBDA, VGA, BIOS) is
 * reserved. Throws {@link BootError} when the regions do not start at 0 or
 * need more than {@link E820_MAX_ENTRIES} entries.
 */
export function e820FromRegions(regions: readonly MemoryRegion[]): E820Entry[] {
  const first = regions[0];
  if (first === undefined || first.guestAddr !== 0 || first.size < HIGH_MEMORY) {
    throw new BootError(
      "guest memory too small: the boot loaders need RAM from address 0 to at least 1 MiB; " +
        "give the machine more memory",
    );
  }
  const out: E820Entry[] = [];
  for (const r of regions) {
    const start = r.guestAddr;
    const end = r.guestAddr + r.size;
    if (start < EBDA_START) {
      out.push({ addr: start, size: Math.min(end, EBDA_START) - start, type: E820_RAM });
    }
    if (start < HIGH_MEMORY) {
      const lo = Math.max(start, EBDA_START);
      out.push({ addr: lo, size: HIGH_MEMORY - lo, type: E820_RESERVED });
    }
    const lo = Math.max(start, HIGH_MEMORY);
    if (end > lo) out.push({ addr: lo, size: end - lo, type: E820_RAM });
  }
  if (out.length > E820_MAX_ENTRIES) {
    throw new BootError(
      `guest memory has ${regions.length} regions, needing ${out.length} memory map entries; ` +
        `the boot protocols hold at most ${E820_MAX_ENTRIES} (first region at ${
          hex(first.guestAddr)
        })`,
    );
  }
  return out;
}
