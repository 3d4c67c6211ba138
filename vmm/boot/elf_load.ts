/**
 * Copies an ELF kernel's PT_LOAD segments to their physical addresses.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import { type ElfImage, PT_LOAD } from "./elf.ts";
import { BootError, hex } from "./errors.ts";
import { guestWrite, guestZero, requireRam } from "./guest_access.ts";
import { BOOT_DATA_END, EBDA_START, HIGH_MEMORY, overlapsBiosArea } from "./layout.ts";

/** The physical range the loaded segments span. */
export interface LoadedRange {
  /** Lowest loaded address. */
  readonly start: number;
  /** End (exclusive) of the highest loaded segment. */
  readonly end: number;
}

/**
 * Checks every PT_LOAD segment against RAM and the boot data area, then
 * copies its file bytes to `p_paddr` and zeroes the rest up to `p_memsz`.
 * Nothing is written unless every segment fits.
 */
export function loadSegments(memory: GuestMemory, image: Uint8Array, elf: ElfImage): LoadedRange {
  const loads = elf.phdrs.filter((p) => p.type === PT_LOAD && p.memsz > 0);
  let start = Number.MAX_SAFE_INTEGER;
  let end = 0;
  for (const p of loads) {
    if (p.paddr < BOOT_DATA_END) {
      throw new BootError(
        `ELF segment ${p.index} at [${hex(p.paddr)}, ${hex(p.paddr + p.memsz)}) overlaps the ` +
          `loader's boot data area [0x0, ${hex(BOOT_DATA_END)}); link the kernel at 1 MiB or above`,
      );
    }
    if (overlapsBiosArea(p.paddr, p.memsz)) {
      throw new BootError(
        `ELF segment ${p.index} at [${hex(p.paddr)}, ${hex(p.paddr + p.memsz)}) overlaps the ` +
          `reserved BIOS area [${hex(EBDA_START)}, ${hex(HIGH_MEMORY)}) that holds the ACPI ` +
          "tables; link the kernel at 1 MiB or above",
      );
    }
    requireRam(memory, p.paddr, p.memsz, `ELF segment ${p.index}`);
    start = Math.min(start, p.paddr);
    end = Math.max(end, p.paddr + p.memsz);
  }
  for (const p of loads) {
    guestWrite(
      memory,
      p.paddr,
      image.subarray(p.offset, p.offset + p.filesz),
      `ELF segment ${p.index}`,
    );
    guestZero(memory, p.paddr + p.filesz, p.memsz - p.filesz, `ELF segment ${p.index} (bss)`);
  }
  return { start, end };
}

/**
 * The physical address of the ELF entry point: `e_entry` translated by the
 * segment whose virtual range holds it, else `e_entry` itself when it lies in
 * a segment's physical range.
 */
export function physicalEntry(elf: ElfImage): number {
  const loads = elf.phdrs.filter((p) => p.type === PT_LOAD && p.memsz > 0);
  for (const p of loads) {
    if (elf.entry >= p.vaddr && elf.entry < p.vaddr + p.memsz) {
      return elf.entry - p.vaddr + p.paddr;
    }
  }
  for (const p of loads) {
    if (elf.entry >= p.paddr && elf.entry < p.paddr + p.memsz) return elf.entry;
  }
  throw new BootError(
    `ELF entry point ${hex(elf.entry)} is outside every loadable segment; the image is corrupt`,
  );
}
