/**
 * The refcounts of a qcow2 image: the refcount table, its cached blocks,
 * cluster allocation and deferred frees.
 *
 * Allocation only hands out clusters with refcount 0, and takes fresh ones
 * from past the end of the file (they have never been written, so they read
 * as zeros). Clusters freed by discards and overwrites are queued and
 * released only after the flush that made the metadata no longer pointing
 * at them durable (see `qcow2.ts`), so a cluster is never reused while a
 * durable L2 entry may still point at it.
 *
 * @module
 */

import { QcowError } from "./errors.ts";
import { META } from "./qcow2_metadata.ts";
import { HDR } from "./qcow2_format.ts";
import type { TableHost } from "./qcow2_tables.ts";
import { type Table, TableCache, writeTable } from "./table_cache.ts";

/** What the refcounts need from their image. */
export type RefcountHost = TableHost;

/** The refcount structures of one open image. */
export class Refcounts {
  #host: RefcountHost;
  #cs: number;
  #order: number;
  #per: number;
  #table: Float64Array;
  #tableDirty = new Set<number>();
  #cache: TableCache;
  #nextFree: number;
  #freeList: number[] = [];
  #pendingFree: number[] = [];
  /** Whether the last {@link alloc} came from never-written space (reads as zeros). */
  lastFresh = false;

  /**
   * Wraps the refcount `table` (host offsets of the blocks) of an image whose
   * file is `fileLength` bytes long.
   */
  constructor(host: RefcountHost, table: Float64Array, fileLength: number, cacheTables: number) {
    this.#host = host;
    this.#cs = 2 ** host.header.clusterBits;
    this.#order = host.header.refcountOrder;
    this.#per = (this.#cs * 8) / (1 << this.#order);
    this.#table = table;
    this.#nextFree = Math.ceil(fileLength / this.#cs);
    // A refcount block may be written at any time: a count reaching the disk early
    // leaks its cluster at worst, and counts drop only after a flush (releasePending).
    this.#cache = new TableCache(cacheTables, this.#cs, (t) => this.#writeBlock(t));
    for (const off of table) if (off !== 0) host.meta.add(META.REFCOUNT_BLOCK, off, this.#cs);
  }

  /** Refcount width in bits. */
  get bits(): number {
    return 1 << this.#order;
  }

  /** Whether blocks or table entries wait to be written. */
  get dirty(): boolean {
    return this.#cache.dirtyCount > 0 || this.#tableDirty.size > 0;
  }

  /** Whether frees wait for the next flush. */
  get freesPending(): boolean {
    return this.#pendingFree.length > 0;
  }

  #block(bi: number): Table | null {
    const cached = this.#cache.get(bi);
    if (cached !== undefined) return cached;
    const off = this.#table[bi] ?? 0;
    if (off === 0) return null;
    const t = this.#cache.take(bi, off, false);
    // A block may end the file cut short (only its changed pages were written): zeros.
    this.#host.file.readZeroFilled(t.data, off);
    this.#cache.set(t);
    return t;
  }

