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
 * Every write is checked against the image's metadata first (QEMU's
 * overlap check, `qcow2_metadata.ts`): a write that would land on a
 * structure other than its own is refused, the image is marked corrupt on
 * disk (the header's corrupt bit) and refuses all further writes; it opens
 * read-only until `qemu-img check -r all` repairs it.
 *
 * Autoclear feature bits are cleared before the first modification (the
 * spec's rule for writers that do not maintain them), except the commit
 * marker this image maintains for `commit.ts` while a commit runs.
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
  settle,
  SyncDiskImage,
} from "./disk_image.ts";
import {
  BackingChainError,
  BlockRangeError,
  LiveOperationError,
  QcowError,
  UnsupportedFeatureError,
} from "./errors.ts";
import { AsyncCow } from "./qcow2_async.ts";
import { type FaultInjector, type FileIdentity, ImageFile } from "./file_io.ts";
import type { LockMode } from "./image_lock.ts";
import { isZero } from "./progress.ts";
import { META, MetadataMap } from "./qcow2_metadata.ts";
import {
  buildHeader,
  checkWritable,
  HDR,
  INCOMPAT,
  isCorrupt,
  MAX_CLUSTER_BITS,
  parseHeader,
  type Qcow2Header,
} from "./qcow2_format.ts";
import { CompressedClusters } from "./qcow2_compressed.ts";
import { createQcow2, type Qcow2CreateOptions } from "./qcow2_create.ts";
import { L2Tables } from "./qcow2_l2.ts";
import { Refcounts } from "./qcow2_refcounts.ts";
import {
  COMPRESSED_HI,
  compressedSpan,
  COPIED_HI,
  entryOffset,
  type Table,
  TWO32,
  ZERO_LO,
} from "./qcow2_tables.ts";

export type { Qcow2CreateOptions } from "./qcow2_create.ts";

/** Default bytes of L2 tables and refcount blocks each cached in memory. */
const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;
/**
 * Autoclear bit vmkit sets while a commit of this image is in progress: any
 * writer that does not know it (QEMU, or vmkit outside that commit) clears
 * it before its first write, so a resumed commit can tell whether the
 * overlay changed since its cursor was saved.
 */
export const AUTOCLEAR_COMMIT_MARKER = 1n << 40n;

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
  /** How to lock the file (default: "write", or "read" when read-only). */
  lock?: LockMode;
  /**
   * QEMU's `overlap-check`: "all" (default) checks every write against the
   * metadata; "none" skips the checks (for measuring what they cost).
   */
  overlapCheck?: "all" | "none";
}

/** A qcow2 header's features as `qemu-img info` shows them (`format-specific`, `dirty-flag`). */
export interface Qcow2Features {
  /** 2 (QEMU's compat 0.10) or 3 (compat 1.1). */
  version: number;
  /** Refcount width in bits. */
  refcountBits: number;
  /** Compatible feature bit 0: refcounts may be stale while the dirty bit is set. */
  lazyRefcounts: boolean;
  /** Incompatible bit 1: the image is marked corrupt. */
  corrupt: boolean;
  /** Incompatible bit 0: refcounts need a repair before use (lazy refcounts left dirty). */
  dirty: boolean;
  /** Incompatible bit 4: extended L2 entries (subclusters). */
  extendedL2: boolean;
  /** How compressed clusters are compressed. */
  compressionType: "zlib" | "zstd";
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
  /** The parsed header, kept current. */
  #h: Qcow2Header;
  /** Where the metadata lies (for the overlap checks). */
  #meta: MetadataMap;
  #cs: number;
  #l2Entries: number;
  #size: number;
  #backing: DiskImage | null;
  #ownsBacking: boolean;
  #l2: L2Tables;
  #rc: Refcounts;
  #scratch: Uint8Array;
  #zeros: Uint8Array;
  #compressed: CompressedClusters;
  #closed = false;
  readonly #ext = new ReadExtent();
  #extHi = 0; // the L2 entry of the compressed cluster #extent last found
  #extLo = 0;
  /** Why the image was marked corrupt in this session, or null. */
  #corrupt: string | null = null;
  /** Autoclear bits this image keeps set through its writes. */
  #maintained = 0n;
  /** Autoclear bits to clear before the next modification. */
  #clearPending = false;
  #overlapCheck: boolean;
  /** The data path over an asynchronous backing (made on first use). */
  #async: AsyncCow | null = null;

