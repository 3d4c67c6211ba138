/**
 * qcow2 images (version 3; version 2 read-only): create, open, read, write,
 * zero clusters, discard, grow, flush, compressed-cluster reads.
 *
 * Metadata is cached write-back (`table_cache.ts`; by default the L2 cache
 * covers the whole image, at most 128 MiB, see {@link Qcow2OpenOptions}),
 * and reaches the disk in the order QEMU's cache dependencies give, so that
 * a crash at any write point leaves at most leaked clusters:
 *
 * 1. guest data and copy-on-write data are written to their new clusters at
 *    once (before any metadata refers to them);
 * 2. a barrier writes the dirty refcount blocks (and, after a sync, new
 *    refcount-table entries) and syncs: an L2 table changed before it may
 *    then be written at any time; a full cache writes back one such table
 *    at a time, taking a barrier only when the oldest dirty table changed
 *    since the last one (`l2_cache.ts`);
 * 3. on flush: a barrier, every dirty L2 table, then the dirty L1 entries
 *    (after another sync when a new table lies in a reused cluster), sync;
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

import type { BlockStatus, DiskImage, ReadExtent } from "./disk_image.ts";
import { settle, SyncDiskImage } from "./disk_image.ts";
import { BackingChainError, LiveOperationError, QcowError } from "./errors.ts";
import { AsyncCow } from "./qcow2_async.ts";
import { type FaultInjector, type FileIdentity, ImageFile } from "./file_io.ts";
import type { LockMode } from "./image_lock.ts";
import { META, MetadataMap, OverlapGuard } from "./qcow2_metadata.ts";
import { LiveHeader, type Qcow2Features } from "./qcow2_header.ts";
import {
  checkWritable,
  HDR,
  isCorrupt,
  MAX_CLUSTER_BITS,
  parseHeader,
  type Qcow2Header,
} from "./qcow2_format.ts";
import { CompressedClusters } from "./qcow2_compressed.ts";
import { createQcow2, type Qcow2CreateOptions } from "./qcow2_create.ts";
import { Qcow2Data } from "./qcow2_data.ts";
import { cacheCapacity, L2Tables } from "./l2_cache.ts";
import { Refcounts } from "./refcount.ts";
import { readOffsetTable } from "./qcow2_tables.ts";

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
  /**
   * Bytes of L2 tables to cache (QEMU's `l2-cache-size`); default: what
   * covers the whole image, at most 128 MiB (1 TiB of 64 KiB clusters).
   */
  l2CacheSize?: number;
  /** Bytes of refcount blocks to cache (QEMU's `refcount-cache-size`); default a quarter of the L2 cache. */
  refcountCacheSize?: number;
  /** How to lock the file (default: "write", or "read" when read-only). */
  lock?: LockMode;
  /**
   * QEMU's `overlap-check`: "all" (default) checks every write against the
   * metadata; "none" skips the checks (for measuring what they cost).
   */
  overlapCheck?: "all" | "none";
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
  #cs: number;
  #size: number;
  #backing: DiskImage | null;
  #ownsBacking: boolean;
  #l2: L2Tables;
  #rc: Refcounts;
  #guard: OverlapGuard;
  #data: Qcow2Data;
  #closed = false;
  #header: LiveHeader;
  /** The data path over an asynchronous backing (made on first use). */
  #async: AsyncCow | null = null;

  private constructor(file: ImageFile, h: Qcow2Header, options: Qcow2OpenOptions) {
    super();
    this.path = file.path;
    this.#file = file;
    this.readOnly = file.readOnly;
    this.#h = h;
    const cs = 2 ** h.clusterBits;
    this.#cs = cs;
    this.#size = h.size;
    this.#backing = options.backing ?? null;
    this.#ownsBacking = options.ownsBacking ?? true;
    const cache = cacheCapacity(h.size, cs, options.l2CacheSize, options.refcountCacheSize);
    const meta = new MetadataMap(cs);
    meta.add(META.HEADER, 0, cs);
    meta.add(META.REFCOUNT_TABLE, h.refcountTableOffset, h.refcountTableClusters * cs);
    meta.add(META.L1, h.l1TableOffset, h.l1Size * 8);
    if (h.nbSnapshots > 0) meta.add(META.SNAPSHOT_TABLE, h.snapshotsOffset, cs);
    if (h.bitmapDirectory !== null) {
      meta.add(META.BITMAP_DIRECTORY, h.bitmapDirectory.offset, h.bitmapDirectory.size);
    }
    const guard = new OverlapGuard(
      this.path,
      file,
      h,
      meta,
      (options.overlapCheck ?? "all") === "all",
    );
    this.#guard = guard;
    const l1 = readOffsetTable(file, h.l1TableOffset, h.l1Size, "L1 table", cs);
    const rcTable = readOffsetTable(
      file,
      h.refcountTableOffset,
      (h.refcountTableClusters * cs) / 8,
      "refcount table",
      cs,
    );
    const host = {
      path: this.path,
      file,
      header: h,
      meta,
      guard: (offset: number, length: number, allowed: number, what: string) =>
        guard.check(offset, length, allowed, what),
      flushSync: () => this.flushSync(),
    };
    this.#rc = new Refcounts(host, rcTable, file.length(), cache.refcountBlocks);
    this.#l2 = new L2Tables(host, this.#rc, l1, cache.l2Tables);
    this.#data = new Qcow2Data({
      path: this.path,
      file,
      header: h,
      l2: this.#l2,
      rc: this.#rc,
      guard,
      compressed: new CompressedClusters(file, h.clusterBits),
      size: () => this.#size,
      backing: () => this.#backing,
    });
    this.#header = new LiveHeader(file, h);
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
    return this.#header.features();
  }
  /** Host file length in bytes. */
  get fileLength(): number {
    return this.#file.length();
  }
  /** Whether the image is marked corrupt (on disk, or by a refused write in this session). */
  get corrupt(): boolean {
    return this.#guard.reason !== null || isCorrupt(this.#h);
  }

  /** Whether the header carries the commit marker (`AUTOCLEAR_COMMIT_MARKER`). */
  get commitMarker(): boolean {
    return this.#header.commitMarker;
  }

  /**
   * Sets (and from now on maintains through writes) or clears the commit
   * marker, durably. Used by `commit`.
   */
  setCommitMarker(on: boolean): void {
    this.#writable("mark");
    this.#header.setCommitMarker(on);
  }

  /** Stops maintaining the commit marker: the next modification clears it. */
  releaseCommitMarker(): void {
    this.#header.releaseCommitMarker();
  }

  // ---- guest I/O ----------------------------------------------------------

  #writable(what: string): void {
    if (this.#closed) throw new QcowError(`cannot ${what} '${this.path}': image is closed`);
    if (this.readOnly) throw new QcowError(`cannot ${what} '${this.path}': opened read-only`);
    if (this.#guard.reason !== null) {
      throw new QcowError(
        `cannot ${what} '${this.path}': the image is marked corrupt (${this.#guard.reason}); ` +
          `repair it with 'qemu-img check -r all'`,
      );
    }
    this.#header.beforeModify();
  }

  /** Reads `buf.length` bytes at `offset`. */
  readSync(offset: number, buf: Uint8Array): void {
    this.#readable();
    this.#data.read(offset, buf, null);
  }

  #readable(): void {
    if (this.#closed) throw new QcowError(`cannot read '${this.path}': image is closed`);
  }

  /**
   * Where the first run of `[offset, offset + length)` is in this layer
   * (what {@link readSync} reads there): allocated clusters contiguous in the
   * file as one DATA run, a zero cluster, unallocated (BACKING), or OTHER for
   * a compressed cluster.
   */
  readExtent(offset: number, length: number, out: ReadExtent): void {
    this.#readable();
    this.#data.readExtent(offset, length, out);
  }

  /** Writes `data` at `offset`, allocating clusters (with copy-on-write) as needed. */
  writeSync(offset: number, data: Uint8Array): void {
    this.#writable("write");
    if (this.#async !== null && this.#async.busy) this.#asyncBusy("write");
    this.#data.write(offset, data);
  }

  /** Deallocates whole clusters in the range; partial clusters are zero-written. */
  discardSync(offset: number, length: number): void {
    this.#writable("discard");
    if (this.#async !== null && this.#async.busy) this.#asyncBusy("discard");
    this.#data.discard(offset, length);
  }

  /** Writes back cached metadata in crash-safe order and syncs (see module doc). */
  flushSync(): void {
    if (this.readOnly || this.#closed) return;
    if (this.#guard.reason !== null) this.#writable("flush");
    this.#l2.flush();
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
    this.#l2.grow(Math.ceil(newSize / ((cs / 8) * cs)));
    this.#header.writeSize(newSize);
    this.#size = newSize;
  }

  /** This layer's allocation at `offset`: one run of equal kind, up to `length` bytes. */
  blockStatus(offset: number, length: number): BlockStatus {
    return this.#data.blockStatus(offset, length);
  }

  /** Bytes of guest data this layer holds (data clusters, not zero clusters). */
  allocatedBytes(): number {
    return this.#data.allocatedBytes();
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
      this.#header.writeBacking(name);
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
    if (!this.readOnly && this.#guard.reason === null) {
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
      needsBacking: (ci, length) => this.#data.needsBacking(ci, length),
      writeCluster: (ci, inOff, chunk, cow) => this.#data.writeCluster(ci, inOff, chunk, cow),
      discardCluster: (ci) => this.#data.discardCluster(ci),
    });
    return this.#async;
  }

  readonly #jobs: Promise<void>[] = [];

  /**
   * Reads `buf.length` bytes at `offset` off the JS thread: the clusters this
   * image holds through the thread's io_uring, unallocated ones through the
   * backing's promise methods (awaiting a network backing), all in flight at
   * once. A read racing a write of the same bytes sees them before or after it.
   */
  override read(offset: number, buf: Uint8Array): Promise<void> {
    const jobs = this.#jobs;
    jobs.length = 0;
    try {
      this.#readable();
      this.#data.read(offset, buf, jobs);
    } catch (err) {
      // Parts already in flight still fill `buf`: report the failure once they are done.
      return Promise.allSettled(jobs.splice(0)).then(() => Promise.reject(err));
    }
    if (jobs.length === 0) return Promise.resolve();
    if (jobs.length === 1) return jobs.pop() as Promise<void>;
    const all = Promise.all(jobs).then(noop);
    jobs.length = 0;
    return all;
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
    await this.#file.drain();
    this.#closeFile();
    if (this.#ownsBacking && this.#backing !== null) await this.#backing.close();
  }
}

function noop(): void {}
