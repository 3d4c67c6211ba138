/**
 * qcow2 table entries and the write-back cache of table clusters (L2
 * tables, refcount blocks) that `l2_cache.ts` and `refcount.ts` share.
 *
 * @module
 */

import { QcowError } from "./errors.ts";
import type { ImageFile } from "./file_io.ts";
import type { MetadataMap } from "./qcow2_metadata.ts";
import type { Qcow2Header } from "./qcow2_format.ts";

/** What the L2 tables and the refcounts need from their image. */
export interface TableHost {
  /** The image path, for messages. */
  readonly path: string;
  /** The image file. */
  readonly file: ImageFile;
  /** The header (table fields change when a table moves). */
  readonly header: Qcow2Header;
  /** The image's metadata clusters. */
  readonly meta: MetadataMap;
  /** Throws (and marks the image corrupt) when a write would hit other metadata. */
  guard(offset: number, length: number, allowed: number, what: string): void;
  /** Flushes the whole image (called when every cached table is dirty). */
  flushSync(): void;
}

/** 2^32, to combine the two 32-bit halves of a 64-bit entry. */
export const TWO32: number = 2 ** 32;
/** L1/L2 entry bit 63 (high word): refcount is exactly one. */
export const COPIED_HI = 0x80000000;
/** L2 entry bit 62 (high word): compressed cluster. */
export const COMPRESSED_HI = 0x40000000;
/** Offset bits 32..55 in the high word. */
export const OFFSET_HI = 0x00ffffff;
/** Offset bits 9..31 in the low word. */
export const OFFSET_LO = 0xfffffe00;
/** L2 entry bit 0: reads as zeros (v3). */
export const ZERO_LO = 1;

/** The host offset in an uncompressed L1/L2 entry given as its two halves. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & OFFSET_HI) * TWO32 + ((lo & OFFSET_LO) >>> 0);
}

/**
 * Reads a table of `entries` 64-bit host offsets (the L1 table, the refcount
 * table) at `offset`, checking each is cluster aligned and inside the file.
 */
export function readOffsetTable(
  file: ImageFile,
  offset: number,
  entries: number,
  what: string,
  clusterSize: number,
): Float64Array {
  const out = new Float64Array(entries);
  if (entries === 0) return out;
  const fileLength = file.length();
  const bytes = new Uint8Array(entries * 8);
  file.readZeroFilled(bytes, offset);
  const v = new DataView(bytes.buffer);
  for (let i = 0; i < entries; i++) {
    const hi = v.getUint32(i * 8, false);
    const lo = v.getUint32(i * 8 + 4, false);
    if (hi === 0 && lo === 0) continue;
    const off = entryOffset(hi, lo);
    if (off % clusterSize !== 0) {
      throw new QcowError(`'${file.path}': ${what} entry ${i} (${off}) is not cluster aligned`);
    }
    if (off !== 0 && off >= fileLength) {
      throw new QcowError(
        `'${file.path}': ${what} entry ${i} points past the end of the file (${off})`,
      );
    }
    out[i] = off;
  }
  return out;
}

/** One cached table cluster. */
export interface Table {
  /** Host offset of the cluster. */
  offset: number;
  /** Its bytes. */
  data: Uint8Array;
  /** A view of `data`. */
  view: DataView;
  /** Changed since it was last written. */
  dirty: boolean;
}

/** A new table of `size` bytes at `offset`, all zeros. */
export function newTable(offset: number, size: number, dirty: boolean): Table {
  const data = new Uint8Array(size);
  return { offset, data, view: new DataView(data.buffer), dirty };
}

/**
 * Table clusters by index (L1 index or refcount-table index), at most
 * `capacity` of them. Only clean tables are evicted; when every one is
 * dirty, `flush` (the image's flush, which writes them in a crash-safe
 * order) is called first.
 */
export class TableCache {
  #map = new Map<number, Table>();
  #capacity: number;
  #flush: () => void;

  /** Creates a cache of `capacity` tables calling `flush` under pressure. */
  constructor(capacity: number, flush: () => void) {
    this.#capacity = capacity;
    this.#flush = flush;
  }

  /** The cached table at `key`, if any. */
  get(key: number): Table | undefined {
    return this.#map.get(key);
  }

  /** Caches `t` at `key`, evicting a clean table when full. */
  set(key: number, t: Table): void {
    if (this.#map.size >= this.#capacity) {
      let victim = this.#cleanVictim();
      if (victim === undefined) {
        this.#flush();
        victim = this.#cleanVictim();
      }
      if (victim !== undefined) this.#map.delete(victim);
    }
    this.#map.set(key, t);
  }

  #cleanVictim(): number | undefined {
    for (const [k, v] of this.#map) if (!v.dirty) return k;
    return undefined;
  }
}

/**
 * Where a compressed cluster's bytes lie: an L2 entry with bit 62 set holds
 * the host offset in its low `62 - (clusterBits - 8)` bits and the number of
 * additional 512-byte sectors above them.
 */
export function compressedSpan(
  hi: number,
  lo: number,
  clusterBits: number,
): { offset: number; length: number } {
  const entry = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
  const x = BigInt(62 - (clusterBits - 8));
  const offset = Number(entry & ((1n << x) - 1n));
  const sectors = Number((entry >> x) & ((1n << (62n - x)) - 1n)) + 1;
  const length = sectors * 512 - (offset % 512);
  return { offset, length };
}
