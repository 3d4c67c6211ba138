/**
 * The L1 table and the cached L2 tables of a qcow2 image: lookup, allocation
 * of new L2 tables, the order in which metadata reaches the disk, and
 * moving the L1 table when the image grows past it.
 *
 * Tables are cached in 4 KiB slices (QEMU's `l2-cache-entry-size=4096`): a
 * miss reads 4 KiB, not a cluster, and a new table in a 1 TiB image that
 * gets one entry costs one slice of memory and one page of write-back.
 *
 * Write order (QEMU's cache dependency: refcount blocks before the L2
 * tables that reference the clusters they count). An L2 table may be
 * written only once everything it references is durable: the data clusters
 * (written before their entries are set) and the refcounts of those
 * clusters. A *barrier* writes the dirty refcount blocks and syncs once; a
 * table changed before the last barrier can be written at any time, one
 * changed since needs another barrier first. So a full cache writes back
 * one table at a time and syncs once per "generation" of dirty tables, not
 * on every insert. L1 entries are written only by a flush: a new table may
 * reach the disk without its L1 entry (after a crash its clusters are
 * leaked, as `qemu-img check` reports), never the reverse:
 *
 * - flush: barrier (refcounts, sync); every dirty L2 table; then the dirty
 *   L1 entries, after one more sync when a new table lies in a reused
 *   cluster (whose old bytes must not be what the entry points at); sync.
 * - frees are released only after a flush (`refcount.ts`).
 *
 * @module
 */

import { QcowError } from "./errors.ts";
import { META } from "./qcow2_metadata.ts";
import { HDR } from "./qcow2_format.ts";
import type { Refcounts } from "./refcount.ts";
import { COPIED_HI, type TableHost, TWO32 } from "./qcow2_tables.ts";
import { type Table, TableCache, writeTable } from "./table_cache.ts";

/** Bytes of an L2 table cached as one piece (QEMU's `l2-cache-entry-size`). */
const SLICE = 4096;

/** Most bytes of L2 tables cached by default: enough for 1 TiB of 64 KiB clusters. */
export const MAX_DEFAULT_L2_CACHE = 128 * 1024 * 1024;

/**
 * How many L2 tables and refcount blocks an image caches. By default the L2
 * cache covers the whole virtual size (`size` bytes of `clusterSize`
 * clusters) up to {@link MAX_DEFAULT_L2_CACHE}, and the refcount cache is a
 * quarter of it (QEMU's ratio), at least 4 blocks; `l2CacheSize` and
 * `refcountCacheSize` (bytes, QEMU's `l2-cache-size`, `refcount-cache-size`)
 * override them, at least 2 tables and 4 blocks as QEMU keeps.
 */
export function cacheCapacity(
  size: number,
  clusterSize: number,
  l2CacheSize?: number,
  refcountCacheSize?: number,
): { l2Tables: number; refcountBlocks: number } {
  for (
    const [name, v] of [["l2CacheSize", l2CacheSize], ["refcountCacheSize", refcountCacheSize]]
  ) {
    if (v !== undefined && (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0)) {
      throw new QcowError(`${name} must be a positive number of bytes (got ${v})`);
    }
  }
  const cover = Math.ceil(size / ((clusterSize / 8) * clusterSize)) * clusterSize;
  const l2Bytes = l2CacheSize ?? Math.min(cover, MAX_DEFAULT_L2_CACHE);
  const l2Tables = Math.max(2, Math.floor(l2Bytes / clusterSize));
  const rcBytes = refcountCacheSize ?? l2Tables * clusterSize / 4;
  return { l2Tables, refcountBlocks: Math.max(4, Math.floor(rcBytes / clusterSize)) };
}

/** The L1 and L2 tables of one open image. */
export class L2Tables {
  #host: TableHost;
  #rc: Refcounts;
  #cs: number;
  #l1: Float64Array;
  #l1Dirty = new Set<number>();
  #cache: TableCache;
  #sliceEntries: number;
  #sliceBytes: number;
  #slicesPerTable: number;
  /** Barriers so far: tables changed in an earlier epoch may be written. */
  #epoch = 1;
  /** Tables allocated in this session whose slices all still read as zeros on the disk. */
  #fresh = new Set<number>();
  /** Whether a dirty L1 entry names a table in a reused (not fresh) cluster. */
  #l1Reused = false;

