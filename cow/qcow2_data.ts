/**
 * The guest-data path of a qcow2 image: reads through the L2 tables, writes
 * that allocate clusters (with copy-on-write from the backing image),
 * discards, and the allocation queries (`blockStatus`, `allocatedBytes`).
 * The image (`qcow2.ts`) checks its state (open, writable, not corrupt)
 * before it calls in here; the metadata these paths change is written back
 * by the image's flush in the order its module doc gives.
 *
 * @module
 */

import type { BlockStatus, DiskImage } from "./disk_image.ts";
import {
  checkRange,
  EXTENT_BACKING,
  EXTENT_DATA,
  EXTENT_OTHER,
  EXTENT_ZERO,
  ReadExtent,
} from "./disk_image.ts";
import { BlockRangeError, QcowError, UnsupportedFeatureError } from "./errors.ts";
import type { ImageFile } from "./file_io.ts";
import { isZero } from "./progress.ts";
import type { OverlapGuard } from "./qcow2_metadata.ts";
import type { Qcow2Header } from "./qcow2_format.ts";
import type { CompressedClusters } from "./qcow2_compressed.ts";
import type { L2Tables } from "./l2_cache.ts";
import type { Refcounts } from "./refcount.ts";
import type { Table } from "./table_cache.ts";
import {
  COMPRESSED_HI,
  compressedSpan,
  COPIED_HI,
  entryOffset,
  TWO32,
  ZERO_LO,
} from "./qcow2_tables.ts";

/** What the data path uses of its image. */
export interface DataHost {
  /** The image path, for messages. */
  readonly path: string;
  /** The image file. */
  readonly file: ImageFile;
  /** The parsed header. */
  readonly header: Qcow2Header;
  /** The L1 and L2 tables. */
  readonly l2: L2Tables;
  /** The refcounts and allocation. */
  readonly rc: Refcounts;
  /** The overlap checks. */
  readonly guard: OverlapGuard;
  /** Compressed-cluster reads. */
  readonly compressed: CompressedClusters;
  /** The virtual size in bytes (changes on grow). */
  size(): number;
  /** The backing image, or null (changes on setBacking). */
  backing(): DiskImage | null;
}

/** The guest-data path of one open image. */
export class Qcow2Data {
  #host: DataHost;
  #path: string;
  #file: ImageFile;
  #header: Qcow2Header;
  #l2: L2Tables;
  #rc: Refcounts;
  #guard: OverlapGuard;
  #compressed: CompressedClusters;
  #cs: number;
  #l2Entries: number;
  #scratch: Uint8Array;
  #zeros: Uint8Array;
  readonly #ext = new ReadExtent();
  #extHi = 0; // the L2 entry of the compressed cluster #extent last found
  #extLo = 0;

  /** The data path over `host`'s tables. */
  constructor(host: DataHost) {
    this.#host = host;
    this.#path = host.path;
    this.#file = host.file;
    this.#header = host.header;
    this.#l2 = host.l2;
    this.#rc = host.rc;
    this.#guard = host.guard;
    this.#compressed = host.compressed;
    this.#cs = 2 ** host.header.clusterBits;
    this.#l2Entries = this.#cs / 8;
    this.#scratch = new Uint8Array(this.#cs);
    this.#zeros = new Uint8Array(this.#cs);
  }

