/**
 * The write-back cache of qcow2 table clusters (L2 tables, refcount blocks)
 * that `l2_cache.ts` and `refcount.ts` share.
 *
 * A full cache makes room one table at a time and never flushes the image:
 * it drops the least recently used clean table, and only when every cached
 * table is dirty does it write back one, the one dirtied first, through the
 * owner's `writeBack` (which orders that write: see `l2_cache.ts`). A table
 * tracks which of its 4 KiB pages changed, and write-back writes only
 * those, so an L2 table holding a few new entries costs a page, not a
 * cluster (a table in a never-written cluster reads as zeros elsewhere).
 *
 * @module
 */

import type { TableHost } from "./qcow2_tables.ts";

/** Bytes per dirty-tracking page (the file system's block; a cluster when smaller). */
const PAGE = 4096;

/** One cached table cluster. */
export interface Table {
  /** Its index (L1 index or refcount-table index). */
  readonly key: number;
  /** Host offset of the cluster. */
  offset: number;
  /** Its bytes. */
  readonly data: Uint8Array;
  /** A view of `data`. */
  readonly view: DataView;
  /** Changed since it was last written. */
  dirty: boolean;
  /** One byte per page: 1 when the page changed since it was last written. */
  readonly pages: Uint8Array;
  /** The owner's write-order epoch of the last change (see `l2_cache.ts`). */
  epoch: number;
}

/** Bytes of table memory allocated at once (one ArrayBuffer carved into tables). */
const SLAB = 1 << 20;

/**
 * Writes the changed pages of `t` (contiguous pages as one write), after
 * the overlap check for structure `kind`; `t` is clean afterwards. No sync.
 */
export function writeTable(host: TableHost, t: Table, kind: number, what: string): void {
  const pages = t.pages;
  const size = t.data.length;
  for (let p = 0; p < pages.length;) {
    if (pages[p] === 0) {
      p++;
      continue;
    }
    let q = p;
    while (q < pages.length && pages[q] !== 0) pages[q++] = 0;
    const from = p * PAGE;
    const to = Math.min(q * PAGE, size);
    host.guard(t.offset + from, to - from, kind, what);
    host.file.pwrite(
      from === 0 && to === size ? t.data : t.data.subarray(from, to),
      t.offset + from,
    );
    p = q;
  }
  t.dirty = false;
}

/**
 * Table clusters by key, at most `capacity` of them: clean ones in least
 * recently used order, dirty ones in the order they were first dirtied.
 * Table memory comes from 1 MiB slabs and is reused once a table leaves
 * the cache (a `Table` must not be kept past the next call that may load
 * or allocate a table of the same cache).
 */
export class TableCache {
  #clean = new Map<number, Table>();
  #dirty = new Map<number, Table>();
  #capacity: number;
  #size: number;
  #writeBack: (t: Table) => void;
  /** Tables evicted, whose memory the next {@link take} reuses. */
  #free: Table[] = [];
  #slab = new ArrayBuffer(0);
  #slabAt = 0;

  /**
   * Creates a cache of `capacity` tables of `size` bytes; `writeBack(t)`
   * writes dirty table `t` when it must leave a full cache (and leaves it
   * clean).
   */
  constructor(capacity: number, size: number, writeBack: (t: Table) => void) {
    this.#capacity = Math.max(1, capacity);
    this.#size = size;
    this.#writeBack = writeBack;
  }

  /**
   * A clean table for `key` at host offset `offset`, not cached yet (see
   * {@link set}): all zeros when `zero`, else of unspecified bytes that the
   * caller overwrites (a read).
   */
  take(key: number, offset: number, zero: boolean): Table {
    const old = this.#free.pop();
    if (old !== undefined) {
      if (zero) old.data.fill(0);
      old.pages.fill(0);
      return { ...old, key, offset, dirty: false, epoch: 0 };
    }
    const size = this.#size;
    if (this.#slabAt + size > this.#slab.byteLength) {
      this.#slab = new ArrayBuffer(Math.max(SLAB, size));
      this.#slabAt = 0;
    }
    const at = this.#slabAt;
    this.#slabAt += size;
    return {
      key,
      offset,
      data: new Uint8Array(this.#slab, at, size),
      view: new DataView(this.#slab, at, size),
      dirty: false,
      pages: new Uint8Array(Math.ceil(size / PAGE)),
      epoch: 0,
    };
  }

  /** The cached table at `key`, if any (a clean one becomes the most recently used). */
  get(key: number): Table | undefined {
    const c = this.#clean.get(key);
    if (c === undefined) return this.#dirty.get(key);
    this.#clean.delete(key);
    this.#clean.set(key, c);
    return c;
  }

  /** Caches `t`, making room first when full. */
  set(t: Table): void {
    while (this.#clean.size + this.#dirty.size >= this.#capacity) this.#evict();
    if (t.dirty) this.#dirty.set(t.key, t);
    else this.#clean.set(t.key, t);
  }

  #evict(): void {
    for (const t of this.#clean.values()) {
      this.#clean.delete(t.key);
      this.#free.push(t);
      return;
    }
    for (const t of this.#dirty.values()) {
      this.#writeBack(t);
      this.#dirty.delete(t.key);
      this.#free.push(t);
      return;
    }
  }

  /** Marks bytes `[at, at + length)` of cached table `t` changed in epoch `epoch`. */
  mark(t: Table, at: number, length: number, epoch: number): void {
    const last = Math.floor((at + length - 1) / PAGE);
    for (let p = Math.floor(at / PAGE); p <= last; p++) t.pages[p] = 1;
    t.epoch = epoch;
    if (t.dirty) return;
    t.dirty = true;
    this.#clean.delete(t.key);
    this.#dirty.set(t.key, t);
  }

  /** Marks all of `t` changed (a table in a cluster that held other bytes before). */
  markAll(t: Table, epoch: number): void {
    this.mark(t, 0, t.data.length, epoch);
  }

  /** Number of dirty tables. */
  get dirtyCount(): number {
    return this.#dirty.size;
  }

  /** Writes every dirty table with `write` (oldest first); they are clean afterwards. */
  writeAll(write: (t: Table) => void): void {
    for (const t of this.#dirty.values()) {
      write(t);
      this.#clean.set(t.key, t);
    }
    this.#dirty.clear();
  }
}