  /**
   * Wraps the L1 table `l1` (host offsets of the L2 tables) of an image,
   * caching `cacheTables` tables' worth of slices.
   */
  constructor(host: TableHost, rc: Refcounts, l1: Float64Array, cacheTables: number) {
    this.#host = host;
    this.#rc = rc;
    this.#cs = 2 ** host.header.clusterBits;
    this.#l1 = l1;
    this.#sliceBytes = Math.min(SLICE, this.#cs);
    this.#sliceEntries = this.#sliceBytes / 8;
    this.#slicesPerTable = this.#cs / this.#sliceBytes;
    this.#cache = new TableCache(
      cacheTables * this.#slicesPerTable,
      this.#sliceBytes,
      (t) => this.#writeBack(t),
    );
    for (const off of l1) if (off !== 0) host.meta.add(META.L2, off, this.#cs);
  }

  /** Writes dirty table `t` out of a full cache, after a barrier if it changed since the last. */
  #writeBack(t: Table): void {
    if (t.epoch >= this.#epoch) this.#barrier();
    this.#fresh.delete(Math.floor(t.key / this.#slicesPerTable));
    writeTable(this.#host, t, META.L2, "an L2 table write");
  }

  /** Makes the refcounts (and the data written so far) durable: one sync. */
  #barrier(): void {
    this.#rc.write();
    this.#host.file.sync();
    this.#epoch++;
  }

  /** Entries in the L1 table. */
  get length(): number {
    return this.#l1.length;
  }