  private constructor(file: ImageFile, h: Qcow2Header, options: Qcow2OpenOptions) {
    super();
    this.path = file.path;
    this.#file = file;
    this.readOnly = file.readOnly;
    this.#h = h;
    this.#cs = 2 ** h.clusterBits;
    this.#l2Entries = this.#cs / 8;
    this.#size = h.size;
    this.#backing = options.backing ?? null;
    this.#ownsBacking = options.ownsBacking ?? true;
    this.#overlapCheck = (options.overlapCheck ?? "all") === "all";
    this.#compressed = new CompressedClusters(file, h.clusterBits);
    this.#scratch = new Uint8Array(this.#cs);
    this.#zeros = new Uint8Array(this.#cs);
    const cacheTables = Math.max(
      8,
      Math.floor((options.cacheBytes ?? DEFAULT_CACHE_BYTES) / this.#cs),
    );
    const fileLength = file.length();
    const cs = this.#cs;
    const meta = new MetadataMap(cs);
    this.#meta = meta;
    meta.add(META.HEADER, 0, cs);
    meta.add(META.REFCOUNT_TABLE, h.refcountTableOffset, h.refcountTableClusters * cs);
    meta.add(META.L1, h.l1TableOffset, h.l1Size * 8);
    if (h.nbSnapshots > 0) meta.add(META.SNAPSHOT_TABLE, h.snapshotsOffset, cs);
    if (h.bitmapDirectory !== null) {
      meta.add(META.BITMAP_DIRECTORY, h.bitmapDirectory.offset, h.bitmapDirectory.size);
    }
    const l1 = this.#readOffsetTable(h.l1TableOffset, h.l1Size, "L1 table", fileLength);
    const rcTable = this.#readOffsetTable(
      h.refcountTableOffset,
      (h.refcountTableClusters * cs) / 8,
      "refcount table",
      fileLength,
    );
    const host = {
      path: this.path,
      file,
      header: h,
      meta,
      guard: (offset: number, length: number, allowed: number, what: string) =>
        this.#guard(offset, length, allowed, what),
      flushSync: () => this.flushSync(),
    };
    this.#rc = new Refcounts(host, rcTable, fileLength, cacheTables);
    this.#l2 = new L2Tables(host, this.#rc, l1, cacheTables);
    this.#clearPending = !this.readOnly && h.autoclear !== 0n;
  }

  /** Opens an existing qcow2 file (not its backing file: see `openImage`). */
  static open(path: string, options: Qcow2OpenOptions = {}): Qcow2Image {
    const file = ImageFile.open(path, {
      readOnly: options.readOnly ?? false,
      ...(options.faults ? { faults: options.faults } : {}),
      ...(options.lock ? { lock: options.lock } : {}),
    });
    try {
      return Qcow2Image.fromFile(file, options);
    } catch (err) {
      file.close();
      throw err;
    }
  }

  /**
   * Opens the qcow2 image in an open file; the image owns the file once this
   * returns (on failure the caller still does). `options.readOnly` is the
   * file's.
   */
  static fromFile(file: ImageFile, options: Qcow2OpenOptions = {}): Qcow2Image {
    const path = file.path;
    const readOnly = file.readOnly;
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
    if (!readOnly) checkWritable(h, path);
    if (h.backingFile !== null && options.backing === undefined) {
      throw new BackingChainError(
        `'${path}' has backing file '${h.backingFile}': open it with openImage() ` +
          `so the chain is opened too`,
      );
    }
    return new Qcow2Image(file, h, options);
  }

