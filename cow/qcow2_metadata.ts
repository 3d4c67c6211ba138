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
 * @module
 */

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
