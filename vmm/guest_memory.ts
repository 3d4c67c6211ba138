/**
 * The guest memory table: the one description of guest-physical memory that
 * boot loaders, devices and checkpoints all read.
 *
 * @module
 */

/** One contiguous region of guest RAM backed by one host mapping. */
export interface MemoryRegion {
  /** Guest-physical start address. */
  readonly guestAddr: number;
  /** Length in bytes (a multiple of 4 KiB). */
  readonly size: number;
  /** Host virtual address of the mapping (0n for a test double with no mapping). */
  readonly hostAddr: bigint;
  /** KVM memory slot number. */
  readonly slot: number;
}

/** Start of the 32-bit MMIO gap (3 GiB); RAM beyond it continues at 4 GiB. */
export const MMIO_GAP_START = 0xc000_0000;
/** End of the 32-bit MMIO gap (4 GiB). */
export const MMIO_GAP_END = 0x1_0000_0000;

/** Raised for a guest-physical range that is not wholly inside one RAM region. */
export class GuestMemoryError extends Error {
  /** Creates the error for `[gpa, gpa+len)`. */
  constructor(gpa: number, len: number) {
    super(
      `guest memory: [0x${gpa.toString(16)}, 0x${
        (gpa + len).toString(16)
      }) is not inside guest RAM`,
    );
    this.name = "GuestMemoryError";
  }
}

/** Guest RAM as the VMM sees it. */
export interface GuestMemory {
  /** RAM regions, sorted by guest address, non-overlapping. */
  readonly regions: readonly MemoryRegion[];
  /** Total RAM bytes (sum of region sizes). */
  readonly size: number;
  /**
   * A live view of `[gpa, gpa+len)`; writes through it reach the guest.
   * Throws {@link GuestMemoryError} unless the range lies in one region.
   */
  view(gpa: number, len: number): Uint8Array;
  /** Copies `data` into guest memory at `gpa` (may span regions? no: one region). */
  write(gpa: number, data: Uint8Array): void;
  /** Copies `len` bytes out of guest memory at `gpa`. */
  read(gpa: number, len: number): Uint8Array;
}

/**
 * The usual x86 layout for `size` bytes of RAM: below 3 GiB one region from 0,
 * the rest from 4 GiB. Returns `[guestAddr, size]` pairs.
 */
export function x86Layout(size: number): Array<[number, number]> {
  if (size <= MMIO_GAP_START) return [[0, size]];
  return [[0, MMIO_GAP_START], [MMIO_GAP_END, size - MMIO_GAP_START]];
}