  /** Refcount of host cluster `ci`. */
  get(ci: number): number {
    const bi = Math.floor(ci / this.#per);
    if (bi >= this.#table.length) return 0;
    const blk = this.#block(bi);
    if (blk === null) return 0;
    const i = ci - bi * this.#per;
    const v = blk.view;
    switch (this.#order) {
      case 4:
        return v.getUint16(i * 2, false);
      case 3:
        return v.getUint8(i);
      case 5:
        return v.getUint32(i * 4, false);
      case 6:
        return Number(v.getBigUint64(i * 8, false));
      default: {
        const bits = 1 << this.#order;
        const per = 8 / bits;
        const byte = v.getUint8(Math.floor(i / per));
        return (byte >> ((i % per) * bits)) & ((1 << bits) - 1);
      }
    }
  }

  /** Sets the refcount of host cluster `ci` (creating its block, growing the table). */
  set(ci: number, value: number): void {
    const bi = Math.floor(ci / this.#per);
    if (bi >= this.#table.length) this.#growTable(bi);
    if ((this.#table[bi] ?? 0) === 0) this.#createBlock(bi);
    const blk = this.#block(bi);
    if (blk === null) throw new QcowError(`'${this.#host.path}': refcount block ${bi} vanished`);
    const i = ci - bi * this.#per;
    const v = blk.view;
    const max = this.#order >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << this.#order) - 1;
    if (value > max) {
      throw new QcowError(`'${this.#host.path}': refcount of cluster ${ci} would overflow ${max}`);
    }
    switch (this.#order) {
      case 4:
        v.setUint16(i * 2, value, false);
        break;
      case 3:
        v.setUint8(i, value);
        break;
      case 5:
        v.setUint32(i * 4, value, false);
        break;
      case 6:
        v.setBigUint64(i * 8, BigInt(value), false);
        break;
      default: {
        const bits = 1 << this.#order;
        const per = 8 / bits;
        const at = Math.floor(i / per);
        const shift = (i % per) * bits;
        const mask = ((1 << bits) - 1) << shift;
        v.setUint8(at, (v.getUint8(at) & ~mask) | (value << shift));
      }
    }
    const bytes = this.#order >= 3 ? 1 << (this.#order - 3) : 1;
    this.#cache.mark(blk, Math.floor((i << this.#order) / 8), bytes, 0);
  }

  #createBlock(bi: number): void {
    let nb: number;
    do nb = this.#nextFree++; while (this.get(nb) !== 0);
    // nextFree only hands out never-written clusters: the new block reads as zeros.
    const t = this.#cache.take(bi, nb * this.#cs, true);
    this.#table[bi] = nb * this.#cs;
    this.#tableDirty.add(bi);
    this.#host.meta.add(META.REFCOUNT_BLOCK, nb * this.#cs, this.#cs);
    this.#cache.set(t);
    this.set(nb, 1);
  }

  /**
   * Moves the refcount table to a bigger place. Rare (a 64 KiB-cluster image
   * needs it past 16 TiB of allocation), done synchronously: new blocks and
   * the new table are written and synced before the header points at them.
   */
  #growTable(minIndex: number): void {
    const cs = this.#cs;
    const h = this.#host.header;
    const file = this.#host.file;
    const oldOffset = h.refcountTableOffset;
    const oldClusters = h.refcountTableClusters;
    const wanted = Math.max(this.#table.length * 2, minIndex + 1);
    const clusters = Math.ceil((wanted * 8) / cs);
    const table = new Float64Array((clusters * cs) / 8);
    table.set(this.#table);
    this.#table = table;
    const start = this.reserve(clusters);
    this.#host.meta.add(META.REFCOUNT_TABLE, start * cs, clusters * cs);
    // Blocks only: dirty table entries may lie past the end of the old table,
    // they reach the disk inside the new table written below.
    this.#writeBlocks();
    const bytes = new Uint8Array(clusters * cs);
    const v = new DataView(bytes.buffer);
    for (let i = 0; i < table.length; i++) v.setBigUint64(i * 8, BigInt(table[i] ?? 0), false);
    this.#host.guard(start * cs, bytes.length, META.REFCOUNT_TABLE, "a refcount table write");
    file.pwrite(bytes, start * cs);
    file.sync();
    const hdr = new Uint8Array(12);
    const hv = new DataView(hdr.buffer);
    hv.setBigUint64(0, BigInt(start * cs), false);
    hv.setUint32(8, clusters, false);
    file.pwrite(hdr, HDR.REFCOUNT_TABLE_OFFSET);
    file.sync();
    h.refcountTableOffset = start * cs;
    h.refcountTableClusters = clusters;
    this.#tableDirty.clear();
    for (let c = 0; c < oldClusters; c++) this.#pendingFree.push(oldOffset / cs + c);
  }

  /** Takes `count` contiguous never-used clusters (refcount 1 each); returns the first index. */
  reserve(count: number): number {
    const start = this.#nextFree;
    this.#nextFree += count;
    for (let c = start; c < start + count; c++) this.set(c, 1);
    return start;
  }

  /** Allocates one cluster (refcount 1); returns its host offset. Sets {@link lastFresh}. */
  alloc(): number {
    for (;;) {
      const reused = this.#freeList.pop();
      const ci = reused ?? this.#nextFree++;
      if (this.get(ci) !== 0) continue;
      this.set(ci, 1);
      // nextFree starts past the end of the file and only grows, so a cluster
      // taken from it has never been written: it reads as zeros.
      this.lastFresh = reused === undefined;
      return ci * this.#cs;
    }
  }

  /** Queues host cluster `ci` to be freed after the next flush. */
  freeLater(ci: number): void {
    this.#pendingFree.push(ci);
  }

  #writeBlock(t: Table): void {
    writeTable(this.#host, t, META.REFCOUNT_BLOCK, "a refcount block write");
  }

  #writeBlocks(): void {
    this.#cache.writeAll((t) => this.#writeBlock(t));
  }

  /**
   * Writes the dirty blocks, then (after a sync, so that no table entry
   * names a block whose bytes are not on the disk yet) the dirty table
   * entries; no sync after.
   */
  write(): void {
    this.#writeBlocks();
    if (this.#tableDirty.size === 0) return;
    this.#host.file.sync();
    const e = new Uint8Array(8);
    const v = new DataView(e.buffer);
    const base = this.#host.header.refcountTableOffset;
    for (const bi of [...this.#tableDirty].sort((a, b) => a - b)) {
      v.setBigUint64(0, BigInt(this.#table[bi] ?? 0), false);
      this.#host.guard(base + bi * 8, 8, META.REFCOUNT_TABLE, "a refcount table write");
      this.#host.file.pwrite(e, base + bi * 8);
    }
    this.#tableDirty.clear();
  }

  /**
   * Releases the queued frees (step 4 of the flush order, after the sync):
   * refcounts drop, clusters reaching 0 become reusable.
   */
  releasePending(): void {
    if (this.#pendingFree.length === 0) return;
    const freed = this.#pendingFree;
    this.#pendingFree = [];
    for (const c of freed) {
      const rc = this.get(c);
      if (rc === 0) continue;
      this.set(c, rc - 1);
      if (rc === 1) {
        this.#freeList.push(c);
        this.#host.meta.forget(c);
      }
    }
  }
}
