/**
 * virtio-blk (virtio 1.2 §5.2), the device side, on its I/O Worker: takes
 * requests from the queue, checks them (header, sector range, data length,
 * read-only), runs them on the drive (`blk_disk.ts`) with many in flight,
 * writes the status byte and returns them on the used ring.
 *
 * Requests: IN, OUT, FLUSH (durable: fdatasync, or SYNCHRONIZE CACHE on
 * iSCSI), GET_ID (the serial), DISCARD and WRITE_ZEROES (ranges read back
 * as zeros). A read-only drive fails OUT, DISCARD and WRITE_ZEROES with
 * IOERR; unknown types get UNSUPP. Any descriptor layout is accepted (the
 * header and data may share buffers).
 *
 * This module is the back-end module of a drive: it exports
 * `createBackend(config, ctx)`.
 *
 * @module
 */

import type { VirtioBackend, VirtioBackendContext } from "./backend.ts";
import { type BlkBackendConfig, BlkDisk, type SyncTarget } from "./blk_disk.ts";
import {
  BLK_HEADER_BYTES,
  BLK_ID_BYTES,
  BLK_MAX_DISCARD_SECTORS,
  BLK_MAX_DISCARD_SEG,
  BLK_MAX_REQUEST_BYTES,
  BLK_SEG_MAX,
  BLK_SEGMENT_BYTES,
  BLK_STAT_NAMES,
  BlkFeature,
  BlkStat,
  BlkStatus,
  BlkType,
  SECTOR,
  WRITE_ZEROES_FLAG_UNMAP,
  writeBlkConfig,
} from "./blk_format.ts";
import { BlkUring } from "./blk_uring.ts";
import { PROBE_BYTES } from "../../../cow/probe.ts";
import {
  type DiskImage,
  EXTENT_BACKING,
  EXTENT_DATA,
  EXTENT_ZERO,
  ReadExtent,
} from "../../../cow/disk_image.ts";
import { Qcow2Image } from "../../../cow/qcow2.ts";
import { RawImage } from "../../../cow/raw.ts";
import { SharedCounters } from "../../metrics/shared_counters.ts";
import type { RateLimiterConfig } from "../../io_config.ts";
import { RateLimiter } from "./rate_limiter.ts";
import { Q, queueWord, W } from "./layout.ts";
import { DescChain, POP_ERROR, POP_OK } from "./queue.ts";

/** One request between being taken from the queue and being used. */
export class BlkRequest {
  /** Slot number (its index in the back end's table). */
  readonly slot: number;
  /** Queue it came from. */
  queue = 0;
  /** Head descriptor. */
  head = 0;
  /** Request type. */
  type = 0;
  /** First sector. */
  sector = 0;
  /** RAM region and offset of the status byte. */
  statusRegion = 0;
  /** Offset of the status byte in its region. */
  statusOffset = 0;
  /** Bytes written into guest buffers (for the used ring), status byte included. */
  written = 1;
  /** Data buffers: count, region, guest address, length. */
  segs = 0;
  readonly segRegion: Int32Array;
  readonly segAddr: Float64Array;
  readonly segLen: Float64Array;
  /** Total data bytes. */
  dataBytes = 0;
  /** Engine bookkeeping: operations still running, and whether one failed. */
  pendingOps = 0;
  /** Status to report once {@link BlkRequest.pendingOps} reaches 0. */
  status = 0;
  /** An image read: a short read met the end of the file, the rest reads as zeros. */
  zeroFillShort = false;

  /** A slot with room for `maxSegs` data buffers. */
  constructor(slot: number, maxSegs: number) {
    this.slot = slot;
    this.segRegion = new Int32Array(maxSegs);
    this.segAddr = new Float64Array(maxSegs);
    this.segLen = new Float64Array(maxSegs);
  }
}

const MAX_SEGS = BLK_SEG_MAX + 2;
/**
 * Buffered writes to a raw file run synchronously: ext4 cannot take a buffered
 * write without blocking, so io_uring hands every one to an io-wq worker, and
 * the hand-offs cost more than the write (measured: 4K random writes 90k vs 150k
 * req/s cold, 11k vs 22k warm). A synchronous write that takes longer than this
 * blocked on something (dirty-page throttling pauses for 10 ms or more, a journal
 * commit, a fault in guest RAM) or lost its CPU: writes then go through io_uring
 * for {@link ASYNC_WRITE_BACKOFF_MS}, so reads keep flowing past the stall.
 */
