/**
 * The header of an open qcow2 image, rewritten in place: the features as
 * `qemu-img info` shows them, the autoclear bits (cleared before the first
 * modification, the spec's rule for writers that do not maintain them,
 * except the commit marker `commit.ts` has this image maintain), the
 * virtual size, and the backing file name.
 *
 * @module
 */

import type { ImageFile } from "./file_io.ts";
import { buildHeader, HDR, INCOMPAT, type Qcow2Header } from "./qcow2_format.ts";

/**
 * Autoclear bit vmkit sets while a commit of this image is in progress: any
 * writer that does not know it (QEMU, or vmkit outside that commit) clears
 * it before its first write, so a resumed commit can tell whether the
 * overlay changed since its cursor was saved.
 */
export const AUTOCLEAR_COMMIT_MARKER = 1n << 40n;

/** A qcow2 header's features as `qemu-img info` shows them (`format-specific`, `dirty-flag`). */
export interface Qcow2Features {
  /** 2 (QEMU's compat 0.10) or 3 (compat 1.1). */
  version: number;
  /** Refcount width in bits. */
  refcountBits: number;
  /** Compatible feature bit 0: refcounts may be stale while the dirty bit is set. */
  lazyRefcounts: boolean;
  /** Incompatible bit 1: the image is marked corrupt. */
  corrupt: boolean;
  /** Incompatible bit 0: refcounts need a repair before use (lazy refcounts left dirty). */
  dirty: boolean;
  /** Incompatible bit 4: extended L2 entries (subclusters). */
  extendedL2: boolean;
  /** How compressed clusters are compressed. */
  compressionType: "zlib" | "zstd";
}

/** The header fields of one open image that change while it is open. */
export class LiveHeader {
  #file: ImageFile;
  #h: Qcow2Header;
  #readOnly: boolean;
  /** Autoclear bits this image keeps set through its writes. */
  #maintained = 0n;
  /** Autoclear bits to clear before the next modification. */
  #clearPending: boolean;

  /** The header `h` of the image in `file`. */
  constructor(file: ImageFile, h: Qcow2Header) {
    this.#file = file;
    this.#h = h;
    this.#readOnly = file.readOnly;
    this.#clearPending = !file.readOnly && h.autoclear !== 0n;
  }

  /** The header's features, as `qemu-img info` reports them. */
  features(): Qcow2Features {
    const h = this.#h;
    const inc = (b: number) => (h.incompatible & (1n << BigInt(b))) !== 0n;
    return {
      version: h.version,
      refcountBits: 1 << h.refcountOrder,
      lazyRefcounts: (h.compatible & 1n) !== 0n,
      corrupt: inc(INCOMPAT.CORRUPT),
      dirty: inc(INCOMPAT.DIRTY),
      extendedL2: inc(INCOMPAT.EXTL2),
      compressionType: h.compressionType === 1 ? "zstd" : "zlib",
    };
  }

  #writeAutoclear(): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, this.#h.autoclear, false);
    this.#file.pwrite(b, HDR.AUTOCLEAR_FEATURES);
    this.#file.sync();
  }

  /** Clears the autoclear bits nobody here maintains, once; call before every modification. */
  beforeModify(): void {
    if (!this.#clearPending) return;
    this.#clearPending = false;
    const keep = this.#h.autoclear & this.#maintained;
    if (keep === this.#h.autoclear) return;
    this.#h.autoclear = keep;
    this.#writeAutoclear();
  }

  /** Whether the header carries the commit marker ({@link AUTOCLEAR_COMMIT_MARKER}). */
  get commitMarker(): boolean {
    return (this.#h.autoclear & AUTOCLEAR_COMMIT_MARKER) !== 0n;
  }

  /** Sets (and from now on maintains through writes) or clears the commit marker, durably. */
  setCommitMarker(on: boolean): void {
    if (on) {
      this.#maintained |= AUTOCLEAR_COMMIT_MARKER;
      this.#h.autoclear |= AUTOCLEAR_COMMIT_MARKER;
    } else {
      this.#maintained &= ~AUTOCLEAR_COMMIT_MARKER;
      this.#h.autoclear &= ~AUTOCLEAR_COMMIT_MARKER;
    }
    this.#writeAutoclear();
    this.#clearPending = (this.#h.autoclear & ~this.#maintained) !== 0n;
  }

  /** Stops maintaining the commit marker: the next modification clears it. */
  releaseCommitMarker(): void {
    this.#maintained &= ~AUTOCLEAR_COMMIT_MARKER;
    this.#clearPending = !this.#readOnly && (this.#h.autoclear & ~this.#maintained) !== 0n;
  }

  /** Writes the virtual size `size` durably. */
  writeSize(size: number): void {
    const sz = new Uint8Array(8);
    new DataView(sz.buffer).setBigUint64(0, BigInt(size), false);
    this.#file.pwrite(sz, HDR.SIZE);
    this.#file.sync();
    this.#h.size = size;
  }

  /**
   * Rewrites the header cluster durably with backing file `name` (null: none);
   * the caller has flushed the image's metadata first.
   */
  writeBacking(name: { file: string; format: "raw" | "qcow2" } | null): void {
    const h = this.#h;
    const header = buildHeader({
      clusterBits: h.clusterBits,
      size: h.size,
      l1Size: h.l1Size,
      l1TableOffset: h.l1TableOffset,
      refcountTableOffset: h.refcountTableOffset,
      refcountTableClusters: h.refcountTableClusters,
      refcountOrder: h.refcountOrder,
      backingFile: name?.file ?? null,
      backingFormat: name?.format ?? null,
    });
    if (h.autoclear !== 0n) {
      new DataView(header.buffer).setBigUint64(HDR.AUTOCLEAR_FEATURES, h.autoclear, false);
    }
    this.#file.pwrite(header.subarray(0, Math.min(header.length, 4096)), 0);
    this.#file.sync();
    h.backingFile = name?.file ?? null;
    h.backingFormat = name?.format ?? null;
  }
}