  /** Whether the L1 table names an L2 table at index `l1i`. */
  allocated(l1i: number): boolean {
    return (this.#l1[l1i] ?? 0) !== 0;
  }

  /** Whether L2 tables or L1 entries wait to be written. */
  get dirty(): boolean {
    return this.#l1Dirty.size > 0 || this.#cache.dirtyCount > 0;
  }

  /** L2 entries per cached slice (a slice is 4 KiB of a table, or the whole table when smaller). */
  get sliceEntries(): number {
    return this.#sliceEntries;
  }

  /** Byte offset of guest cluster `ci`'s entry in its slice. */
  at(ci: number): number {
    return (ci % this.#sliceEntries) * 8;
  }

  /**
   * The cached slice of the L2 table holding guest cluster `ci`'s entry,
   * allocating the table when `alloc`; null when there is no table.
   */
  get(ci: number, alloc: boolean): Table | null {
    const key = Math.floor(ci / this.#sliceEntries);
    const cached = this.#cache.get(key);
    if (cached !== undefined) return cached;
    const l1i = Math.floor(key / this.#slicesPerTable);
    let off = this.#l1[l1i] ?? 0;
    const inTable = (key - l1i * this.#slicesPerTable) * this.#sliceBytes;
    let t: Table;
    if (off === 0) {
      if (!alloc) return null;
      off = this.#newTable(l1i);
      t = this.#cache.take(key, off + inTable, true);
    } else if (this.#fresh.has(l1i)) {
      // A table allocated in this session none of whose slices was written yet: zeros.
      t = this.#cache.take(key, off + inTable, true);
    } else {
      t = this.#cache.take(key, off + inTable, false);
      // A table may end the file cut short (only its changed pages were written): zeros.
      this.#host.file.readZeroFilled(t.data, off + inTable);
    }
    this.#cache.set(t);
    return t;
  }

  /** Allocates the L2 table for L1 index `l1i`; returns its host offset. */
  #newTable(l1i: number): number {
    const cs = this.#cs;
    const host = this.#rc.alloc();
    this.#l1[l1i] = host;
    this.#l1Dirty.add(l1i);
    this.#host.meta.add(META.L2, host, cs);
    // A never-written cluster reads as zeros; a reused one is zeroed at once, and its
    // L1 entry waits for a sync after that (see flush).
    if (!this.#rc.lastFresh) {
      this.#host.guard(host, cs, META.L2, "an L2 table write");
      this.#host.file.pwrite(new Uint8Array(cs), host);
      this.#l1Reused = true;
    }
    this.#fresh.add(l1i);
    return host;
  }

  /** Marks the entry at byte `at` of cached table `t` changed. */
  mark(t: Table, at: number): void {
    this.#cache.mark(t, at, 8, this.#epoch);
  }

  /**
   * Writes the metadata back in crash-safe order (see the module doc) and
   * syncs; the image releases pending frees after this.
   */
  flush(): void {
    const { file, header } = this.#host;
    const dirty = this.dirty;
    if (!dirty) {
      this.#rc.write();
      file.sync();
      this.#epoch++;
      return;
    }
    this.#barrier();
    this.#cache.writeAll((t) => writeTable(this.#host, t, META.L2, "an L2 table write"));
    this.#fresh.clear();
    if (this.#l1Dirty.size > 0) {
      if (this.#l1Reused) file.sync();
      this.#l1Reused = false;
      this.#writeL1(header.l1TableOffset);
    }
    file.sync();
    this.#epoch++;
  }

  /**
   * Writes the dirty L1 entries: each 4 KiB page of the L1 table holding
   * some is read, given its dirty entries and written in one write (a large
   * image's flush would otherwise make thousands of 8-byte writes).
   */
  #writeL1(base: number): void {
    const file = this.#host.file;
    const per = 512; // entries per 4 KiB page
    const byPage = new Map<number, number[]>();
    for (const i of this.#l1Dirty) {
      const p = Math.floor(i / per);
      const list = byPage.get(p);
      if (list === undefined) byPage.set(p, [i]);
      else list.push(i);
    }
    for (const p of [...byPage.keys()].sort((a, b) => a - b)) {
      const first = p * per;
      const bytes = new Uint8Array(Math.min(per, this.#l1.length - first) * 8);
      file.readZeroFilled(bytes, base + first * 8);
      const v = new DataView(bytes.buffer);
      for (const i of byPage.get(p) ?? []) {
        const off = this.#l1[i] ?? 0;
        const at = (i - first) * 8;
        v.setUint32(at, off === 0 ? 0 : (COPIED_HI | Math.floor(off / TWO32)) >>> 0, false);
        v.setUint32(at + 4, off % TWO32, false);
      }
      this.#host.guard(base + first * 8, bytes.length, META.L1, "an L1 table write");
      file.pwrite(bytes, base + first * 8);
    }
    this.#l1Dirty.clear();
  }

  /**
   * Moves the L1 table to new clusters holding `entries` entries: flushes,
   * writes the new table and syncs, then points the header at it and syncs;
   * the old clusters are freed after the next flush.
   */
  grow(entries: number): void {
    if (entries <= this.#l1.length) return;
    const cs = this.#cs;
    const { file, header: h } = this.#host;
    const clusters = Math.ceil((entries * 8) / cs);
    const start = this.#rc.reserve(clusters);
    this.#host.meta.add(META.L1, start * cs, clusters * cs);
    this.#host.flushSync();
    const l1 = new Float64Array(entries);
    l1.set(this.#l1);
    const bytes = new Uint8Array(clusters * cs);
    const v = new DataView(bytes.buffer);
    for (let i = 0; i < l1.length; i++) {
      const off = l1[i] ?? 0;
      if (off === 0) continue;
      v.setUint32(i * 8, (COPIED_HI | Math.floor(off / TWO32)) >>> 0, false);
      v.setUint32(i * 8 + 4, off % TWO32, false);
    }
    this.#host.guard(start * cs, bytes.length, META.L1, "an L1 table write");
    file.pwrite(bytes, start * cs);
    file.sync();
    const hdr = new Uint8Array(12);
    const hv = new DataView(hdr.buffer);
    hv.setUint32(0, entries, false);
    hv.setBigUint64(4, BigInt(start * cs), false);
    file.pwrite(hdr, HDR.L1_SIZE);
    file.sync();
    const oldOffset = h.l1TableOffset;
    const oldClusters = Math.max(1, Math.ceil((this.#l1.length * 8) / cs));
    for (let c = 0; c < oldClusters; c++) this.#rc.freeLater(oldOffset / cs + c);
    h.l1TableOffset = start * cs;
    h.l1Size = entries;
    this.#l1 = l1;
  }
}