const SYNC_WRITE_STALL_MS = 10;
/** How long writes stay asynchronous after a stalled synchronous write. */
const ASYNC_WRITE_BACKOFF_MS = 200;

/** The virtio-blk back end. */
export class BlkBackend implements VirtioBackend {
  readonly #ctx: VirtioBackendContext;
  readonly #cfg: BlkBackendConfig;
  readonly disk: BlkDisk;
  readonly #chain: DescChain;
  readonly #slots: BlkRequest[];
  readonly #free: number[];
  readonly #uring: BlkUring | null;
  readonly #hdr = new Uint8Array(BLK_SEGMENT_BYTES * BLK_MAX_DISCARD_SEG);
  readonly #hdrView = new DataView(this.#hdr.buffer);
  readonly #id: Uint8Array;
  #asyncInflight = 0;
  readonly #stats: SharedCounters;
  readonly #limiter: RateLimiter;
  /** Requests the rate limiter holds, oldest first (taken, in flight, not yet run). */
  readonly #held: BlkRequest[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #touched = 0; // bit per queue with used entries not yet interrupted for
  #uncounted = 0; // requests used since the last #interrupt, not yet counted as completed
  /**
   * FLUSH is offered but the driver did not accept it: every write must be
   * stable before it completes (virtio 1.2 §5.2.6.2, the first case).
   */
  #writeThrough = false;
  #polling = false; // inside the loop's poll window (notifications stay off)
  #asyncWritesUntil = 0; // performance.now() until which writes go through io_uring
  readonly #extent = new ReadExtent();
  readonly #stallMs: number;

