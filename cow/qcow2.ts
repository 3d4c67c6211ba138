/**
 * qcow2 images (version 3; version 2 read-only): create, open, read, write,
 * zero clusters, discard, grow, flush, compressed-cluster reads.
 *
 * Metadata is cached write-back, and `flush` orders it the way QEMU does so
 * that a crash at any write point leaves at most leaked clusters:
 *
 * 1. guest data and copy-on-write data are written to their new clusters at
 *    once (before any metadata refers to them);
 * 2. on flush, dirty refcount blocks and refcount-table entries are written,
 *    then `fdatasync` (data + refcounts durable);
 * 3. then dirty L2 tables, then dirty L1 entries, then `fdatasync`;
 * 4. only then are clusters freed by discard/overwrite released (their
 *    refcount decremented, reuse allowed): a cluster is never reused while
 *    a durable L2 entry may still point at it.
 *
 * @module
 */

import { inflateRawSync } from "node:zlib";
import type { BlockStatus, DiskImage } from "./disk_image.ts";
import { checkRange, SyncDiskImage } from "./disk_image.ts";
import {
  BackingChainError,
  BlockRangeError,
  QcowError,
  UnsupportedFeatureError,
} from "./errors.ts";
import { type FaultInjector, ImageFile } from "./file_io.ts";
import { isZero } from "./progress.ts";
import {
  buildHeader,
  HDR,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  parseHeader,
  type Qcow2Header,
} from "./qcow2_format.ts";

const TWO32 = 2 ** 32;
/** L1/L2 entry bit 63 (high word): refcount is exactly one. */
const COPIED_HI = 0x80000000;
/** L2 entry bit 62 (high word): compressed cluster. */
const COMPRESSED_HI = 0x40000000;
/** Offset bits 32..55 in the high word. */
const OFFSET_HI = 0x00ffffff;
/** Offset bits 9..31 in the low word. */
const OFFSET_LO = 0xfffffe00;
/** L2 entry bit 0: reads as zeros (v3). */
const ZERO_LO = 1;
/** Default bytes of L2 tables and refcount blocks each cached in memory. */
const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;

interface Table {
  offset: number;
  data: Uint8Array;
  view: DataView;
  dirty: boolean;
}

function cleanVictim(map: Map<number, Table>): number | undefined {
  for (const [k, v] of map) if (!v.dirty) return k;
  return undefined;
}

/** Options for {@link Qcow2Image.open}. */
export interface Qcow2OpenOptions {
  /** Open read-only (default false). */
  readOnly?: boolean;
  /** Fault injection for crash tests. */
  faults?: FaultInjector;
  /**
   * The opened backing image, or null to read unallocated clusters as zeros.
   * Required (may be null) when the header names a backing file; chains are
   * normally opened with `openImage` from `chain.ts`.
   */
  backing?: DiskImage | null;
  /** Whether closing this image closes `backing` too (default true). */
  ownsBacking?: boolean;
  /** Bytes of L2 tables (and, separately, refcount blocks) to cache (default 32 MiB). */
  cacheBytes?: number;
}

/** Options for {@link Qcow2Image.create}. */
export interface Qcow2CreateOptions {
  /** Virtual size in bytes (rounded up to a multiple of 512, as qemu-img does). */
  size: number;
  /** Cluster size in bytes, a power of two from 512 B to 2 MiB (default 64 KiB). */
  clusterSize?: number;
  /** Backing file name to store (relative names resolve from the image's folder). */
  backingFile?: string;
  /** Backing format to store in the header extension. */
  backingFormat?: "raw" | "qcow2";
}

/** A qcow2 image file as a {@link DiskImage}. */
export class Qcow2Image extends SyncDiskImage {
  /** Always "qcow2". */
  readonly format: "qcow2" = "qcow2";
  /** The path the image was opened with. */
  readonly path: string;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  #file: ImageFile;
  #h: Qcow2Header;
  #cs: number;
  #l2Entries: number;
  #size: number;
  #backing: DiskImage | null;
  #ownsBacking: boolean;
  #l1: Float64Array;
  #l1Dirty = new Set<number>();
  #l2 = new Map<number, Table>();
  #l2DirtySet = new Set<Table>();
  #rcTable: Float64Array;
  #rcTableDirty = new Set<number>();
  #rc = new Map<number, Table>();
  #rcDirtySet = new Set<Table>();
  #rcPer: number;
  #rcOrder: number;
  #nextFree: number;
  #freeList: number[] = [];
  #pendingFree: number[] = [];
  #scratch: Uint8Array;
  #zeros: Uint8Array;
  #cacheTables: number;
  #lastCompressed: { hi: number; lo: number; data: Uint8Array } | null = null;
  #closed = false;
  /** Whether the last #allocCluster came from never-written space (reads as zeros). */
  #lastFresh = false;