  /** Writes a new, empty qcow2 v3 file at `path` (replacing any file there). */
  static create(path: string, options: Qcow2CreateOptions): void {
    createQcow2(path, options);
  }

  /** Virtual size in bytes. */
  get size(): number {
    return this.#size;
  }
  /** Cluster size in bytes. */
  get clusterSize(): number {
    return this.#cs;
  }
  /**
   * Whether the synchronous methods serve every range: false when the chain
   * ends in an asynchronous device (`RemoteLayer`); then unallocated reads and
   * copy-on-write go through the promise methods (`qcow2_async.ts`).
   */
  override get synchronous(): boolean {
    return this.#backing === null || this.#backing.synchronous;
  }

  /** The image this one reads unallocated clusters from, or null. */
  get backing(): DiskImage | null {
    return this.#backing;
  }
  /** Changes how the file is locked (see `image_lock.ts`). */
  relock(mode: LockMode): void {
    this.#file.relock(mode);
  }

  /** Device and inode of the file. */
  get identity(): FileIdentity {
    return this.#file.identity;
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
    return this.#rc.bits;
  }
  /** The header's features, as `qemu-img info` reports them. */
  get features(): Qcow2Features {
    const h = this.#h;
    const inc = (b: number) => (h.incompatible & (1n << BigInt(b))) !== 0n;
    return {
      version: h.version,
      refcountBits: this.#rc.bits,
      lazyRefcounts: (h.compatible & 1n) !== 0n,
      corrupt: inc(INCOMPAT.CORRUPT),
      dirty: inc(INCOMPAT.DIRTY),
      extendedL2: inc(INCOMPAT.EXTL2),
      compressionType: h.compressionType === 1 ? "zstd" : "zlib",
    };
  }
  /** Host file length in bytes. */
  get fileLength(): number {
    return this.#file.length();
  }
  /** Whether the image is marked corrupt (on disk, or by a refused write in this session). */
  get corrupt(): boolean {
    return this.#corrupt !== null || isCorrupt(this.#h);
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
      if (hi === 0 && lo === 0) continue;
      const off = entryOffset(hi, lo);
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

  // ---- overlap checks and corruption ---------------------------------------

  /**
   * Throws, and marks the image corrupt, when `[offset, offset + length)`
   * holds metadata other than `allowed` (a META mask; 0 for guest data).
   */
  #guard(offset: number, length: number, allowed: number, what: string): void {
    if (!this.#overlapCheck) return;
    const hit = this.#meta.overlap(offset, length, allowed);
    if (hit !== null) {
      this.#signalCorruption(
        `${what} at host offset ${offset} would overwrite the ${hit}: the image's tables ` +
          `point into its metadata`,
      );
    }
  }

  /** The hot-path form of {@link #guard} for one guest data cluster at host offset `host`. */
  #guardData(host: number): void {
    if (!this.#overlapCheck) return;
    const ci = host / this.#cs;
    if (!Number.isInteger(ci)) {
      this.#signalCorruption(
        `a guest data write at host offset ${host}: the L2 entry is not cluster aligned`,
      );
    }
    if (this.#meta.has(ci)) this.#guard(host, this.#cs, 0, "a guest data write");
  }

  #signalCorruption(reason: string): never {
    let marked = "the image is now marked corrupt";
    if (this.#corrupt === null) {
      this.#corrupt = reason;
      try {
        this.#h.incompatible |= 1n << BigInt(INCOMPAT.CORRUPT);
        const b = new Uint8Array(8);
        new DataView(b.buffer).setBigUint64(0, this.#h.incompatible, false);
        this.#file.pwrite(b, HDR.INCOMPATIBLE_FEATURES);
        this.#file.sync();
      } catch (err) {
        marked = `marking the image corrupt failed too (${(err as Error).message})`;
      }
    }
    throw new QcowError(
      `'${this.path}': refused ${reason}; ${marked} ` +
        `(repair it with 'qemu-img check -r all ${this.path}')`,
    );
  }

