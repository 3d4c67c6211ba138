/**
 * qcow2 table entries (L1, L2, refcount table): their bits, reading a table
 * of host offsets, compressed-cluster spans, and what the table code
 * (`l2_cache.ts`, `refcount.ts`) needs from its image.
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
  /** Flushes the whole image (before the L1 table moves). */
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