  private constructor(
    ctx: VirtioBackendContext,
    cfg: BlkBackendConfig,
    disk: BlkDisk,
    queueSize: number,
  ) {
    this.#ctx = ctx;
    this.#cfg = cfg;
    this.disk = disk;
    this.#chain = new DescChain(queueSize);
    this.#slots = Array.from({ length: queueSize }, (_, i) => new BlkRequest(i, MAX_SEGS));
    this.#free = Array.from({ length: queueSize }, (_, i) => queueSize - 1 - i);
    this.#stats = cfg.stats === undefined
      ? SharedCounters.create(BLK_STAT_NAMES)
      : SharedCounters.over(cfg.stats, BLK_STAT_NAMES);
    this.#limiter = new RateLimiter(cfg.rateLimiter);
    this.#stallMs = cfg.syncWriteStallMs ?? SYNC_WRITE_STALL_MS;
    if (this.#stallMs <= 0) this.#asyncWritesUntil = Infinity;
    this.#id = new Uint8Array(BLK_ID_BYTES);
    this.#id.set(new TextEncoder().encode(cfg.serial).subarray(0, BLK_ID_BYTES));
    this.#uring = (cfg.uring ?? true) && cfg.backend.kind === "file"
      ? new BlkUring(
        ctx,
        queueSize,
        MAX_SEGS,
        BLK_MAX_DISCARD_SEG,
        (r) => this.#finish(r),
        () => this.afterReap(),
      )
      : null;
    writeBlkConfig(ctx.config, disk.size, disk.blockSize);
  }

  /** Opens the drive and builds the back end (the module's `createBackend`). */
  static async create(config: unknown, ctx: VirtioBackendContext): Promise<BlkBackend> {
    const cfg = config as BlkBackendConfig;
    const disk = await BlkDisk.open(cfg);
    const size = ctx.state[queueWord(0, Q.NUM_MAX)] ?? 0;
    return new BlkBackend(ctx, cfg, disk, size);
  }

  activate(): void {
    this.#writeThrough = !this.#ctx.negotiated(BlkFeature.FLUSH);
    // process() re-arms notifications when it is done (and the poll window when it ends):
    // none while the device is busy taking chains.
    for (const q of this.#ctx.queues) if (q !== null) q.notifyOnPop = false;
  }

  reset(): void {
    this.#writeThrough = false;
  }

  process(q: number): void {
    const ctx = this.#ctx;
    const queue = ctx.queues[q];
    if (queue === null || queue === undefined) return;
    const chain = this.#chain;
    for (;;) {
      // While the rate limiter holds requests, nothing new is taken (order is kept).
      while (ctx.canTake() && this.#free.length > 0 && this.#held.length === 0) {
        const r = queue.pop(chain);
        if (r === POP_ERROR) return ctx.fail(queue.error);
        if (r !== POP_OK) break;
        ctx.started();
        this.#start(q, chain);
      }
      this.#uring?.submit();
      // Inside the loop's poll window the device keeps looking at the ring itself: the driver
      // need not notify (idle() re-arms when the window ends).
      if (this.#polling) break;
      // EVENT_IDX: ask for a notify past what we took, then re-check for a
      // chain the driver added before it could see that.
      queue.armNotify();
      if (
        !ctx.canTake() || this.#free.length === 0 || this.#held.length > 0 || queue.pending() === 0
      ) {
        break;
      }
    }
    this.#uring?.reapNow();
    this.#interrupt();
  }

  /** Publishes the used entries added since the last call and interrupts if the driver asks. */
  #interrupt(): void {
    const t = this.#touched;
    if (t === 0) return;
    this.#touched = 0;
    const ctx = this.#ctx;
    ctx.completed(this.#uncounted);
    this.#uncounted = 0;
    for (let q = 0; t >>> q !== 0; q++) {
      if (((t >>> q) & 1) === 0) continue;
      ctx.queues[q]?.publishUsed();
      ctx.interruptIfNeeded(q);
    }
  }

  /** Parses the chain into a slot and starts it (or completes it at once when it is invalid). */
  #start(q: number, chain: DescChain): void {
    const slot = this.#free.pop();
    if (slot === undefined) return; // cannot happen: process() checks for a free slot
    const req = this.#slots[slot];
    if (req === undefined) return;
    req.queue = q;
    req.head = chain.head;
    req.written = 1;
    req.segs = 0;
    req.dataBytes = 0;
    req.pendingOps = 0;
    req.status = BlkStatus.OK;
    req.zeroFillShort = false;
    const ctx = this.#ctx;
    // The status byte is the last device-writable byte.
    const last = chain.count - 1;
    if (chain.writeBytes < 1 || last < 0 || chain.write[last] !== 1) {
      // No status byte to report through: a driver bug. Return the chain unused.
      Atomics.add(ctx.state, W.GUEST_ERRORS, 1);
      return this.#complete(req, 0);
    }
    const sRegion = chain.region[last] ?? 0;
    req.statusRegion = sRegion;
    req.statusOffset = ctx.ram.offset(
      sRegion,
      (chain.addr[last] ?? 0) + (chain.len[last] ?? 1) - 1,
    );
    if (chain.readBytes < BLK_HEADER_BYTES) return this.#done(req, BlkStatus.IOERR);
    // The header, read in place when it lies in the first buffer (as every driver puts it).
    let hv: DataView = this.#hdrView;
    let ho = 0;
    const r0 = chain.region[0] ?? 0;
    const first = ctx.ram.views[r0];
    if (chain.readable > 0 && (chain.len[0] ?? 0) >= BLK_HEADER_BYTES && first !== undefined) {
      hv = first;
      ho = ctx.ram.offset(r0, chain.addr[0] ?? 0);
    } else if (!this.#gather(chain, 0, BLK_HEADER_BYTES)) {
      return this.#done(req, BlkStatus.IOERR);
    }
    req.type = hv.getUint32(ho, true);
    const sectorLo = hv.getUint32(ho + 8, true);
    const sectorHi = hv.getUint32(ho + 12, true);
    req.sector = sectorHi >= 0x20_0000 ? -1 : sectorHi * 0x1_0000_0000 + sectorLo;
    switch (req.type) {
      case BlkType.IN:
      case BlkType.GET_ID:
        this.#dataSegs(req, chain, true);
        break;
      case BlkType.OUT:
      case BlkType.DISCARD:
      case BlkType.WRITE_ZEROES:
        this.#dataSegs(req, chain, false);
        break;
      case BlkType.FLUSH:
        break;
      default:
        this.#stats.add(BlkStat.UNSUPPORTED);
        return this.#done(req, BlkStatus.UNSUPP);
    }
    if (req.segs < 0) return this.#done(req, BlkStatus.IOERR);
    this.#run(req, chain);
  }

  /** Copies `n` device-readable bytes starting `skip` bytes into the chain into #hdr. */
  #gather(chain: DescChain, skip: number, n: number): boolean {
    const ram = this.#ctx.ram;
    let got = 0;
    let pos = 0;
    for (let i = 0; i < chain.readable && got < n; i++) {
      const len = chain.len[i] ?? 0;
      if (pos + len <= skip) {
        pos += len;
        continue;
      }
      const from = Math.max(0, skip - pos);
      const take = Math.min(len - from, n - got);
      const region = chain.region[i] ?? 0;
      const off = ram.offset(region, (chain.addr[i] ?? 0) + from);
      const bytes = ram.bytes[region];
      if (bytes === undefined) return false;
      this.#hdr.set(bytes.subarray(off, off + take), got);
      got += take;
      pos += len;
    }
    return got === n;
  }

  /**
   * Fills the slot's data buffers: the device-writable bytes before the
   * status byte (`writable`), or the device-readable bytes after the header.
   * Sets `segs` to -1 when there are more buffers than the device takes.
   */
  #dataSegs(req: BlkRequest, chain: DescChain, writable: boolean): void {
    let skip = writable ? 0 : BLK_HEADER_BYTES;
    let remaining = writable ? chain.writeBytes - 1 : chain.readBytes - BLK_HEADER_BYTES;
    const from = writable ? chain.readable : 0;
    const to = writable ? chain.count : chain.readable;
    let n = 0;
    for (let i = from; i < to && remaining > 0; i++) {
      let addr = chain.addr[i] ?? 0;
      let len = chain.len[i] ?? 0;
      if (skip > 0) {
        const s = Math.min(skip, len);
        skip -= s;
        addr += s;
        len -= s;
        if (len === 0) continue;
      }
      len = Math.min(len, remaining);
      if (n >= MAX_SEGS) {
        req.segs = -1;
        return;
      }
      req.segRegion[n] = chain.region[i] ?? 0;
      req.segAddr[n] = addr;
      req.segLen[n] = len;
      n++;
      remaining -= len;
      req.dataBytes += len;
    }
    req.segs = n;
  }

