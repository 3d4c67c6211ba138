/**
 * Where a qcow2 image keeps its metadata, cluster by cluster, so that every
 * write can be checked against it: QEMU's `overlap-check` (all of its
 * checks: header, active L1 and L2 tables, refcount table and blocks,
 * snapshot table, bitmap directory). A write may land on a metadata cluster
 * only when it is that structure's own write; anything else means the
 * image's tables point where they must not, and the image is marked corrupt
 * instead of written (see `qcow2.ts`).
 *
 * The map holds one entry per metadata cluster (a bit mask of the
 * structures there), so a check is one hash lookup per cluster written.
 *
 * {@link OverlapGuard} runs the checks and, on a hit, marks the image
 * corrupt on disk (the header's corrupt bit) before it throws.
 *
 * @module
 */

import { QcowError } from "./errors.ts";
import type { ImageFile } from "./file_io.ts";
import { HDR, INCOMPAT, type Qcow2Header } from "./qcow2_format.ts";

/** Metadata structures, as bits. */
export const META = {
  HEADER: 1,
  L1: 2,
  L2: 4,
  REFCOUNT_TABLE: 8,
  REFCOUNT_BLOCK: 16,
  SNAPSHOT_TABLE: 32,
  BITMAP_DIRECTORY: 64,
} as const;

/** QEMU's names for the structures (its "overlaps with ..." messages). */
const NAMES: ReadonlyArray<[number, string]> = [
  [META.HEADER, "qcow2_header"],
  [META.L1, "active L1 table"],
  [META.L2, "active L2 table"],
  [META.REFCOUNT_TABLE, "refcount table"],
  [META.REFCOUNT_BLOCK, "refcount block"],
  [META.SNAPSHOT_TABLE, "snapshot table"],
  [META.BITMAP_DIRECTORY, "bitmap directory"],
];

/** The metadata clusters of one image. */
export class MetadataMap {
  #map = new Map<number, number>();
  #cs: number;

  /** Creates an empty map for clusters of `clusterSize` bytes. */
  constructor(clusterSize: number) {
    this.#cs = clusterSize;
  }

  /** Records structure `kind` over `[offset, offset + bytes)`. */
  add(kind: number, offset: number, bytes: number): void {
    if (bytes <= 0) return;
    const last = Math.floor((offset + bytes - 1) / this.#cs);
    for (let c = Math.floor(offset / this.#cs); c <= last; c++) {
      this.#map.set(c, (this.#map.get(c) ?? 0) | kind);
    }
  }

  /** Whether cluster `ci` holds any metadata (the one-lookup check of a data cluster). */
  has(ci: number): boolean {
    return this.#map.has(ci);
  }

  /** Forgets everything recorded at cluster `ci` (it was freed). */
  forget(ci: number): void {
    this.#map.delete(ci);
  }

  /**
   * The name of a structure other than `allowed` (a {@link META} mask) that
   * lies in `[offset, offset + length)`, or null when the write is safe.
   */
  overlap(offset: number, length: number, allowed: number): string | null {
    if (length <= 0) return null;
    const first = Math.floor(offset / this.#cs);
    const last = Math.floor((offset + length - 1) / this.#cs);
    for (let c = first; c <= last; c++) {
      const m = this.#map.get(c);
      if (m === undefined) continue;
      const hit = m & ~allowed;
      if (hit === 0) continue;
      for (const [bit, name] of NAMES) if (hit & bit) return name;
    }
    return null;
  }
}

/** The overlap checks of one open image, and the corrupt marking they lead to. */
export class OverlapGuard {
  /** Where the metadata lies. */
  readonly map: MetadataMap;
  #path: string;
  #file: ImageFile;
  #header: Qcow2Header;
  #cs: number;
  #enabled: boolean;
  /** Why the image was marked corrupt in this session, or null. */
  reason: string | null = null;

  /** Checks writes to `file` against `map` when `enabled` (QEMU's overlap-check "all"). */
  constructor(
    path: string,
    file: ImageFile,
    header: Qcow2Header,
    map: MetadataMap,
    enabled: boolean,
  ) {
    this.#path = path;
    this.#file = file;
    this.#header = header;
    this.#cs = 2 ** header.clusterBits;
    this.map = map;
    this.#enabled = enabled;
  }

  /**
   * Throws, and marks the image corrupt, when `[offset, offset + length)`
   * holds metadata other than `allowed` (a META mask; 0 for guest data).
   */
  check(offset: number, length: number, allowed: number, what: string): void {
    if (!this.#enabled) return;
    const hit = this.map.overlap(offset, length, allowed);
    if (hit !== null) {
      this.signal(
        `${what} at host offset ${offset} would overwrite the ${hit}: the image's tables ` +
          `point into its metadata`,
      );
    }
  }

  /** The hot-path form of {@link check} for one guest data cluster at host offset `host`. */
  checkData(host: number): void {
    if (!this.#enabled) return;
    const ci = host / this.#cs;
    if (!Number.isInteger(ci)) {
      this.signal(
        `a guest data write at host offset ${host}: the L2 entry is not cluster aligned`,
      );
    }
    if (this.map.has(ci)) this.check(host, this.#cs, 0, "a guest data write");
  }

  /** Marks the image corrupt (once, durably) and throws a {@link QcowError} naming `reason`. */
  signal(reason: string): never {
    let marked = "the image is now marked corrupt";
    if (this.reason === null) {
      this.reason = reason;
      try {
        this.#header.incompatible |= 1n << BigInt(INCOMPAT.CORRUPT);
        const b = new Uint8Array(8);
        new DataView(b.buffer).setBigUint64(0, this.#header.incompatible, false);
        this.#file.pwrite(b, HDR.INCOMPATIBLE_FEATURES);
        this.#file.sync();
      } catch (err) {
        marked = `marking the image corrupt failed too (${(err as Error).message})`;
      }
    }
    throw new QcowError(
      `'${this.#path}': refused ${reason}; ${marked} ` +
        `(repair it with 'qemu-img check -r all ${this.#path}')`,
    );
  }
}