  private constructor(file: ImageFile, h: Qcow2Header, options: Qcow2OpenOptions) {
    super();
    this.path = file.path;
    this.#file = file;
    this.readOnly = options.readOnly ?? false;
    this.#h = h;
    this.#cs = 2 ** h.clusterBits;
    this.#l2Entries = this.#cs / 8;
    this.#size = h.size;
    this.#backing = options.backing ?? null;
    this.#ownsBacking = options.ownsBacking ?? true;
    this.#rcOrder = h.refcountOrder;
    this.#rcPer = (this.#cs * 8) / (1 << h.refcountOrder);
    this.#scratch = new Uint8Array(this.#cs);
    this.#zeros = new Uint8Array(this.#cs);
    this.#cacheTables = Math.max(
      8,
      Math.floor((options.cacheBytes ?? DEFAULT_CACHE_BYTES) / this.#cs),
    );
    const fileLength = file.length();
    this.#nextFree = Math.ceil(fileLength / this.#cs);
    this.#l1 = this.#readOffsetTable(h.l1TableOffset, h.l1Size, "L1 table", fileLength);
    this.#rcTable = this.#readOffsetTable(
      h.refcountTableOffset,
      (h.refcountTableClusters * this.#cs) / 8,
      "refcount table",
      fileLength,
    );
  }

  /** Opens an existing qcow2 file (not its backing file: see `openImage`). */
  static open(path: string, options: Qcow2OpenOptions = {}): Qcow2Image {
    const readOnly = options.readOnly ?? false;
    const file = ImageFile.open(path, {
      readOnly,
      ...(options.faults ? { faults: options.faults } : {}),
    });
    try {
      const len = file.length();
      const first = new Uint8Array(Math.min(len, 4096));
      file.pread(first, 0);
      let head = first;
      if (first.length >= 24) {
        const bits = new DataView(first.buffer).getUint32(HDR.CLUSTER_BITS, false);
        if (bits > 12 && bits <= MAX_CLUSTER_BITS) {
          head = new Uint8Array(Math.min(len, 2 ** bits));
          file.pread(head, 0);
        }
      }
      const h = parseHeader(head, path, len);
      if (!readOnly && h.version < 3) {
        throw new UnsupportedFeatureError(
          `'${path}' is qcow2 version 2: vmkit opens it read-only; upgrade it with ` +
            `'qemu-img amend -o compat=1.1 ${path}' to write`,
        );
      }
      if (!readOnly && h.nbSnapshots > 0) {
        throw new UnsupportedFeatureError(
          `'${path}' has ${h.nbSnapshots} internal snapshots: vmkit opens it read-only; ` +
            `remove them with 'qemu-img snapshot -d' to write`,
        );
      }
      if (h.backingFile !== null && options.backing === undefined) {
        throw new BackingChainError(
          `'${path}' has backing file '${h.backingFile}': open it with openImage() ` +
            `so the chain is opened too`,
        );
      }
      const img = new Qcow2Image(file, h, options);
      if (!readOnly && h.autoclear !== 0n) {
        // Spec: a writer that does not maintain autoclear features must clear them.
        const bytes = new Uint8Array(8);
        file.pwrite(bytes, HDR.AUTOCLEAR_FEATURES);
        file.sync();
        h.autoclear = 0n;
      }
      return img;
    } catch (err) {
      file.close();
      throw err;
    }
  }

  /** Writes a new, empty qcow2 v3 file at `path` (replacing any file there). */
  static create(path: string, options: Qcow2CreateOptions): void {
    const cs = options.clusterSize ?? 65536;
    const bits = Math.log2(cs);
    if (!Number.isInteger(bits) || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
      throw new QcowError(`cluster size ${cs} is not a power of two from 512 to 2097152 bytes`);
    }
    if (!Number.isSafeInteger(options.size) || options.size < 0 || options.size > 2 ** 50) {
      throw new QcowError(`image size ${options.size} must be an integer from 0 to 2^50 bytes`);
    }
    // Like qemu-img create: virtual sizes are whole 512-byte sectors.
    const size = Math.ceil(options.size / 512) * 512;
    const l2Entries = cs / 8;
    const l1Size = Math.ceil(size / (l2Entries * cs));
    const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
    const rcPer = cs / 2; // 16-bit refcounts
    let t = 1;
    let b = 1;
    for (;;) {
      const n = 1 + t + l1Clusters + b;
      const nb = Math.ceil(n / rcPer);
      const nt = Math.ceil((nb * 8) / cs);
      if (nb === b && nt === t) break;
      b = nb;
      t = nt;
    }
    const total = 1 + t + l1Clusters + b;
    const l1Offset = (1 + t) * cs;
    const header = buildHeader({
      clusterBits: bits,
      size,
      l1Size,
      l1TableOffset: l1Offset,
      refcountTableOffset: cs,
      refcountTableClusters: t,
      refcountOrder: 4,
      backingFile: options.backingFile ?? null,
      backingFormat: options.backingFile !== undefined ? options.backingFormat ?? null : null,
    });
    const table = new Uint8Array(t * cs);
    const tv = new DataView(table.buffer);
    const firstBlock = 1 + t + l1Clusters;
    for (let i = 0; i < b; i++) tv.setBigUint64(i * 8, BigInt((firstBlock + i) * cs), false);
    const blocks = new Uint8Array(b * cs);
    const bv = new DataView(blocks.buffer);
    for (let c = 0; c < total; c++) bv.setUint16(c * 2, 1, false);
    const file = ImageFile.open(path, { create: true, truncate: true });
    try {
      file.truncate(total * cs);
      file.pwrite(header, 0);
      file.pwrite(table, cs);
      file.pwrite(blocks, firstBlock * cs);
      file.sync();
    } finally {
      file.close();
    }
  }