  /** Checks the request against the disk and runs it on the right path. */
  #run(req: BlkRequest, chain: DescChain): void {
    const disk = this.disk;
    const type = req.type;
    if (type === BlkType.GET_ID) {
      const n = Math.min(BLK_ID_BYTES, req.dataBytes);
      this.#copyOut(req, this.#id.subarray(0, n));
      this.#stats.add(BlkStat.GET_IDS);
      req.written = n + 1;
      return this.#done(req, BlkStatus.OK);
    }
    const write = type === BlkType.OUT || type === BlkType.DISCARD || type === BlkType.WRITE_ZEROES;
    if (write && disk.readOnly) return this.#done(req, BlkStatus.IOERR);
    if (type === BlkType.IN || type === BlkType.OUT) {
      const bytes = req.dataBytes;
      if (
        req.sector < 0 || bytes % SECTOR !== 0 || bytes > BLK_MAX_REQUEST_BYTES ||
        req.sector * SECTOR + bytes > disk.size
      ) {
        return this.#done(req, BlkStatus.IOERR);
      }
      if (type === BlkType.IN) req.written = bytes + 1;
    } else if (type === BlkType.DISCARD || type === BlkType.WRITE_ZEROES) {
      if (req.dataBytes === 0 || req.dataBytes % BLK_SEGMENT_BYTES !== 0) {
        return this.#done(req, BlkStatus.IOERR);
      }
      const count = req.dataBytes / BLK_SEGMENT_BYTES;
      if (count > BLK_MAX_DISCARD_SEG || !this.#gather(chain, BLK_HEADER_BYTES, req.dataBytes)) {
        return this.#done(req, BlkStatus.IOERR);
      }
      const hv = this.#hdrView;
      for (let i = 0; i < count; i++) {
        const lo = hv.getUint32(i * 16, true);
        const hi = hv.getUint32(i * 16 + 4, true);
        const num = hv.getUint32(i * 16 + 8, true);
        const flags = hv.getUint32(i * 16 + 12, true);
        const sector = hi >= 0x20_0000 ? -1 : hi * 0x1_0000_0000 + lo;
        if ((flags & ~WRITE_ZEROES_FLAG_UNMAP) !== 0) return this.#done(req, BlkStatus.UNSUPP);
        if (type === BlkType.DISCARD && flags !== 0) return this.#done(req, BlkStatus.UNSUPP);
        if (sector < 0 || num > BLK_MAX_DISCARD_SECTORS || (sector + num) * SECTOR > disk.size) {
          return this.#done(req, BlkStatus.IOERR);
        }
        // Reuse the data buffer slots for the ranges: address = byte offset, len = bytes.
        req.segAddr[i] = sector * SECTOR;
        req.segLen[i] = num * SECTOR;
      }
      req.segs = count;
    }
    if (this.#limiter.active && !this.#admit(req)) return;
    this.#dispatch(req);
  }

