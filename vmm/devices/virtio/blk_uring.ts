/**
 * virtio-blk requests on a raw file through io_uring: reads and writes go
 * straight between the file and the guest's buffers (iovecs of host
 * addresses of guest RAM), many in flight, one `io_uring_enter` per batch.
 * FLUSH is an fdatasync; DISCARD and WRITE_ZEROES punch holes (which read
 * back as zeros).
 *
 * Completions signal an eventfd the I/O loop watches; buffered reads that
 * hit the page cache complete inside the submit, so the back end reaps right
 * after submitting too.
 *
 * @module
 */

import {
  EventFd,
  FALLOC_KEEP_SIZE,
  FALLOC_PUNCH_HOLE,
  ioShim,
  IoUring,
  URING_CQE_BYTES,
  URING_FSYNC_DATASYNC,
  URING_REQ_BYTES,
  UringOp,
  UringReq,
} from "../../../native/io_ffi.ts";
import type { VirtioBackendContext } from "./backend.ts";
import type { BlkRequest } from "./blk.ts";
import { BlkStatus, BlkType, SECTOR } from "./blk_format.ts";

const IOVEC_BYTES = 16;
/** `RWF_DSYNC`: the write is durable (data and the metadata to read it) when it completes. */
const RWF_DSYNC = 2;
const EOPNOTSUPP = 95;

/** The io_uring engine of one drive. */
export class BlkUring {
  readonly #ctx: VirtioBackendContext;
  readonly #ring: IoUring;
  readonly #event: EventFd;
  readonly #reqs: Uint8Array<ArrayBuffer>;
  readonly #reqWords: Uint32Array<ArrayBuffer>;
  #queued = 0;
  #inflight = 0; // operations queued or submitted and not yet reaped
  #readsNow = true; // lone reads are tried from the page cache first (see submit)
  readonly #cqes: Uint8Array<ArrayBuffer>;
  readonly #cqeWords: Int32Array<ArrayBuffer>;
  readonly #iov: Uint8Array<ArrayBuffer>;
  readonly #iovView: DataView;
  readonly #iovAddr: number;
  readonly #iovStride: number;
  readonly #slots: BlkRequest[] = [];
  readonly #onDone: (r: BlkRequest) => void;
  readonly #onBatch: () => void;

