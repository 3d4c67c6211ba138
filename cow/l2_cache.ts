/**
 * The L1 table and the cached L2 tables of a qcow2 image: lookup, allocation
 * of new L2 tables, write-back (step 3 of the flush order in `qcow2.ts`:
 * dirty L2 tables, then dirty L1 entries) and moving the L1 table when the
 * image grows past it.
 *
 * @module
 */

import { QcowError } from "./errors.ts";
import { META } from "./qcow2_metadata.ts";
import { HDR } from "./qcow2_format.ts";
import type { Refcounts } from "./refcount.ts";
import {
  COPIED_HI,
  newTable,
  type Table,
  TableCache,
  type TableHost,
  TWO32,
} from "./qcow2_tables.ts";

/** The L1 and L2 tables of one open image. */
export class L2Tables {
  #host: TableHost;
  #rc: Refcounts;
  #cs: number;
  #l1: Float64Array;
  #l1Dirty = new Set<number>();
  #cache: TableCache;
  #dirty = new Set<Table>();

  /** Wraps the L1 table `l1` (host offsets of the L2 tables) of an image. */
  constructor(host: TableHost, rc: Refcounts, l1: Float64Array, cacheTables: number) {
    this.#host = host;
    this.#rc = rc;
    this.#cs = 2 ** host.header.clusterBits;
    this.#l1 = l1;
    this.#cache = new TableCache(cacheTables, () => host.flushSync());
    for (const off of l1) if (off !== 0) host.meta.add(META.L2, off, this.#cs);
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
    return this.#l1Dirty.size > 0 || this.#dirty.size > 0;
  }

  /** The L2 table for L1 index `l1i`, allocating it when `alloc`; null when there is none. */
  get(l1i: number, alloc: boolean): Table | null {
    const cached = this.#cache.get(l1i);
    if (cached !== undefined) return cached;
    const off = this.#l1[l1i] ?? 0;
    let t: Table;
    if (off === 0) {
      if (!alloc) return null;
      const host = this.#rc.alloc();
      t = newTable(host, this.#cs, false);
      this.#l1[l1i] = host;
      this.#l1Dirty.add(l1i);
      this.#host.meta.add(META.L2, host, this.#cs);
      this.mark(t);
    } else {
      t = newTable(off, this.#cs, false);
      if (this.#host.file.pread(t.data, off) < this.#cs) {
        throw new QcowError(
          `'${this.#host.path}': L2 table ${l1i} at ${off} is cut off by the end of the file`,
        );
      }
    }
    this.#cache.set(l1i, t);
    return t;
  }

  /** Marks `t` changed. */
  mark(t: Table): void {
    t.dirty = true;
    this.#dirty.add(t);
  }

  /** Writes the dirty L2 tables, then the dirty L1 entries (no sync). */
  write(): void {
    const { file, header } = this.#host;
    for (const t of this.#dirty) {
      this.#host.guard(t.offset, this.#cs, META.L2, "an L2 table write");
      file.pwrite(t.data, t.offset);
      t.dirty = false;
    }
    this.#dirty.clear();
    if (this.#l1Dirty.size === 0) return;
    const e = new Uint8Array(8);
    const v = new DataView(e.buffer);
    const base = header.l1TableOffset;
    for (const i of [...this.#l1Dirty].sort((a, b) => a - b)) {
      const off = this.#l1[i] ?? 0;
      v.setUint32(0, off === 0 ? 0 : (COPIED_HI | Math.floor(off / TWO32)) >>> 0, false);
      v.setUint32(4, off % TWO32, false);
      this.#host.guard(base + i * 8, 8, META.L1, "an L1 table write");
      file.pwrite(e, base + i * 8);
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