  /** Whether the rate limiter lets `req` run now; if not, holds it and arms the retry timer. */
  #admit(req: BlkRequest): boolean {
    const bytes = req.type === BlkType.IN || req.type === BlkType.OUT ? req.dataBytes : 0;
    if (this.#held.length === 0 && this.#limiter.consume(1, bytes, performance.now())) return true;
    this.#held.push(req);
    this.#stats.add(BlkStat.THROTTLED);
    this.#armTimer();
    return false;
  }

  #armTimer(): void {
    const first = this.#held[0];
    if (first === undefined || this.#timer !== undefined) return;
    const bytes = first.type === BlkType.IN || first.type === BlkType.OUT ? first.dataBytes : 0;
    const ms = Math.max(1, Math.ceil(this.#limiter.msUntil(1, bytes, performance.now())));
    this.#ctx.asyncStarted(); // the loop keeps its event loop (and this timer) running
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#ctx.asyncEnded();
      this.#release();
    }, ms);
  }

  /** Runs held requests the limiter now admits, then takes new ones. */
  #release(): void {
    const now = performance.now();
    while (this.#held.length > 0) {
      const req = this.#held[0];
      if (req === undefined) break;
      const bytes = req.type === BlkType.IN || req.type === BlkType.OUT ? req.dataBytes : 0;
      if (this.#limiter.active && !this.#limiter.consume(1, bytes, now)) break;
      this.#held.shift();
      this.#dispatch(req);
    }
    this.#uring?.submit();
    this.#uring?.reapNow();
    this.#interrupt();
    if (this.#held.length > 0) this.#armTimer();
    else this.process(0);
  }

  /** Counts `req` and runs it on the drive's current path. */
  #dispatch(req: BlkRequest): void {
    this.#count(req);
    const disk = this.disk;
    const fd = disk.uringFd;
    const guard = req.type === BlkType.OUT && req.sector * SECTOR < PROBE_BYTES &&
      disk.guardsSector0;
    // Without a negotiated FLUSH a write is stable when it completes: io_uring writes carry
    // RWF_DSYNC; discards and write-zeroes take the synchronous path and an fdatasync.
    const stable = this.#writeThrough && req.type !== BlkType.IN && req.type !== BlkType.FLUSH &&
      req.type !== BlkType.GET_ID;
    // A write reaching the first sector of a probed raw image goes through the image's check.
    if (fd >= 0 && this.#uring !== null && !guard && (!stable || req.type === BlkType.OUT)) {
      // Buffered writes run here (stable ones wait for the disk: through io_uring).
      if (req.type === BlkType.OUT && !stable) {
        const t0 = performance.now();
        if (t0 >= this.#asyncWritesUntil) {
          this.#uring.runNow(req, fd);
          const t1 = performance.now();
          if (t1 - t0 > this.#stallMs) this.#asyncWritesUntil = t1 + ASYNC_WRITE_BACKOFF_MS;
          return;
        }
      }
      return this.#uring.start(req, fd, stable);
    }
    const uring = this.#uring;
    if (uring !== null) {
      // A cow/ image: reads of one buffer from one data run go through io_uring with the
      // rest of the batch; anything else first waits for those reads, since it may free or
      // reuse clusters they read.
      if (req.type === BlkType.IN) {
        if (this.#imageRead(req, uring)) return;
      } else uring.drain();
    }
    const sync = disk.syncTarget();
    if (sync !== null) {
      try {
        this.#runSync(req, sync);
        if (stable) sync.flushSync();
        return this.#done(req, BlkStatus.OK);
      } catch (_err) {
        return this.#done(req, BlkStatus.IOERR);
      }
    }
    this.#runAsync(req, stable);
  }

  /**
   * Resolves a one-buffer read through the image chain to a single data run
   * (queued on io_uring) or zeros; false when it needs the image's own read
   * (several runs, a compressed cluster, not a cow/ image).
   */
  #imageRead(req: BlkRequest, uring: BlkUring): boolean {
    if (req.segs !== 1 || req.dataBytes === 0) return false;
    const ext = this.#extent;
    const len = req.dataBytes;
    const off = req.sector * SECTOR;
    let img: DiskImage | null = this.disk.dev.target as DiskImage;
    for (;;) {
      if (!(img instanceof Qcow2Image) && !(img instanceof RawImage)) return false;
      img.readExtent(off, len, ext);
      if (ext.length < len) return false;
      if (ext.kind === EXTENT_DATA) {
        uring.startRead(req, ext.fd, ext.hostOffset);
        return true;
      }
      if (ext.kind !== EXTENT_BACKING) break;
      const b: DiskImage | null = img.backing;
      if (b === null || off >= b.size) break; // past the backing file: zeros
      if (off + len > b.size) return false;
      img = b;
    }
    if (ext.kind !== EXTENT_ZERO && ext.kind !== EXTENT_BACKING) return false;
    const region = req.segRegion[0] ?? 0;
    const at = this.#ctx.ram.offset(region, req.segAddr[0] ?? 0);
    this.#ctx.ram.bytes[region]?.fill(0, at, at + len);
    this.#done(req, BlkStatus.OK);
    return true;
  }

  #copyOut(req: BlkRequest, data: Uint8Array): void {
    const ram = this.#ctx.ram;
    let done = 0;
    for (let i = 0; i < req.segs && done < data.length; i++) {
      const region = req.segRegion[i] ?? 0;
      const off = ram.offset(region, req.segAddr[i] ?? 0);
      const n = Math.min(req.segLen[i] ?? 0, data.length - done);
      ram.bytes[region]?.set(data.subarray(done, done + n), off);
      done += n;
    }
  }