  /** Virtual size in bytes. */
  get size(): number {
    return this.#size;
  }
  /** Cluster size in bytes. */
  get clusterSize(): number {
    return this.#cs;
  }
  /** The image this one reads unallocated clusters from, or null. */
  get backing(): DiskImage | null {
    return this.#backing;
  }
  /** The backing file name stored in the header, or null. */
  get backingFile(): string | null {
    return this.#h.backingFile;
  }
  /** The backing format stored in the header, or null. */
  get backingFormat(): string | null {
    return this.#h.backingFormat;
  }
  /** qcow2 version (2 or 3). */
  get version(): number {
    return this.#h.version;
  }
  /** Refcount width in bits. */
  get refcountBits(): number {
    return 1 << this.#rcOrder;
  }
  /** Host file length in bytes. */
  get fileLength(): number {
    return this.#file.length();
  }

  // ---- tables -------------------------------------------------------------

  #readOffsetTable(
    offset: number,
    entries: number,
    what: string,
    fileLength: number,
  ): Float64Array {
    const out = new Float64Array(entries);
    if (entries === 0) return out;
    const bytes = new Uint8Array(entries * 8);
    this.#file.readZeroFilled(bytes, offset);
    const v = new DataView(bytes.buffer);
    for (let i = 0; i < entries; i++) {
      const hi = v.getUint32(i * 8, false);
      const lo = v.getUint32(i * 8 + 4, false);
      const off = (hi & OFFSET_HI) * TWO32 + ((lo & OFFSET_LO) >>> 0);
      if (off % this.#cs !== 0) {
        throw new QcowError(`'${this.path}': ${what} entry ${i} (${off}) is not cluster aligned`);
      }
      if (off !== 0 && off >= fileLength) {
        throw new QcowError(
          `'${this.path}': ${what} entry ${i} points past the end of the file (${off})`,
        );
      }
      out[i] = off;
    }
    return out;
  }

  #loadTable(offset: number, what: string): Table {
    const data = new Uint8Array(this.#cs);
    const n = this.#file.pread(data, offset);
    if (n < this.#cs) {
      throw new QcowError(`'${this.path}': ${what} at ${offset} is cut off by the end of the file`);
    }
    return { offset, data, view: new DataView(data.buffer), dirty: false };
  }

  #insert(map: Map<number, Table>, key: number, t: Table): void {
    if (map.size >= this.#cacheTables) {
      // Only clean tables are evicted; a dirty one is written by a flush first.
      let victim = cleanVictim(map);
      if (victim === undefined) {
        this.flushSync();
        victim = cleanVictim(map);
      }
      if (victim !== undefined) map.delete(victim);
    }
    map.set(key, t);
  }

  #getL2(l1i: number, alloc: boolean): Table | null {
    const cached = this.#l2.get(l1i);
    if (cached !== undefined) return cached;
    const off = this.#l1[l1i] ?? 0;
    let t: Table;
    if (off === 0) {
      if (!alloc) return null;
      const host = this.#allocCluster();
      const data = new Uint8Array(this.#cs);
      t = { offset: host, data, view: new DataView(data.buffer), dirty: false };
      this.#l1[l1i] = host;
      this.#l1Dirty.add(l1i);
      this.#markL2(t);
    } else {
      t = this.#loadTable(off, `L2 table ${l1i}`);
    }
    this.#insert(this.#l2, l1i, t);
    return t;
  }

  #markL2(t: Table): void {
    t.dirty = true;
    this.#l2DirtySet.add(t);
  }

  // ---- refcounts ----------------------------------------------------------

  #getRcBlock(bi: number): Table | null {
    const cached = this.#rc.get(bi);
    if (cached !== undefined) return cached;
    const off = this.#rcTable[bi] ?? 0;
    if (off === 0) return null;
    const t = this.#loadTable(off, `refcount block ${bi}`);
    this.#insert(this.#rc, bi, t);
    return t;
  }

  /** Refcount of host cluster `ci`. */
  #refcount(ci: number): number {
    const bi = Math.floor(ci / this.#rcPer);
    if (bi >= this.#rcTable.length) return 0;
    const blk = this.#getRcBlock(bi);
    if (blk === null) return 0;
    const i = ci - bi * this.#rcPer;
    const v = blk.view;
    switch (this.#rcOrder) {
      case 4:
        return v.getUint16(i * 2, false);
      case 3:
        return v.getUint8(i);
      case 5:
        return v.getUint32(i * 4, false);
      case 6:
        return Number(v.getBigUint64(i * 8, false));
      default: {
        const bits = 1 << this.#rcOrder;
        const per = 8 / bits;
        const byte = v.getUint8(Math.floor(i / per));
        return (byte >> ((i % per) * bits)) & ((1 << bits) - 1);
      }
    }
  }

  #setRefcount(ci: number, value: number): void {
    const bi = Math.floor(ci / this.#rcPer);
    if (bi >= this.#rcTable.length) this.#growRefcountTable(bi);
    if ((this.#rcTable[bi] ?? 0) === 0) this.#createRcBlock(bi);
    const blk = this.#getRcBlock(bi);
    if (blk === null) throw new QcowError(`'${this.path}': refcount block ${bi} vanished`);
    const i = ci - bi * this.#rcPer;
    const v = blk.view;
    const max = this.#rcOrder >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << this.#rcOrder) - 1;
    if (value > max) {
      throw new QcowError(`'${this.path}': refcount of cluster ${ci} would overflow ${max}`);
    }
    switch (this.#rcOrder) {
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
        const bits = 1 << this.#rcOrder;
        const per = 8 / bits;
        const at = Math.floor(i / per);
        const shift = (i % per) * bits;
        const mask = ((1 << bits) - 1) << shift;
        v.setUint8(at, (v.getUint8(at) & ~mask) | (value << shift));
      }
    }
    blk.dirty = true;
    this.#rcDirtySet.add(blk);
  }

  #createRcBlock(bi: number): void {
    let nb: number;
    do nb = this.#nextFree++; while (this.#refcount(nb) !== 0);
    const data = new Uint8Array(this.#cs);
    const t: Table = { offset: nb * this.#cs, data, view: new DataView(data.buffer), dirty: true };
    this.#rcDirtySet.add(t);
    this.#rcTable[bi] = nb * this.#cs;
    this.#rcTableDirty.add(bi);
    this.#insert(this.#rc, bi, t);
    this.#setRefcount(nb, 1);
  }

  /**
   * Moves the refcount table to a bigger place. Rare (a 64 KiB-cluster image
   * needs it past 16 TiB of allocation), done synchronously: new blocks and
   * the new table are written and synced before the header points at them.
   */
  #growRefcountTable(minIndex: number): void {
    const cs = this.#cs;
    const oldOffset = this.#h.refcountTableOffset;
    const oldClusters = this.#h.refcountTableClusters;
    const wanted = Math.max(this.#rcTable.length * 2, minIndex + 1);
    const clusters = Math.ceil((wanted * 8) / cs);
    const table = new Float64Array((clusters * cs) / 8);
    table.set(this.#rcTable);
    this.#rcTable = table;
    const start = this.#nextFree;
    this.#nextFree += clusters;
    for (let c = start; c < start + clusters; c++) this.#setRefcount(c, 1);
    // Blocks only: dirty table entries may lie past the end of the old table,
    // they reach the disk inside the new table written below.
    this.#writeRefcountBlocks();
    const bytes = new Uint8Array(clusters * cs);
    const v = new DataView(bytes.buffer);
    for (let i = 0; i < table.length; i++) v.setBigUint64(i * 8, BigInt(table[i] ?? 0), false);
    this.#file.pwrite(bytes, start * cs);
    this.#file.sync();
    const hdr = new Uint8Array(12);
    const hv = new DataView(hdr.buffer);
    hv.setBigUint64(0, BigInt(start * cs), false);
    hv.setUint32(8, clusters, false);
    this.#file.pwrite(hdr, HDR.REFCOUNT_TABLE_OFFSET);
    this.#file.sync();
    this.#h.refcountTableOffset = start * cs;
    this.#h.refcountTableClusters = clusters;
    this.#rcTableDirty.clear();
    for (let c = 0; c < oldClusters; c++) this.#pendingFree.push(oldOffset / cs + c);
  }

  #allocCluster(): number {
    for (;;) {
      const reused = this.#freeList.pop();
      const ci = reused ?? this.#nextFree++;
      if (this.#refcount(ci) !== 0) continue;
      this.#setRefcount(ci, 1);
      // nextFree starts past the end of the file and only grows, so a cluster
      // taken from it has never been written: it reads as zeros.
      this.#lastFresh = reused === undefined;
      return ci * this.#cs;
    }
  }

  #writeRefcountBlocks(): void {
    for (const t of this.#rcDirtySet) {
      this.#file.pwrite(t.data, t.offset);
      t.dirty = false;
    }
    this.#rcDirtySet.clear();
  }

  #writeRefcounts(): void {
    this.#writeRefcountBlocks();
    if (this.#rcTableDirty.size > 0) {
      const e = new Uint8Array(8);
      const v = new DataView(e.buffer);
      for (const bi of [...this.#rcTableDirty].sort((a, b) => a - b)) {
        v.setBigUint64(0, BigInt(this.#rcTable[bi] ?? 0), false);
        this.#file.pwrite(e, this.#h.refcountTableOffset + bi * 8);
      }
      this.#rcTableDirty.clear();
    }
  }

  // ---- guest I/O ----------------------------------------------------------

  #writable(what: string): void {
    if (this.#closed) throw new QcowError(`cannot ${what} '${this.path}': image is closed`);
    if (this.readOnly) throw new QcowError(`cannot ${what} '${this.path}': opened read-only`);
  }

  #readBacking(offset: number, buf: Uint8Array): void {
    if (buf.length === 0) return;
    const b = this.#backing;
    if (b === null || offset >= b.size) {
      buf.fill(0);
      return;
    }
    const n = Math.min(buf.length, b.size - offset);
    b.readSync(offset, n === buf.length ? buf : buf.subarray(0, n));
    if (n < buf.length) buf.fill(0, n);
  }

  #compressedSpan(hi: number, lo: number): { offset: number; length: number } {
    const entry = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
    const x = BigInt(62 - (this.#h.clusterBits - 8));
    const offset = Number(entry & ((1n << x) - 1n));
    const sectors = Number((entry >> x) & ((1n << (62n - x)) - 1n)) + 1;
    const length = sectors * 512 - (offset % 512);
    return { offset, length };
  }

  #readCompressed(hi: number, lo: number): Uint8Array {
    const last = this.#lastCompressed;
    if (last !== null && last.hi === hi && last.lo === lo) return last.data;
    const { offset, length } = this.#compressedSpan(hi, lo);
    const comp = new Uint8Array(Math.min(length, this.#cs * 2 + 512));
    this.#file.readZeroFilled(comp, offset);
    let out: Uint8Array;
    try {
      out = inflateRawSync(comp, { maxOutputLength: this.#cs, finishFlush: 2 /* Z_SYNC_FLUSH */ });
    } catch (err) {
      throw new QcowError(`'${this.path}': compressed cluster at ${offset} does not inflate`, {
        cause: err,
      });
    }
    if (out.length !== this.#cs) {
      throw new QcowError(
        `'${this.path}': compressed cluster at ${offset} inflates to ${out.length} bytes, not ${this.#cs}`,
      );
    }
    const data = new Uint8Array(out.buffer, out.byteOffset, out.length);
    this.#lastCompressed = { hi, lo, data };
    return data;
  }

  #freeCompressed(hi: number, lo: number): void {
    const { offset, length } = this.#compressedSpan(hi, lo);
    const first = Math.floor(offset / this.#cs);
    const last = Math.floor((offset + length - 1) / this.#cs);
    for (let c = first; c <= last; c++) this.#pendingFree.push(c);
    this.#lastCompressed = null;
  }

  /** Reads `buf.length` bytes at `offset`. */
  readSync(offset: number, buf: Uint8Array): void {
    if (this.#closed) throw new QcowError(`cannot read '${this.path}': image is closed`);
    const len = buf.length;
    checkRange("read", this.path, offset, len, this.#size, BlockRangeError);
    const cs = this.#cs;
    const l2e = this.#l2Entries;
    let pos = 0;
    while (pos < len) {
      const go = offset + pos;
      const ci = Math.floor(go / cs);
      const inOff = go - ci * cs;
      const l1i = Math.floor(ci / l2e);
      let l2i = ci - l1i * l2e;
      const t = this.#getL2(l1i, false);
      if (t === null) {
        const n = Math.min(len - pos, (l1i + 1) * l2e * cs - go);
        this.#readBacking(go, pos === 0 && n === len ? buf : buf.subarray(pos, pos + n));
        pos += n;
        continue;
      }
      const v = t.view;
      const hi = v.getUint32(l2i * 8, false);
      const lo = v.getUint32(l2i * 8 + 4, false);
      let n = Math.min(cs - inOff, len - pos);
      if (hi & COMPRESSED_HI) {
        const data = this.#readCompressed(hi, lo);
        buf.set(data.subarray(inOff, inOff + n), pos);
      } else if (lo & ZERO_LO) {
        buf.fill(0, pos, pos + n);
      } else {
        const host = (hi & OFFSET_HI) * TWO32 + ((lo & OFFSET_LO) >>> 0);
        if (host === 0) {
          this.#readBacking(go, pos === 0 && n === len ? buf : buf.subarray(pos, pos + n));
        } else {
          // Coalesce clusters that are contiguous on the host into one pread.
          let next = host + cs;
          while (pos + n < len && l2i + 1 < l2e) {
            const h2 = v.getUint32((l2i + 1) * 8, false);
            const l2 = v.getUint32((l2i + 1) * 8 + 4, false);
            if ((h2 & COMPRESSED_HI) || (l2 & ZERO_LO)) break;
            if ((h2 & OFFSET_HI) * TWO32 + ((l2 & OFFSET_LO) >>> 0) !== next) break;
            n += Math.min(cs, len - pos - n);
            next += cs;
            l2i++;
          }
          this.#file.readZeroFilled(
            pos === 0 && n === len ? buf : buf.subarray(pos, pos + n),
            host + inOff,
          );
        }
      }
      pos += n;
    }
  }

  /** Writes `data` at `offset`, allocating clusters (with copy-on-write) as needed. */
  writeSync(offset: number, data: Uint8Array): void {
    this.#writable("write");
    const len = data.length;
    checkRange("write", this.path, offset, len, this.#size, BlockRangeError);
    const cs = this.#cs;
    let pos = 0;
    while (pos < len) {
      const go = offset + pos;
      const ci = Math.floor(go / cs);
      const inOff = go - ci * cs;
      const n = Math.min(cs - inOff, len - pos);
      this.#writeCluster(ci, inOff, pos === 0 && n === len ? data : data.subarray(pos, pos + n));
      pos += n;
    }
  }

  #writeCluster(ci: number, inOff: number, chunk: Uint8Array): void {
    const cs = this.#cs;
    const l1i = Math.floor(ci / this.#l2Entries);
    const at = (ci - l1i * this.#l2Entries) * 8;
    const t = this.#getL2(l1i, true);
    if (t === null) throw new QcowError(`'${this.path}': could not allocate an L2 table`);
    const v = t.view;
    const hi = v.getUint32(at, false);
    const lo = v.getUint32(at + 4, false);
    const compressed = (hi & COMPRESSED_HI) !== 0;
    const zero = !compressed && (lo & ZERO_LO) !== 0;
    const host = compressed ? 0 : (hi & OFFSET_HI) * TWO32 + ((lo & OFFSET_LO) >>> 0);
    if (!compressed && !zero && host !== 0) {
      if ((hi & COPIED_HI) === 0 && this.#refcount(host / cs) !== 1) {
        throw new UnsupportedFeatureError(
          `'${this.path}': cluster at ${host} is shared (refcount != 1); vmkit does not ` +
            `copy shared clusters`,
        );
      }
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
        buf.set(this.#readCompressed(hi, lo));
      } else if (zero) {
        buf.fill(0);
        restZero = true;
      } else {
        this.#readBacking(ci * cs, buf.subarray(0, inOff));
        this.#readBacking(ci * cs + tailAt, buf.subarray(tailAt));
        restZero = isZero(buf.subarray(0, inOff)) && isZero(buf.subarray(tailAt));
      }
      buf.set(chunk, inOff);
    }
    let target: number;
    let fresh = false;
    if (zero && host !== 0 && this.#refcount(host / cs) === 1) {
      target = host;
    } else {
      target = this.#allocCluster();
      fresh = this.#lastFresh;
    }
    // Like QEMU's zero-COW shortcut: a never-written cluster already reads as
    // zeros, so only the guest's bytes need writing when the rest is zero.
    if (fresh && restZero) this.#file.pwrite(chunk, target + inOff);
    else this.#file.pwrite(buf, target);
    v.setUint32(at, (COPIED_HI | Math.floor(target / TWO32)) >>> 0, false);
    v.setUint32(at + 4, target % TWO32, false);
    this.#markL2(t);
    if (compressed) this.#freeCompressed(hi, lo);
    else if (zero && host !== 0 && target !== host) this.#pendingFree.push(host / cs);
  }

  /** Deallocates whole clusters in the range; partial clusters are zero-written. */
  discardSync(offset: number, length: number): void {
    this.#writable("discard");
    checkRange("discard", this.path, offset, length, this.#size, BlockRangeError);
    if (length === 0) return;
    const cs = this.#cs;
    const end = offset + length;
    const start = Math.ceil(offset / cs) * cs;
    const alignedEnd = end === this.#size ? Math.ceil(end / cs) * cs : Math.floor(end / cs) * cs;
    if (start >= alignedEnd) {
      this.#writeZeros(offset, length);
      return;
    }
    if (start > offset) this.#writeZeros(offset, start - offset);
    if (alignedEnd < end) this.#writeZeros(alignedEnd, end - alignedEnd);
    for (let ci = start / cs; ci < alignedEnd / cs; ci++) this.#discardCluster(ci);
  }

  #writeZeros(offset: number, length: number): void {
    for (let done = 0; done < length;) {
      const n = Math.min(this.#zeros.length, length - done);
      this.writeSync(offset + done, this.#zeros.subarray(0, n));
      done += n;
    }
  }

  #discardCluster(ci: number): void {
    const l1i = Math.floor(ci / this.#l2Entries);
    const at = (ci - l1i * this.#l2Entries) * 8;
    const hasBacking = this.#backing !== null || this.#h.backingFile !== null;
    const t = this.#getL2(l1i, hasBacking);
    if (t === null) return;
    const v = t.view;
    const hi = v.getUint32(at, false);
    const lo = v.getUint32(at + 4, false);
    const newLo = hasBacking ? ZERO_LO : 0;
    if (hi === 0 && lo === newLo) return;
    if (hi & COMPRESSED_HI) {
      this.#freeCompressed(hi, lo);
    } else {
      const host = (hi & OFFSET_HI) * TWO32 + ((lo & OFFSET_LO) >>> 0);
      if (host !== 0) this.#pendingFree.push(host / this.#cs);
    }
    v.setUint32(at, 0, false);
    v.setUint32(at + 4, newLo, false);
    this.#markL2(t);
  }

  /** Writes back cached metadata in crash-safe order and syncs (see module doc). */
  flushSync(): void {
    if (this.readOnly || this.#closed) return;
    const metaDirty = this.#l1Dirty.size > 0 || this.#l2DirtySet.size > 0;
    this.#writeRefcounts();
    if (metaDirty) {
      this.#file.sync();
      for (const t of this.#l2DirtySet) {
        this.#file.pwrite(t.data, t.offset);
        t.dirty = false;
      }
      this.#l2DirtySet.clear();
      if (this.#l1Dirty.size > 0) {
        const e = new Uint8Array(8);
        const v = new DataView(e.buffer);
        for (const i of [...this.#l1Dirty].sort((a, b) => a - b)) {
          const off = this.#l1[i] ?? 0;
          v.setUint32(0, off === 0 ? 0 : (COPIED_HI | Math.floor(off / TWO32)) >>> 0, false);
          v.setUint32(4, off % TWO32, false);
          this.#file.pwrite(e, this.#h.l1TableOffset + i * 8);
        }
        this.#l1Dirty.clear();
      }
    }
    this.#file.sync();
    if (this.#pendingFree.length > 0) {
      const freed = this.#pendingFree;
      this.#pendingFree = [];
      for (const c of freed) {
        const rc = this.#refcount(c);
        if (rc === 0) continue;
        this.#setRefcount(c, rc - 1);
        if (rc === 1) this.#freeList.push(c);
      }
    }
  }

  /** Grows the virtual size to `newSize` bytes, moving the L1 table if it must grow. */
  grow(newSize: number): void {
    this.#writable("grow");
    if (!Number.isSafeInteger(newSize) || newSize < this.#size || newSize > 2 ** 50) {
      throw new QcowError(
        `cannot resize '${this.path}' from ${this.#size} to ${newSize} bytes: only growing is supported`,
      );
    }
    const cs = this.#cs;
    const needL1 = Math.ceil(newSize / (this.#l2Entries * cs));
    if (needL1 > this.#l1.length) {
      const clusters = Math.ceil((needL1 * 8) / cs);
      const start = this.#nextFree;
      this.#nextFree += clusters;
      for (let c = start; c < start + clusters; c++) this.#setRefcount(c, 1);
      this.flushSync();
      const l1 = new Float64Array(needL1);
      l1.set(this.#l1);
      const bytes = new Uint8Array(clusters * cs);
      const v = new DataView(bytes.buffer);
      for (let i = 0; i < l1.length; i++) {
        const off = l1[i] ?? 0;
        if (off === 0) continue;
        v.setUint32(i * 8, (COPIED_HI | Math.floor(off / TWO32)) >>> 0, false);
        v.setUint32(i * 8 + 4, off % TWO32, false);
      }
      this.#file.pwrite(bytes, start * cs);
      this.#file.sync();
      const hdr = new Uint8Array(12);
      const hv = new DataView(hdr.buffer);
      hv.setUint32(0, needL1, false);
      hv.setBigUint64(4, BigInt(start * cs), false);
      this.#file.pwrite(hdr, HDR.L1_SIZE);
      this.#file.sync();
      const oldOffset = this.#h.l1TableOffset;
      const oldClusters = Math.max(1, Math.ceil((this.#l1.length * 8) / cs));
      for (let c = 0; c < oldClusters; c++) this.#pendingFree.push(oldOffset / cs + c);
      this.#h.l1TableOffset = start * cs;
      this.#h.l1Size = needL1;
      this.#l1 = l1;
    }
    const sz = new Uint8Array(8);
    new DataView(sz.buffer).setBigUint64(0, BigInt(newSize), false);
    this.#file.pwrite(sz, HDR.SIZE);
    this.#file.sync();
    this.#size = newSize;
    this.#h.size = newSize;
  }

  /** This layer's allocation at `offset`: one run of equal kind, up to `length` bytes. */
  blockStatus(offset: number, length: number): BlockStatus {
    checkRange("block status", this.path, offset, length, this.#size, BlockRangeError);
    const cs = this.#cs;
    let kind: BlockStatus["kind"] | null = null;
    let pos = 0;
    while (pos < length) {
      const go = offset + pos;
      const ci = Math.floor(go / cs);
      const k = this.#kindOf(ci);
      if (kind === null) kind = k;
      else if (k !== kind) break;
      pos += Math.min(cs - (go - ci * cs), length - pos);
    }
    return { kind: kind ?? "unallocated", length: Math.max(pos, 0) };
  }

  #kindOf(ci: number): BlockStatus["kind"] {
    const l1i = Math.floor(ci / this.#l2Entries);
    const t = this.#getL2(l1i, false);
    if (t === null) return "unallocated";
    const at = (ci - l1i * this.#l2Entries) * 8;
    const hi = t.view.getUint32(at, false);
    const lo = t.view.getUint32(at + 4, false);
    if (hi & COMPRESSED_HI) return "data";
    if (lo & ZERO_LO) return "zero";
    return (hi & OFFSET_HI) * TWO32 + ((lo & OFFSET_LO) >>> 0) === 0 ? "unallocated" : "data";
  }

  /** Bytes of guest data this layer holds (data clusters, not zero clusters). */
  allocatedBytes(): number {
    let clusters = 0;
    const total = Math.ceil(this.#size / this.#cs);
    for (let ci = 0; ci < total; ci++) if (this.#kindOf(ci) === "data") clusters++;
    return clusters * this.#cs;
  }

  /**
   * Replaces the backing image used for unallocated reads (and, when `name`
   * is given, the name and format stored in the header: null removes them).
   * The header cluster is rewritten after a flush; used by `stream`.
   */
  setBacking(
    backing: DiskImage | null,
    name?: { file: string; format: "raw" | "qcow2" } | null,
    ownsBacking = false,
  ): void {
    if (name !== undefined) {
      this.#writable("rewrite the header of");
      this.flushSync();
      const header = buildHeader({
        clusterBits: this.#h.clusterBits,
        size: this.#size,
        l1Size: this.#h.l1Size,
        l1TableOffset: this.#h.l1TableOffset,
        refcountTableOffset: this.#h.refcountTableOffset,
        refcountTableClusters: this.#h.refcountTableClusters,
        refcountOrder: this.#rcOrder,
        backingFile: name?.file ?? null,
        backingFormat: name?.format ?? null,
      });
      this.#file.pwrite(header.subarray(0, Math.min(header.length, 4096)), 0);
      this.#file.sync();
      this.#h.backingFile = name?.file ?? null;
      this.#h.backingFormat = name?.format ?? null;
    }
    if (this.#ownsBacking && this.#backing !== null && this.#backing !== backing) {
      this.#backing.closeSync();
    }
    this.#backing = backing;
    this.#ownsBacking = ownsBacking;
  }

  /** Stops reading from the backing image and returns it, without closing it. */
  detachBacking(): DiskImage | null {
    const b = this.#backing;
    this.#backing = null;
    this.#ownsBacking = false;
    return b;
  }

  /** Flushes (twice if frees are pending, so refcounts end exact) and closes. */
  closeSync(): void {
    if (this.#closed) return;
    if (!this.readOnly) {
      this.flushSync();
      if (this.#rcDirtySet.size > 0 || this.#rcTableDirty.size > 0) this.flushSync();
    }
    this.#closed = true;
    this.#file.close();
    if (this.#ownsBacking && this.#backing !== null) this.#backing.closeSync();
  }

  /**
   * Closes the file descriptor without writing anything: what a crash leaves.
   * For crash tests and for abandoning an image after an I/O error.
   */
  abandon(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
    if (this.#ownsBacking && this.#backing !== null) this.#backing.closeSync();
  }
}
