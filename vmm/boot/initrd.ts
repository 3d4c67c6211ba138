/**
 * Initrd placement: as high as allowed (below the kernel's limit, 4 GiB and
 * the end of RAM), page aligned, above the kernel and the boot data.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import { BootError, hex, mib } from "./errors.ts";
import { guestWrite, ramEnd } from "./guest_access.ts";
import { BOOT_DATA_END, FOUR_GIB, HIGH_MEMORY, PAGE_SIZE } from "./layout.ts";

/** Where the initrd went. */
export interface InitrdPlacement {
  /** Guest-physical address (page aligned). */
  readonly addr: number;
  /** Size in bytes. */
  readonly size: number;
}

/**
 * Copies `initrd` into the highest page-aligned spot of RAM that ends at or
 * below `maxAddr + 1` (and 4 GiB) and starts at or above `kernelEnd`.
 * Throws {@link BootError} when no RAM region has room.
 */
export function placeInitrd(
  memory: GuestMemory,
  initrd: Uint8Array,
  kernelEnd: number,
  maxAddr: number,
): InitrdPlacement {
  const size = initrd.length;
  const limit = Math.min(maxAddr + 1, FOUR_GIB);
  const floor = Math.max(kernelEnd, BOOT_DATA_END, HIGH_MEMORY);
  const regions = [...memory.regions].sort((a, b) => b.guestAddr - a.guestAddr);
  for (const r of regions) {
    const hi = Math.min(r.guestAddr + r.size, limit);
    const lo = Math.max(r.guestAddr, floor);
    const addr = Math.floor((hi - size) / PAGE_SIZE) * PAGE_SIZE;
    if (hi - lo >= size && addr >= lo) {
      guestWrite(memory, addr, initrd, "the initrd");
      return { addr, size };
    }
  }
  throw new BootError(
    `initrd too large: ${mib(size)} (${size} bytes) does not fit in guest RAM between the ` +
      `kernel's end ${hex(floor)} and ${hex(Math.min(limit, ramEnd(memory)))} (machine has ${
        mib(memory.size)
      }); ` +
      "give the machine more memory or use a smaller initrd",
  );
}