  #segView(req: BlkRequest, i: number): Uint8Array {
    const ram = this.#ctx.ram;
    const region = req.segRegion[i] ?? 0;
    const off = ram.offset(region, req.segAddr[i] ?? 0);
    const bytes = ram.bytes[region];
    if (bytes === undefined) throw new RangeError("buffer outside RAM");
    return bytes.subarray(off, off + (req.segLen[i] ?? 0));
  }

  #runSync(req: BlkRequest, t: SyncTarget): void {
    const type = req.type;
    if (type === BlkType.FLUSH) return t.flushSync();
    if (type !== BlkType.IN && type !== BlkType.OUT) {
      for (let i = 0; i < req.segs; i++) t.discardSync(req.segAddr[i] ?? 0, req.segLen[i] ?? 0);
      return;
    }
    let off = req.sector * SECTOR;
    for (let i = 0; i < req.segs; i++) {
      const v = this.#segView(req, i);
      if (type === BlkType.IN) t.readSync(off, v);
      else t.writeSync(off, v);
      off += v.length;
    }
  }

  #runAsync(req: BlkRequest, stable: boolean): void {
    const dev = this.disk.dev;
    const ctx = this.#ctx;
    ctx.asyncStarted();
    this.#asyncInflight++;
    const work = async (): Promise<void> => {
      const type = req.type;
      if (type === BlkType.FLUSH) return await dev.flush();
      if (type !== BlkType.IN && type !== BlkType.OUT) {
        for (let i = 0; i < req.segs; i++) {
          await dev.discard(req.segAddr[i] ?? 0, req.segLen[i] ?? 0);
        }
        if (stable) await dev.flush();
        return;
      }
      let off = req.sector * SECTOR;
      const jobs: Promise<void>[] = [];
      for (let i = 0; i < req.segs; i++) {
        const v = this.#segView(req, i);
        jobs.push(type === BlkType.IN ? dev.read(off, v) : dev.write(off, v));
        off += v.length;
      }
      await Promise.all(jobs);
      if (stable) await dev.flush();
    };
    work().then(
      () => this.#finishAsync(req, BlkStatus.OK),
      () => this.#finishAsync(req, BlkStatus.IOERR),
    );
  }

  #finishAsync(req: BlkRequest, status: number): void {
    this.#asyncInflight--;
    this.#ctx.asyncEnded();
    this.#done(req, status);
    this.#interrupt();
  }

  /** An engine finished `req` (status in `req.status`). */
  #finish(req: BlkRequest): void {
    this.#done(req, req.status);
  }

  #count(req: BlkRequest): void {
    const s = this.#stats;
    switch (req.type) {
      case BlkType.IN:
        s.add(BlkStat.READS);
        s.add(BlkStat.READ_BYTES, req.dataBytes);
        return;
      case BlkType.OUT:
        s.add(BlkStat.WRITES);
        s.add(BlkStat.WRITE_BYTES, req.dataBytes);
        return;
      case BlkType.FLUSH:
        return s.add(BlkStat.FLUSHES);
      case BlkType.DISCARD:
        return s.add(BlkStat.DISCARDS);
      case BlkType.WRITE_ZEROES:
        return s.add(BlkStat.WRITE_ZEROES);
    }
  }

  /** Writes the status byte and uses the chain. */
  #done(req: BlkRequest, status: number): void {
    if (status === BlkStatus.IOERR) this.#stats.add(BlkStat.IO_ERRORS);
    const bytes = this.#ctx.ram.bytes[req.statusRegion];
    if (bytes !== undefined) bytes[req.statusOffset] = status;
    this.#complete(req, status === BlkStatus.OK ? req.written : 1);
  }

  /**
   * Adds the used entry; {@link #interrupt} publishes it and counts it as
   * completed (once per batch) in the same turn.
   */
  #complete(req: BlkRequest, len: number): void {
    const queue = this.#ctx.queues[req.queue];
    queue?.addUsed(req.head, len);
    this.#free.push(req.slot);
    this.#touched |= 1 << req.queue;
    this.#uncounted++;
  }

  poll(): boolean {
    this.#polling = true;
    try {
      return this.#pollOnce();
    } finally {
      this.#polling = false;
    }
  }

  idle(): void {
    const queue = this.#ctx.queues[0];
    if (queue === null || queue === undefined || !this.#ctx.canTake()) return;
    queue.armNotify();
    if (this.#free.length > 0 && this.#held.length === 0 && queue.pending() > 0) this.process(0);
  }

  #pollOnce(): boolean {
    let did = false;
    const u = this.#uring;
    if (u !== null && u.ready()) {
      u.reapNow();
      this.#interrupt();
      did = true;
    }
    const queue = this.#ctx.queues[0];
    if (
      queue !== null && queue !== undefined && this.#free.length > 0 && this.#held.length === 0 &&
      this.#ctx.canTake() && queue.pending() > 0
    ) {
      this.process(0);
      did = true;
    }
    return did;
  }

  /** Completions the uring engine reaped outside process(): interrupt for them. */
  afterReap(): void {
    this.#interrupt();
  }

  async quiesced(): Promise<void> {
    await this.disk.switchArmed();
  }

  async call(method: string, args: unknown): Promise<unknown> {
    const a = (args ?? {}) as Record<string, unknown>;
    switch (method) {
      case "describe":
        return this.disk.describe();
      case "lunIdentity":
        return await this.disk.lunIdentity();
      case "armOverlay":
        if (typeof a.path !== "string") throw new TypeError("armOverlay needs { path }");
        return this.disk.armOverlay(a.path);
      case "disarm":
        this.disk.disarm();
        return this.disk.describe();
      case "commit":
        return await this.disk.commitTop();
      case "setRateLimiter": {
        this.#limiter.update((a.rateLimiter ?? {}) as RateLimiterConfig, performance.now());
        if (this.#held.length > 0) {
          if (this.#timer !== undefined) {
            clearTimeout(this.#timer);
            this.#timer = undefined;
            this.#ctx.asyncEnded();
          }
          this.#release();
        }
        return this.disk.describe();
      }
      case "replace": {
        const backend = a.backend as BlkBackendConfig["backend"] | undefined;
        if (backend === undefined) throw new TypeError("replace needs { backend }");
        const size = await this.disk.replace({ ...this.#cfg, backend });
        this.#ctx.updateConfig((cfg) => writeBlkConfig(cfg, size, this.disk.blockSize));
        return this.disk.describe();
      }
      default:
        throw new TypeError(`virtio-blk has no call '${method}'`);
    }
  }

  async close(): Promise<void> {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#ctx.asyncEnded();
    }
    this.#uring?.close();
    await this.disk.close();
  }
}

/** The back-end module's entry: opens the drive described by `config`. */
export function createBackend(config: unknown, ctx: VirtioBackendContext): Promise<BlkBackend> {
  return BlkBackend.create(config, ctx);
}