  /**
   * Fills `buf` with the backing's bytes at `offset` (zeros past its end or
   * without one); true when it filled zeros only, without reading.
   */
  #readBacking(offset: number, buf: Uint8Array): boolean {
    if (buf.length === 0) return true;
    const b = this.#host.backing();
    if (b === null || offset >= b.size) {
      buf.fill(0);
      return true;
    }
    const n = Math.min(buf.length, b.size - offset);
    b.readSync(offset, n === buf.length ? buf : buf.subarray(0, n));
    if (n < buf.length) buf.fill(0, n);
    return false;
  }

  #freeCompressed(hi: number, lo: number): void {
    const { offset, length } = compressedSpan(hi, lo, this.#header.clusterBits);
    const first = Math.floor(offset / this.#cs);
    const last = Math.floor((offset + length - 1) / this.#cs);
    for (let c = first; c <= last; c++) this.#rc.freeLater(c);
    this.#compressed.forget();
  }

  /**
   * Reads what this layer holds into `buf`; the ranges it leaves to the
   * backing image are read from it. Without `jobs` every read is synchronous;
   * with it, file reads go to the thread's io_uring and backing reads to the
   * backing's promise methods, and their promises are pushed to `jobs`.
   */
  read(offset: number, buf: Uint8Array, jobs: Promise<void>[] | null): void {
    const len = buf.length;
    checkRange("read", this.#path, offset, len, this.#host.size(), BlockRangeError);
    const ext = this.#ext;
    let pos = 0;
    while (pos < len) {
      const go = offset + pos;
      this.#extent(go, len - pos, ext);
      const n = ext.length;
      const part = pos === 0 && n === len ? buf : buf.subarray(pos, pos + n);
      if (ext.kind === EXTENT_DATA) {
        if (jobs === null) this.#file.readZeroFilled(part, ext.hostOffset);
        else jobs.push(this.#file.readAsync(part, ext.hostOffset));
      } else if (ext.kind === EXTENT_ZERO) part.fill(0);
      else if (ext.kind === EXTENT_BACKING) {
        if (jobs === null) this.#readBacking(go, part);
        else this.#readBackingAsync(go, part, jobs);
      } else {
        const data = this.#compressed.read(this.#extHi, this.#extLo);
        const inOff = go % this.#cs;
        part.set(data.subarray(inOff, inOff + n));
      }
      pos += n;
    }
  }

  /** {@link #readBacking} through the backing's promise methods; the read goes to `jobs`. */
  #readBackingAsync(offset: number, buf: Uint8Array, jobs: Promise<void>[]): void {
    const b = this.#host.backing();
    if (b === null || offset >= b.size) {
      buf.fill(0);
      return;
    }
    const n = Math.min(buf.length, b.size - offset);
    if (n < buf.length) buf.fill(0, n);
    // Not tracked here: the backing's own files count their requests, and the image's
    // close() closes an owned backing through its promise method, which waits for them.
    jobs.push(b.read(offset, n === buf.length ? buf : buf.subarray(0, n)));
  }

  /**
   * Where the first run of `[offset, offset + length)` is in this layer
   * (what {@link read} reads there): allocated clusters contiguous in the
   * file as one DATA run, a zero cluster, unallocated (BACKING), or OTHER for
   * a compressed cluster.
   */
  readExtent(offset: number, length: number, out: ReadExtent): void {
    checkRange("read", this.#path, offset, length, this.#host.size(), BlockRangeError);
    this.#extent(offset, length, out);
  }

  /** {@link readExtent} without the checks; a compressed cluster's entry goes to #extHi/#extLo. */
  #extent(offset: number, length: number, out: ReadExtent): void {
    const cs = this.#cs;
    const l2e = this.#l2Entries;
    const ci = Math.floor(offset / cs);
    const inOff = offset - ci * cs;
    const t = this.#l2.get(ci, false);
    if (t === null) {
      const l1i = Math.floor(ci / l2e);
      out.kind = EXTENT_BACKING;
      out.length = Math.min(length, (l1i + 1) * l2e * cs - offset);
      return;
    }
    // Entries of one cached slice; a run stops at its end (the next call goes on).
    let l2i = ci % this.#l2.sliceEntries;
    const end = this.#l2.sliceEntries;
    const v = t.view;
    const hi = v.getUint32(l2i * 8, false);
    const lo = v.getUint32(l2i * 8 + 4, false);
    let n = Math.min(cs - inOff, length);
    const host = entryOffset(hi, lo);
    if (hi & COMPRESSED_HI) {
      out.kind = EXTENT_OTHER;
      this.#extHi = hi;
      this.#extLo = lo;
    } else if (lo & ZERO_LO) out.kind = EXTENT_ZERO;
    else if (host === 0) out.kind = EXTENT_BACKING;
    else {
      // Clusters contiguous on the host make one run (one pread).
      let next = host + cs;
      while (n < length && l2i + 1 < end) {
        const h2 = v.getUint32((l2i + 1) * 8, false);
        const l2 = v.getUint32((l2i + 1) * 8 + 4, false);
        if ((h2 & COMPRESSED_HI) || (l2 & ZERO_LO) || entryOffset(h2, l2) !== next) break;
        n += Math.min(cs, length - n);
        next += cs;
        l2i++;
      }
      out.kind = EXTENT_DATA;
      out.fd = this.#file.fd;
      out.hostOffset = host + inOff;
    }
    out.length = n;
  }

  /** Writes `data` at `offset`, allocating clusters (with copy-on-write) as needed. */
  write(offset: number, data: Uint8Array): void {
    const len = data.length;
    checkRange("write", this.#path, offset, len, this.#host.size(), BlockRangeError);
    const cs = this.#cs;
    let pos = 0;
    while (pos < len) {
      const go = offset + pos;
      const ci = Math.floor(go / cs);
      const inOff = go - ci * cs;
      const n = Math.min(cs - inOff, len - pos);
      this.writeCluster(
        ci,
        inOff,
        pos === 0 && n === len ? data : data.subarray(pos, pos + n),
        null,
      );
      pos += n;
    }
  }

  /**
   * Whether writing `length` bytes into cluster `ci` needs the
   * backing image's bytes of that cluster (a partial write to a cluster this
   * layer does not hold): what the asynchronous path reads ahead.
   */
  needsBacking(ci: number, length: number): boolean {
    const cs = this.#cs;
    const b = this.#host.backing();
    if (length === cs || b === null || ci * cs >= b.size) return false;
    const t = this.#l2.get(ci, false);
    if (t === null) return true;
    const at = this.#l2.at(ci);
    const hi = t.view.getUint32(at, false);
    const lo = t.view.getUint32(at + 4, false);
    return (hi & COMPRESSED_HI) === 0 && (lo & ZERO_LO) === 0 && entryOffset(hi, lo) === 0;
  }

  /**
   * Writes `chunk` at `inOff` into cluster `ci`. `cow`, when given, holds the
   * backing image's bytes of the whole cluster (read ahead by the
   * asynchronous path) and is used, and overwritten, instead of reading the
   * backing image here.
   */
  writeCluster(ci: number, inOff: number, chunk: Uint8Array, cow: Uint8Array | null): void {
    const cs = this.#cs;
    const at = this.#l2.at(ci);
    const t = this.#l2.get(ci, true);
    if (t === null) throw new QcowError(`'${this.#path}': could not allocate an L2 table`);
    const v = t.view;
    const hi = v.getUint32(at, false);
    const lo = v.getUint32(at + 4, false);
    const compressed = (hi & COMPRESSED_HI) !== 0;
    const zero = !compressed && (lo & ZERO_LO) !== 0;
    const host = compressed ? 0 : entryOffset(hi, lo);
    if (!compressed && !zero && host !== 0) {
      if ((hi & COPIED_HI) === 0 && this.#rc.get(host / cs) !== 1) {
        throw new UnsupportedFeatureError(
          `'${this.#path}': cluster at ${host} is shared (refcount != 1); vmkit does not ` +
            `copy shared clusters`,
        );
      }
      this.#guard.checkData(host);
      this.#file.pwrite(chunk, host + inOff);
      return;
    }
    let buf: Uint8Array;
    let restZero = false;
    if (chunk.length === cs) {
      buf = chunk;
    } else {
      buf = this.#scratch;
      const tailAt = inOff + chunk.length;
      if (compressed) {
        buf.set(this.#compressed.read(hi, lo));
      } else if (zero) {
        buf.fill(0);
        restZero = true;
      } else if (cow !== null) {
        buf = cow;
        restZero = isZero(buf.subarray(0, inOff)) && isZero(buf.subarray(tailAt));
      } else {
        // Zeros filled for want of a backing need no scan (a fresh overlay's common case).
        const head = buf.subarray(0, inOff);
        const tail = buf.subarray(tailAt);
        const zeroHead = this.#readBacking(ci * cs, head);
        const zeroTail = this.#readBacking(ci * cs + tailAt, tail);
        restZero = (zeroHead || isZero(head)) && (zeroTail || isZero(tail));
      }
      buf.set(chunk, inOff);
    }
    let target: number;
    let fresh = false;
    if (zero && host !== 0 && this.#rc.get(host / cs) === 1) {
      target = host;
    } else {
      target = this.#rc.alloc();
      fresh = this.#rc.lastFresh;
    }
    this.#guard.checkData(target);
    // Like QEMU's zero-COW shortcut: a never-written cluster already reads as
    // zeros, so only the guest's bytes need writing when the rest is zero.
    if (fresh && restZero) this.#file.pwrite(chunk, target + inOff);
    else this.#file.pwrite(buf, target);
    v.setUint32(at, (COPIED_HI | Math.floor(target / TWO32)) >>> 0, false);
    v.setUint32(at + 4, target % TWO32, false);
    this.#l2.mark(t, at);
    if (compressed) this.#freeCompressed(hi, lo);
    else if (zero && host !== 0 && target !== host) this.#rc.freeLater(host / cs);
  }

  /** Deallocates whole clusters in the range; partial clusters are zero-written. */
  discard(offset: number, length: number): void {
    checkRange("discard", this.#path, offset, length, this.#host.size(), BlockRangeError);
    if (length === 0) return;
    const cs = this.#cs;
    const end = offset + length;
    const start = Math.ceil(offset / cs) * cs;
    const alignedEnd = end === this.#host.size()
      ? Math.ceil(end / cs) * cs
      : Math.floor(end / cs) * cs;
    if (start >= alignedEnd) {
      this.#writeZeros(offset, length);
      return;
    }
    if (start > offset) this.#writeZeros(offset, start - offset);
    if (alignedEnd < end) this.#writeZeros(alignedEnd, end - alignedEnd);
    for (let ci = start / cs; ci < alignedEnd / cs; ci++) this.discardCluster(ci);
  }

  #writeZeros(offset: number, length: number): void {
    for (let done = 0; done < length;) {
      const n = Math.min(this.#zeros.length, length - done);
      this.write(offset + done, this.#zeros.subarray(0, n));
      done += n;
    }
  }

  discardCluster(ci: number): void {
    const at = this.#l2.at(ci);
    const hasBacking = this.#host.backing() !== null || this.#header.backingFile !== null;
    const t = this.#l2.get(ci, hasBacking);
    if (t === null) return;
    const v = t.view;
    const hi = v.getUint32(at, false);
    const lo = v.getUint32(at + 4, false);
    const newLo = hasBacking ? ZERO_LO : 0;
    if (hi === 0 && lo === newLo) return;
    if (hi & COMPRESSED_HI) {
      this.#freeCompressed(hi, lo);
    } else {
      const host = entryOffset(hi, lo);
      if (host !== 0) this.#rc.freeLater(host / this.#cs);
    }
    v.setUint32(at, 0, false);
    v.setUint32(at + 4, newLo, false);
    this.#l2.mark(t, at);
  }

  /** This layer's allocation at `offset`: one run of equal kind, up to `length` bytes. */
  blockStatus(offset: number, length: number): BlockStatus {
    checkRange("block status", this.#path, offset, length, this.#host.size(), BlockRangeError);
    const cs = this.#cs;
    const l2e = this.#l2Entries;
    let kind: BlockStatus["kind"] | null = null;
    let pos = 0;
    while (pos < length) {
      const go = offset + pos;
      const ci = Math.floor(go / cs);
      const t = this.#l2.get(ci, false);
      let k: BlockStatus["kind"];
      let n: number;
      if (t === null) {
        // A whole L2 range without a table: one step, not one per cluster.
        const l1i = Math.floor(ci / l2e);
        k = "unallocated";
        n = Math.min((l1i + 1) * l2e * cs - go, length - pos);
      } else {
        k = kindOf(t, this.#l2.at(ci));
        n = Math.min(cs - (go - ci * cs), length - pos);
      }
      if (kind === null) kind = k;
      else if (k !== kind) break;
      pos += n;
    }
    return { kind: kind ?? "unallocated", length: Math.max(pos, 0) };
  }

  /** Bytes of guest data this layer holds (data clusters, not zero clusters). */
  allocatedBytes(): number {
    let clusters = 0;
    const total = Math.ceil(this.#host.size() / this.#cs);
    // Walk the L2 tables the L1 names; unallocated ranges cost nothing.
    const per = this.#l2.sliceEntries;
    for (let l1i = 0; l1i < this.#l2.length; l1i++) {
      if (!this.#l2.allocated(l1i)) continue;
      const last = Math.min((l1i + 1) * this.#l2Entries, total);
      for (let ci = l1i * this.#l2Entries; ci < last; ci += per) {
        const t = this.#l2.get(ci, false);
        if (t === null) continue;
        const n = Math.min(per, last - ci);
        for (let i = 0; i < n; i++) if (kindOf(t, i * 8) === "data") clusters++;
      }
    }
    return clusters * this.#cs;
  }
}

/** The kind of the L2 entry at byte `at` of table `t`. */
function kindOf(t: Table, at: number): BlockStatus["kind"] {
  const hi = t.view.getUint32(at, false);
  const lo = t.view.getUint32(at + 4, false);
  if (hi & COMPRESSED_HI) return "data";
  if (lo & ZERO_LO) return "zero";
  return entryOffset(hi, lo) === 0 ? "unallocated" : "data";
}