  // ---- autoclear bits ------------------------------------------------------

  #writeAutoclear(): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, this.#h.autoclear, false);
    this.#file.pwrite(b, HDR.AUTOCLEAR_FEATURES);
    this.#file.sync();
  }

  /** Clears the autoclear bits nobody here maintains; before the first modification. */
  #clearAutoclear(): void {
    this.#clearPending = false;
    const keep = this.#h.autoclear & this.#maintained;
    if (keep === this.#h.autoclear) return;
    this.#h.autoclear = keep;
    this.#writeAutoclear();
  }

  /** Whether the header carries the commit marker ({@link AUTOCLEAR_COMMIT_MARKER}). */
  get commitMarker(): boolean {
    return (this.#h.autoclear & AUTOCLEAR_COMMIT_MARKER) !== 0n;
  }

  /**
   * Sets (and from now on maintains through writes) or clears the commit
   * marker, durably. Used by `commit`.
   */
  setCommitMarker(on: boolean): void {
    this.#writable("mark");
    if (on) {
      this.#maintained |= AUTOCLEAR_COMMIT_MARKER;
      this.#h.autoclear |= AUTOCLEAR_COMMIT_MARKER;
    } else {
      this.#maintained &= ~AUTOCLEAR_COMMIT_MARKER;
      this.#h.autoclear &= ~AUTOCLEAR_COMMIT_MARKER;
    }
    this.#writeAutoclear();
    this.#clearPending = (this.#h.autoclear & ~this.#maintained) !== 0n;
  }

  /** Stops maintaining the commit marker: the next modification clears it. */
  releaseCommitMarker(): void {
    this.#maintained &= ~AUTOCLEAR_COMMIT_MARKER;
    this.#clearPending = !this.readOnly && (this.#h.autoclear & ~this.#maintained) !== 0n;
  }

  // ---- guest I/O ----------------------------------------------------------

  #writable(what: string): void {
    if (this.#closed) throw new QcowError(`cannot ${what} '${this.path}': image is closed`);
    if (this.readOnly) throw new QcowError(`cannot ${what} '${this.path}': opened read-only`);
    if (this.#corrupt !== null) {
      throw new QcowError(
        `cannot ${what} '${this.path}': the image is marked corrupt (${this.#corrupt}); ` +
          `repair it with 'qemu-img check -r all'`,
      );
    }
    if (this.#clearPending) this.#clearAutoclear();
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

  #freeCompressed(hi: number, lo: number): void {
    const { offset, length } = compressedSpan(hi, lo, this.#h.clusterBits);
    const first = Math.floor(offset / this.#cs);
    const last = Math.floor((offset + length - 1) / this.#cs);
    for (let c = first; c <= last; c++) this.#rc.freeLater(c);
    this.#compressed.forget();
  }

  /** Reads `buf.length` bytes at `offset`. */
  readSync(offset: number, buf: Uint8Array): void {
    this.#readLayer(offset, buf, null);
  }

  /**
   * Reads what this layer holds into `buf`; the ranges it leaves to the
   * backing image are read from it synchronously, or, given `holes`, pushed
   * there (offset, then the part of `buf`) for the asynchronous path.
   */
  #readLayer(offset: number, buf: Uint8Array, holes: Array<number | Uint8Array> | null): void {
    if (this.#closed) throw new QcowError(`cannot read '${this.path}': image is closed`);
    const len = buf.length;
    checkRange("read", this.path, offset, len, this.#size, BlockRangeError);
    const ext = this.#ext;
    let pos = 0;
    while (pos < len) {
      const go = offset + pos;
      this.#extent(go, len - pos, ext);
      const n = ext.length;
      const part = pos === 0 && n === len ? buf : buf.subarray(pos, pos + n);
      if (ext.kind === EXTENT_DATA) this.#file.readZeroFilled(part, ext.hostOffset);
      else if (ext.kind === EXTENT_ZERO) part.fill(0);
      else if (ext.kind === EXTENT_BACKING) {
        if (holes === null) this.#readBacking(go, part);
        else holes.push(go, part);
      } else {
        const data = this.#compressed.read(this.#extHi, this.#extLo);
        const inOff = go % this.#cs;
        part.set(data.subarray(inOff, inOff + n));
      }
      pos += n;
    }
  }

  /**
   * Where the first run of `[offset, offset + length)` is in this layer
   * (what {@link readSync} reads there): allocated clusters contiguous in the
   * file as one DATA run, a zero cluster, unallocated (BACKING), or OTHER for
   * a compressed cluster.
   */
  readExtent(offset: number, length: number, out: ReadExtent): void {
    if (this.#closed) throw new QcowError(`cannot read '${this.path}': image is closed`);
    checkRange("read", this.path, offset, length, this.#size, BlockRangeError);
    this.#extent(offset, length, out);
  }

  /** {@link readExtent} without the checks; a compressed cluster's entry goes to #extHi/#extLo. */
  #extent(offset: number, length: number, out: ReadExtent): void {
    const cs = this.#cs;
    const l2e = this.#l2Entries;
    const ci = Math.floor(offset / cs);
    const inOff = offset - ci * cs;
    const l1i = Math.floor(ci / l2e);
    let l2i = ci - l1i * l2e;
    const t = this.#l2.get(l1i, false);
    if (t === null) {
      out.kind = EXTENT_BACKING;
      out.length = Math.min(length, (l1i + 1) * l2e * cs - offset);
      return;
    }
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
      while (n < length && l2i + 1 < l2e) {
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
  writeSync(offset: number, data: Uint8Array): void {
    this.#writable("write");
    if (this.#async !== null && this.#async.busy) this.#asyncBusy("write");
    const len = data.length;
    checkRange("write", this.path, offset, len, this.#size, BlockRangeError);
    const cs = this.#cs;
    let pos = 0;
    while (pos < len) {
      const go = offset + pos;
      const ci = Math.floor(go / cs);
      const inOff = go - ci * cs;
      const n = Math.min(cs - inOff, len - pos);
      this.#writeCluster(
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
  #needsBacking(ci: number, length: number): boolean {
    const cs = this.#cs;
    const b = this.#backing;
    if (length === cs || b === null || ci * cs >= b.size) return false;
    const l1i = Math.floor(ci / this.#l2Entries);
    const t = this.#l2.get(l1i, false);
    if (t === null) return true;
    const at = (ci - l1i * this.#l2Entries) * 8;
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
  #writeCluster(ci: number, inOff: number, chunk: Uint8Array, cow: Uint8Array | null): void {
    const cs = this.#cs;
    const l1i = Math.floor(ci / this.#l2Entries);
    const at = (ci - l1i * this.#l2Entries) * 8;
    const t = this.#l2.get(l1i, true);
    if (t === null) throw new QcowError(`'${this.path}': could not allocate an L2 table`);
    const v = t.view;
    const hi = v.getUint32(at, false);
    const lo = v.getUint32(at + 4, false);
    const compressed = (hi & COMPRESSED_HI) !== 0;
    const zero = !compressed && (lo & ZERO_LO) !== 0;
    const host = compressed ? 0 : entryOffset(hi, lo);
    if (!compressed && !zero && host !== 0) {
      if ((hi & COPIED_HI) === 0 && this.#rc.get(host / cs) !== 1) {
        throw new UnsupportedFeatureError(
          `'${this.path}': cluster at ${host} is shared (refcount != 1); vmkit does not ` +
            `copy shared clusters`,
        );
      }
      this.#guardData(host);
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
        this.#readBacking(ci * cs, buf.subarray(0, inOff));
        this.#readBacking(ci * cs + tailAt, buf.subarray(tailAt));
        restZero = isZero(buf.subarray(0, inOff)) && isZero(buf.subarray(tailAt));
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
    this.#guardData(target);
    // Like QEMU's zero-COW shortcut: a never-written cluster already reads as
    // zeros, so only the guest's bytes need writing when the rest is zero.
    if (fresh && restZero) this.#file.pwrite(chunk, target + inOff);
    else this.#file.pwrite(buf, target);
    v.setUint32(at, (COPIED_HI | Math.floor(target / TWO32)) >>> 0, false);
    v.setUint32(at + 4, target % TWO32, false);
    this.#l2.mark(t);
    if (compressed) this.#freeCompressed(hi, lo);
    else if (zero && host !== 0 && target !== host) this.#rc.freeLater(host / cs);
  }

  /** Deallocates whole clusters in the range; partial clusters are zero-written. */
  discardSync(offset: number, length: number): void {
    this.#writable("discard");
    if (this.#async !== null && this.#async.busy) this.#asyncBusy("discard");
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
    const t = this.#l2.get(l1i, hasBacking);
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
    this.#l2.mark(t);
  }

  /** Writes back cached metadata in crash-safe order and syncs (see module doc). */
  flushSync(): void {
    if (this.readOnly || this.#closed) return;
    if (this.#corrupt !== null) this.#writable("flush");
    const metaDirty = this.#l2.dirty;
    this.#rc.write();
    if (metaDirty) {
      this.#file.sync();
      this.#l2.write();
    }
    this.#file.sync();
    this.#rc.releasePending();
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
    const h = this.#h;
    this.#l2.grow(Math.ceil(newSize / (this.#l2Entries * cs)));
    const sz = new Uint8Array(8);
    new DataView(sz.buffer).setBigUint64(0, BigInt(newSize), false);
    this.#file.pwrite(sz, HDR.SIZE);
    this.#file.sync();
    this.#size = newSize;
    h.size = newSize;
  }

  /** This layer's allocation at `offset`: one run of equal kind, up to `length` bytes. */
  blockStatus(offset: number, length: number): BlockStatus {
    checkRange("block status", this.path, offset, length, this.#size, BlockRangeError);
    const cs = this.#cs;
    const l2e = this.#l2Entries;
    let kind: BlockStatus["kind"] | null = null;
    let pos = 0;
    while (pos < length) {
      const go = offset + pos;
      const ci = Math.floor(go / cs);
      const l1i = Math.floor(ci / l2e);
      const t = this.#l2.get(l1i, false);
      let k: BlockStatus["kind"];
      let n: number;
      if (t === null) {
        // A whole L2 range without a table: one step, not one per cluster.
        k = "unallocated";
        n = Math.min((l1i + 1) * l2e * cs - go, length - pos);
      } else {
        k = kindOf(t, (ci - l1i * l2e) * 8);
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
    const total = Math.ceil(this.#size / this.#cs);
    // Walk the L2 tables the L1 names; unallocated ranges cost nothing.
    for (let l1i = 0; l1i < this.#l2.length; l1i++) {
      if (!this.#l2.allocated(l1i)) continue;
      const t = this.#l2.get(l1i, false);
      if (t === null) continue;
      const n = Math.min(this.#l2Entries, total - l1i * this.#l2Entries);
      for (let i = 0; i < n; i++) if (kindOf(t, i * 8) === "data") clusters++;
    }
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
      const h = this.#h;
      const header = buildHeader({
        clusterBits: h.clusterBits,
        size: this.#size,
        l1Size: h.l1Size,
        l1TableOffset: h.l1TableOffset,
        refcountTableOffset: h.refcountTableOffset,
        refcountTableClusters: h.refcountTableClusters,
        refcountOrder: h.refcountOrder,
        backingFile: name?.file ?? null,
        backingFormat: name?.format ?? null,
      });
      if (h.autoclear !== 0n) {
        new DataView(header.buffer).setBigUint64(HDR.AUTOCLEAR_FEATURES, h.autoclear, false);
      }
      this.#file.pwrite(header.subarray(0, Math.min(header.length, 4096)), 0);
      this.#file.sync();
      h.backingFile = name?.file ?? null;
      h.backingFormat = name?.format ?? null;
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

  /**
   * Flushes (twice if frees are pending, so refcounts end exact) and closes.
   * A corrupt image is closed without writing its cached metadata.
   */
  closeSync(): void {
    if (this.#closed) return;
    if (this.#async !== null && this.#async.busy) this.#asyncBusy("close");
    if (this.#ownsBacking && this.#backing !== null && !this.#backing.synchronous) {
      throw new LiveOperationError(
        `cannot close '${this.path}' synchronously: its backing chain ends in a network ` +
          "device, which closes asynchronously; use close()",
      );
    }
    this.#closeFile();
    if (this.#ownsBacking && this.#backing !== null) this.#backing.closeSync();
  }

  /** Flushes and closes this layer's file (not its backing). */
  #closeFile(): void {
    let failure: unknown = null;
    if (!this.readOnly && this.#corrupt === null) {
      try {
        this.flushSync();
        if (this.#rc.dirty) this.flushSync();
      } catch (err) {
        failure = err;
      }
    }
    this.#closed = true;
    this.#file.close();
    if (failure !== null) throw failure;
  }

  /**
   * Closes the file descriptor without writing anything: what a crash leaves.
   * For crash tests and for abandoning an image after an I/O error.
   */
  abandon(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
    const b = this.#backing;
    // An asynchronous backing cannot close here: it is left to whoever opened it.
    if (this.#ownsBacking && b !== null && b.synchronous) b.closeSync();
  }

  // ---- the promise methods: synchronous chains settle at once ---------------

  #asyncBusy(what: string): never {
    throw new LiveOperationError(
      `cannot ${what} '${this.path}' synchronously while copy-on-write from its network ` +
        "backing is in flight; use the promise methods",
    );
  }

  #asyncPath(): AsyncCow {
    this.#async ??= new AsyncCow({
      path: this.path,
      clusterSize: this.#cs,
      size: () => this.#size,
      backing: () => this.#backing,
      writable: (what) => this.#writable(what),
      readLayer: (offset, buf, holes) => this.#readLayer(offset, buf, holes),
      needsBacking: (ci, length) => this.#needsBacking(ci, length),
      writeCluster: (ci, inOff, chunk, cow) => this.#writeCluster(ci, inOff, chunk, cow),
      discardCluster: (ci) => this.#discardCluster(ci),
    });
    return this.#async;
  }

  /** Reads `buf.length` bytes at `offset`; over a network backing, awaits it for unallocated clusters. */
  override read(offset: number, buf: Uint8Array): Promise<void> {
    if (this.synchronous) return settle(() => this.readSync(offset, buf));
    return this.#asyncPath().read(offset, buf);
  }
  /** Writes `data` at `offset`; over a network backing, partial writes copy on write through it. */
  override write(offset: number, data: Uint8Array): Promise<void> {
    if (this.synchronous) return settle(() => this.writeSync(offset, data));
    return this.#asyncPath().write(offset, data);
  }
  /** Deallocates `[offset, +length)` (see {@link discardSync}). */
  override discard(offset: number, length: number): Promise<void> {
    if (this.synchronous) return settle(() => this.discardSync(offset, length));
    return this.#asyncPath().discard(offset, length);
  }
  /** Waits for requests in flight, flushes, closes, then closes an owned backing. */
  override async close(): Promise<void> {
    if (this.#closed) return;
    if (this.#async !== null) await this.#async.drain();
    if (this.synchronous) return this.closeSync();
    this.#closeFile();
    if (this.#ownsBacking && this.#backing !== null) await this.#backing.close();
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
