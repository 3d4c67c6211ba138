/**
 * Guest RAM as an I/O Worker sees it: the machine's memory table (region
 * guest address, size and host address; host addresses are valid in every
 * thread of the process) turned into bounds-checked views. Every guest
 * address and length a device takes from a guest goes through
 * {@link GuestRam.find}, which accepts only ranges wholly inside one RAM
 * region: never the MMIO gap, never past a region's end, never beyond 2^53.
 *
 * @module
 */

/** One RAM region as handed to an I/O Worker (structured-clone-able). */
export interface RamRegion {
  /** Guest-physical start. */
  readonly guestAddr: number;
  /** Bytes. */
  readonly size: number;
  /** Host virtual address of the mapping. */
  readonly hostAddr: bigint;
}

/** Bounds-checked access to guest RAM from any thread of the VMM process. */
export class GuestRam {
  /** The regions, sorted by guest address. */
  readonly regions: readonly RamRegion[];
  readonly #start: Float64Array;
  readonly #end: Float64Array;
  readonly #host: Float64Array;
  /** Byte view of each region. */
  readonly bytes: readonly Uint8Array[];
  /** DataView of each region. */
  readonly views: readonly DataView[];

  /** Views over `regions` (which must stay mapped while this object is used). */
  constructor(regions: readonly RamRegion[]) {
    const sorted = [...regions].sort((a, b) => a.guestAddr - b.guestAddr);
    this.regions = sorted;
    this.#start = Float64Array.from(sorted, (r) => r.guestAddr);
    this.#end = Float64Array.from(sorted, (r) => r.guestAddr + r.size);
    this.#host = Float64Array.from(sorted, (r) => Number(r.hostAddr));
    const bufs = sorted.map((r) => {
      const p = Deno.UnsafePointer.create(r.hostAddr);
      if (p === null) {
        throw new RangeError(`guest RAM region at 0x${r.guestAddr.toString(16)} has no mapping`);
      }
      return Deno.UnsafePointerView.getArrayBuffer(p, r.size);
    });
    this.bytes = bufs.map((b) => new Uint8Array(b));
    this.views = bufs.map((b) => new DataView(b));
  }

  /**
   * The region holding all of `[gpa, gpa + len)`, or -1. `gpa` and `len`
   * must be non-negative integers; a range touching anything but RAM, or
   * wrapping, gives -1.
   */
  find(gpa: number, len: number): number {
    if (!(gpa >= 0) || !(len >= 0) || gpa + len > Number.MAX_SAFE_INTEGER) return -1;
    const end = gpa + len;
    const s = this.#start;
    for (let i = 0; i < s.length; i++) {
      if (gpa >= (s[i] ?? 0) && end <= (this.#end[i] ?? 0)) return i;
    }
    return -1;
  }

  /** Offset of `gpa` inside region `i`. */
  offset(i: number, gpa: number): number {
    return gpa - (this.#start[i] ?? 0);
  }

  /** Host virtual address of `gpa` in region `i` (for iovecs). */
  host(i: number, gpa: number): number {
    return (this.#host[i] ?? 0) + gpa - (this.#start[i] ?? 0);
  }

  /** A live view of `[gpa, gpa + len)`, or null when it is not inside one RAM region. */
  view(gpa: number, len: number): Uint8Array | null {
    const i = this.find(gpa, len);
    if (i < 0) return null;
    const b = this.bytes[i];
    if (b === undefined) return null;
    return b.subarray(gpa - (this.#start[i] ?? 0), gpa - (this.#start[i] ?? 0) + len);
  }
}

/**
 * A 64-bit guest address from two 32-bit halves (as registers and
 * descriptors hold it), or -1 when it is beyond 2^53 and so never RAM.
 */
export function joinAddr(lo: number, hi: number): number {
  const h = hi >>> 0;
  if (h >= 0x20_0000) return -1;
  return h * 0x1_0000_0000 + (lo >>> 0);
}
