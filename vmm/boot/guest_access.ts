/**
 * Checked writes into guest memory for the loaders: every range is validated
 * against the RAM regions first, so a hostile image gets a {@link BootError}
 * naming what did not fit instead of a bare memory error.
 *
 * @module
 */

import type { GuestMemory } from "../guest_memory.ts";
import { BootError, hex, mib } from "./errors.ts";

/** End of guest RAM: the highest address any region reaches. */
export function ramEnd(memory: GuestMemory): number {
  let end = 0;
  for (const r of memory.regions) end = Math.max(end, r.guestAddr + r.size);
  return end;
}

/** True when `[gpa, gpa + len)` lies inside one RAM region. */
export function inRam(memory: GuestMemory, gpa: number, len: number): boolean {
  for (const r of memory.regions) {
    if (gpa >= r.guestAddr && gpa + len <= r.guestAddr + r.size) return true;
  }
  return false;
}

/**
 * Throws {@link BootError} unless `[gpa, gpa + len)` is inside one RAM region;
 * `what` names the data for the message ("ELF segment 2").
 */
export function requireRam(memory: GuestMemory, gpa: number, len: number, what: string): void {
  if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len) || gpa < 0 || len < 0) {
    throw new BootError(`${what} has an impossible address or size (${gpa}, ${len})`);
  }
  if (inRam(memory, gpa, len)) return;
  const total = ramEnd(memory);
  if (gpa + len > total) {
    throw new BootError(
      `guest memory too small: ${what} at [${hex(gpa)}, ${hex(gpa + len)}) needs ` +
        `${mib(gpa + len)}, machine has ${mib(memory.size)}; give the machine more memory`,
    );
  }
  throw new BootError(
    `${what} at [${hex(gpa)}, ${hex(gpa + len)}) is not inside one guest RAM region ` +
      "(it falls in or spans the MMIO gap); relink the kernel to load elsewhere",
  );
}

/** A checked DataView over `[gpa, gpa + len)` of guest memory (writes reach the guest). */
export function guestView(memory: GuestMemory, gpa: number, len: number, what: string): DataView {
  requireRam(memory, gpa, len, what);
  const bytes = memory.view(gpa, len);
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Copies `data` to `gpa` after checking the range; `what` names it in errors. */
export function guestWrite(memory: GuestMemory, gpa: number, data: Uint8Array, what: string): void {
  requireRam(memory, gpa, data.length, what);
  if (data.length > 0) memory.write(gpa, data);
}

/** Zeroes `[gpa, gpa + len)` after checking the range. */
export function guestZero(memory: GuestMemory, gpa: number, len: number, what: string): void {
  requireRam(memory, gpa, len, what);
  if (len > 0) memory.view(gpa, len).fill(0);
}