  /**
   * A ring for `slots` requests of up to `maxSegs` buffers or `maxRanges`
   * discard ranges; `onDone` gets each finished request, `onBatch` runs after
   * completions reaped from the eventfd.
   */
  constructor(
    ctx: VirtioBackendContext,
    slots: number,
    maxSegs: number,
    maxRanges: number,
    onDone: (r: BlkRequest) => void,
    onBatch: () => void = () => {},
  ) {
    this.#ctx = ctx;
    this.#onDone = onDone;
    this.#onBatch = onBatch;
    this.#event = EventFd.create();
    // Every completion signals the eventfd. (IORING_REGISTER_EVENTFD_ASYNC would skip the
    // inline ones, but it also skips completions posted by task_work, not only io-wq
    // workers, which left cold-cache reads unsignalled.)
    this.#ring = IoUring.create(Math.min(4096, slots * 2), this.#event.fd);
    this.#reqs = new Uint8Array(slots * Math.max(1, maxRanges) * URING_REQ_BYTES);
    this.#reqWords = new Uint32Array(this.#reqs.buffer);
    this.#cqes = new Uint8Array(this.#ring.entries * 2 * URING_CQE_BYTES);
    this.#cqeWords = new Int32Array(this.#cqes.buffer);
    this.#iovStride = maxSegs * IOVEC_BYTES;
    this.#iov = new Uint8Array(slots * this.#iovStride);
    this.#iovView = new DataView(this.#iov.buffer);
    this.#iovAddr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#iov)));
    ctx.watch(this.#event.fd, () => {
      this.#event.read();
      this.reapNow();
      this.#onBatch();
    });
  }

  #queue(
    op: number,
    fd: number,
    addr: number,
    len: number,
    opFlags: number,
    slot: number,
    off: number,
  ): void {
    // The record in 32-bit words (native order, as io.c copies it): opcode with
    // flags 0 in word 0, then fd, addr, len, op flags, user_data, off.
    const w = this.#reqWords;
    const at = this.#queued * (URING_REQ_BYTES / 4);
    w[at] = op;
    w[at + UringReq.FD / 4] = fd;
    w[at + UringReq.ADDR / 4] = addr % 0x1_0000_0000;
    w[at + UringReq.ADDR / 4 + 1] = addr / 0x1_0000_0000;
    w[at + UringReq.LEN / 4] = len;
    w[at + UringReq.OP_FLAGS / 4] = opFlags;
    w[at + UringReq.USER_DATA / 4] = slot;
    w[at + UringReq.USER_DATA / 4 + 1] = 0;
    w[at + UringReq.OFF / 4] = off % 0x1_0000_0000;
    w[at + UringReq.OFF / 4 + 1] = off / 0x1_0000_0000;
    this.#queued++;
    this.#inflight++;
  }

  /**
   * Queues the operations of `req` (checked by the caller) on `fd`; `dsync`
   * makes a write stable before it completes (`RWF_DSYNC`).
   */
  start(req: BlkRequest, fd: number, dsync = false): void {
    this.#slots[req.slot] = req;
    const type = req.type;
    if (type === BlkType.IN || type === BlkType.OUT) {
      if (req.dataBytes === 0) {
        this.#onDone(req);
        return;
      }
      req.pendingOps = 1;
      const off = req.sector * SECTOR;
      const rwFlags = dsync && type === BlkType.OUT ? RWF_DSYNC : 0;
      if (req.segs === 1) {
        // One buffer (most requests): READ/WRITE, no iovec for the kernel to import.
        const host = this.#ctx.ram.host(req.segRegion[0] ?? 0, req.segAddr[0] ?? 0);
        const op = type === BlkType.IN ? UringOp.READ : UringOp.WRITE;
        this.#queue(op, fd, host, req.dataBytes, rwFlags, req.slot, off);
        return;
      }
      const op = type === BlkType.IN ? UringOp.READV : UringOp.WRITEV;
      this.#queue(op, fd, this.#iovAddr + this.#iovecs(req), req.segs, rwFlags, req.slot, off);
      return;
    }
    if (type === BlkType.FLUSH) {
      req.pendingOps = 1;
      this.#queue(UringOp.FSYNC, fd, 0, 0, URING_FSYNC_DATASYNC, req.slot, 0);
      return;
    }
    // DISCARD / WRITE_ZEROES: one hole per range (segAddr = byte offset, segLen = bytes).
    let n = 0;
    for (let i = 0; i < req.segs; i++) {
      const len = req.segLen[i] ?? 0;
      if (len === 0) continue;
      // IORING_OP_FALLOCATE: addr carries the length, len the mode.
      this.#queue(
        UringOp.FALLOCATE,
        fd,
        len,
        FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE,
        0,
        req.slot,
        req.segAddr[i] ?? 0,
      );
      n++;
    }
    req.pendingOps = n;
    if (n === 0) this.#onDone(req);
  }

  /** Lays out the iovecs of `req`'s data buffers in its slot; returns their offset in #iov. */
  #iovecs(req: BlkRequest): number {
    const ram = this.#ctx.ram;
    const iv = this.#iovView;
    const base = req.slot * this.#iovStride;
    for (let i = 0; i < req.segs; i++) {
      const host = ram.host(req.segRegion[i] ?? 0, req.segAddr[i] ?? 0);
      const at = base + i * IOVEC_BYTES;
      iv.setUint32(at, host % 0x1_0000_0000, true);
      iv.setUint32(at + 4, Math.floor(host / 0x1_0000_0000), true);
      iv.setUint32(at + 8, req.segLen[i] ?? 0, true);
      iv.setUint32(at + 12, 0, true);
    }
    return base;
  }

  /**
   * Runs a read or write (IN/OUT, checked by the caller) on this thread with
   * preadv/pwritev and finishes it.
   */
  runNow(req: BlkRequest, fd: number): void {
    if (req.dataBytes > 0) {
      const s = ioShim();
      const at = this.#iovecs(req);
      const off = req.sector * SECTOR;
      const lo = off % 0x1_0000_0000, hi = Math.floor(off / 0x1_0000_0000);
      const iov = this.#iov;
      const r = req.type === BlkType.IN
        ? s.vkio_preadv(fd, iov, iov.length, at, req.segs, lo, hi)
        : s.vkio_pwritev(fd, iov, iov.length, at, req.segs, lo, hi);
      if (r !== req.dataBytes) req.status = BlkStatus.IOERR;
    }
    this.#onDone(req);
  }

  /**
   * Queues a read of `req`'s one data buffer from `fd` at `hostOffset` (a
   * `cow/` image's data run); bytes past the end of the file read as zeros,
   * as the image's own reads do.
   */
  startRead(req: BlkRequest, fd: number, hostOffset: number): void {
    this.#slots[req.slot] = req;
    req.pendingOps = 1;
    req.zeroFillShort = true;
    const host = this.#ctx.ram.host(req.segRegion[0] ?? 0, req.segAddr[0] ?? 0);
    this.#queue(UringOp.READ, fd, host, req.dataBytes, 0, req.slot, hostOffset);
  }

  /**
   * Submits what is queued and waits until nothing is in flight (before a
   * request that may free or reuse clusters an image read still reads).
   */
  drain(): void {
    while (this.#inflight > 0) {
      this.submit();
      if (this.#inflight > 0) this.#reapAll(true);
    }
  }

  /** Whether completions are waiting (no syscall). */
  ready(): boolean {
    return this.#ring.ready() > 0;
  }

  /**
   * Submits what {@link start} queued (what the SQ has no room for stays
   * queued). A lone read with nothing else in flight is first tried on this
   * thread from the page cache (preadv2 with RWF_NOWAIT: 1.3-1.4 µs for
   * 4 KiB here against 1.9-2.0 µs for a one-entry io_uring_enter); one that
   * would wait for the disk goes to the ring.
   */
  submit(): void {
    if (this.#queued === 0) return;
    if (this.#queued === 1 && this.#inflight === 1 && this.#readsNow && this.#readNow()) return;
    const took = this.#ring.submit(this.#reqs, this.#queued);
    if (took < this.#queued) {
      this.#reqs.copyWithin(0, took * URING_REQ_BYTES, this.#queued * URING_REQ_BYTES);
    }
    this.#queued -= took;
  }

  /** Finishes the one queued record if it is a read the page cache answers whole. */
  #readNow(): boolean {
    const w = this.#reqWords;
    const op = (w[0] ?? 0) & 0xff;
    if (op !== UringOp.READ && op !== UringOp.READV) return false;
    const req = this.#slots[w[UringReq.USER_DATA / 4] ?? -1];
    if (req === undefined || req.pendingOps !== 1) return false;
    const r = ioShim().vkio_uring_read_nowait(this.#reqs, URING_REQ_BYTES);
    // Short (part not cached, or the end of an image file): the ring reads it all again.
    if (r !== req.dataBytes) {
      if (r === -EOPNOTSUPP) this.#readsNow = false; // a file system without RWF_NOWAIT
      return false;
    }
    this.#queued = 0;
    this.#inflight = 0;
    req.pendingOps = 0;
    this.#onDone(req);
    return true;
  }

  /** Handles every completion available now. */
  reapNow(): void {
    this.#reapAll(false);
  }

  /** Handles every completion available (with `wait`, blocks for at least one first). */
  #reapAll(wait: boolean): void {
    const cw = this.#cqeWords;
    const max = this.#cqes.length / URING_CQE_BYTES;
    for (;;) {
      const n = this.#ring.reap(this.#cqes, max, wait);
      wait = false;
      this.#inflight -= n;
      for (let i = 0; i < n; i++) {
        // user_data (the slot) in word 0, res in word 2 (native order).
        const slot = cw[i * 4] ?? -1;
        const res = cw[i * 4 + 2] ?? 0;
        const req = this.#slots[slot];
        if (req === undefined) continue;
        const want = req.type === BlkType.IN || req.type === BlkType.OUT ? req.dataBytes : 0;
        if (res !== want) {
          if (req.zeroFillShort && res >= 0 && res < want) this.#zeroTail(req, res);
          else req.status = BlkStatus.IOERR;
        }
        if (--req.pendingOps === 0) this.#onDone(req);
      }
      if (this.#queued > 0) this.submit();
      if (n < max) return;
    }
  }

  /** Zeros `req`'s one data buffer from byte `from` (an image read that met the end of file). */
  #zeroTail(req: BlkRequest, from: number): void {
    const ram = this.#ctx.ram;
    const region = req.segRegion[0] ?? 0;
    const off = ram.offset(region, req.segAddr[0] ?? 0);
    ram.bytes[region]?.fill(0, off + from, off + req.dataBytes);
  }

  /** Closes the ring and its eventfd (nothing may be in flight). */
  close(): void {
    this.#ctx.unwatch(this.#event.fd);
    this.#ring.close();
    this.#event.close();
  }
}
