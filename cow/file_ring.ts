/**
 * Asynchronous positioned file I/O for image files: many reads and writes in
 * flight at once, off the JS thread, through one io_uring per thread (the
 * raw syscalls of `native/io.c`, shared with the virtio-blk device).
 *
 * How a request runs:
 * - `read`/`write` queue a request record; a microtask submits everything
 *   queued in the same JS turn with one `io_uring_enter`, so 32 requests
 *   issued together cost one syscall.
 * - A read is first tried from the page cache on the JS thread
 *   (`preadv2(RWF_NOWAIT)`, {@link FileRing.readCached}): a cached read
 *   costs one syscall and no ring round trip; what is not cached goes to
 *   the ring.
 * - Buffered reads and writes that the page cache satisfies complete inside
 *   the submitting `io_uring_enter`; they are reaped right after it, with no
 *   thread hop. The rest complete in the kernel (async buffered reads, or
 *   io-wq workers), signalling an eventfd that one waiter polls on Deno's
 *   FFI thread pool (`nonblocking` FFI), so the event loop keeps running.
 * - `readDirect` reads through a descriptor opened O_DIRECT into an aligned
 *   bounce buffer (`file_io.ts` decides when: a deep queue of small reads
 *   the page cache lacks).
 * - Short transfers continue where they stopped; a read reaching end of
 *   file resolves with the bytes it got.
 *
 * Why io_uring and not a pool of threads each blocking in `pread`: a
 * `nonblocking` FFI `pread` per request costs a thread-pool hop per request
 * (measured in `cow/README.md`, "Asynchronous I/O"), while the ring needs
 * none for cached data and none per request for uncached data (the kernel's
 * async buffered reads need no thread at all).
 *
 * Buffers: the kernel reads and writes the caller's bytes in place, so the
 * buffer must not be detached or resized until the promise settles (the
 * engine holds a reference until then, so it is not collected).
 *
 * @module
 */

import { loadShim } from "../native/ffi.ts";
import {
  EventFd,
  FdWaiter,
  ioShim,
  IoUring,
  URING_CQE_BYTES,
  URING_FSYNC_DATASYNC,
  URING_REQ_BYTES,
  UringOp,
  UringReq,
} from "../native/io_ffi.ts";
import { DiskIoError } from "./errors.ts";
import { ERRNO, errText } from "./libc.ts";

const { EINTR, EAGAIN, EOPNOTSUPP } = ERRNO;
const ENOSPC = 28;
/** Requests in flight at most (more wait in JS for a free slot). */
const SLOTS = 256;
const TWO32 = 0x1_0000_0000;
/** Largest O_DIRECT read (through one bounce buffer). */
export const DIRECT_MAX: number = 64 * 1024;
/** Bounce buffers (O_DIRECT reads in flight at most). */
const BOUNCES = 64;

/** Who a request belongs to: told when it settles, before its promise does. */
export interface RingOwner {
  /** The path named in errors. */
  readonly path: string;
  /** Called once per request when it completes or fails. */
  settled(): void;
}

/** One request in flight. */
interface Pending {
  op: number;
  /** O_DIRECT read: the kernel fills `buf` (an aligned bounce buffer), then `target` gets it. */
  target: Uint8Array | null;
  fd: number;
  buf: Uint8Array;
  /** Bytes moved so far. */
  done: number;
  offset: number;
  owner: RingOwner;
  resolve: () => void;
  reject: (err: Error) => void;
}

const NO_BYTES = new Uint8Array(0);
/** The call an error names, by opcode. */
const CALLS: Record<number, string> = {
  [UringOp.READ]: "pread",
  [UringOp.WRITE]: "pwrite",
  [UringOp.FSYNC]: "fdatasync",
};

/** The io_uring engine of this thread (see the module doc). */
export class FileRing {
  readonly #ring: IoUring;
  readonly #event: EventFd;
  readonly #waiter: FdWaiter;
  readonly #reqs = new Uint8Array(SLOTS * URING_REQ_BYTES);
  readonly #reqWords = new Uint32Array(this.#reqs.buffer);
  /** One record, for {@link FileRing.readCached}. */
  readonly #one = new Uint8Array(URING_REQ_BYTES);
  readonly #oneWords = new Uint32Array(this.#one.buffer);
  readonly #cqes: Uint8Array<ArrayBuffer>;
  readonly #cqeWords: Int32Array<ArrayBuffer>;
  readonly #slots: Array<Pending | null> = new Array<Pending | null>(SLOTS).fill(null);
  readonly #free: number[] = [];
  /** Requests waiting for a free slot. */
  readonly #backlog: Pending[] = [];
  #queued = 0;
  #inflight = 0;
  #submitPlanned = false;
  #waiting = false;
  #nowait = true;

  /** Sets up the ring (the shim must be open on this thread: see {@link fileRing}). */
  static create(): FileRing {
    return new FileRing();
  }

  /** Free 4 KiB-aligned bounce buffers of {@link DIRECT_MAX} bytes for O_DIRECT reads. */
  readonly #bounces: Uint8Array[] = [];

  private constructor() {
    const pool = new Uint8Array(BOUNCES * DIRECT_MAX + 4096);
    const addr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(pool)));
    const skip = (4096 - (addr % 4096)) % 4096;
    for (let i = 0; i < BOUNCES; i++) {
      this.#bounces.push(pool.subarray(skip + i * DIRECT_MAX, skip + (i + 1) * DIRECT_MAX));
    }
    this.#event = EventFd.create();
    // Every completion signals the eventfd (the _ASYNC registration misses task_work ones).
    this.#ring = IoUring.create(SLOTS, this.#event.fd);
    this.#waiter = new FdWaiter([this.#event.fd], [true]);
    this.#cqes = new Uint8Array(this.#ring.entries * 2 * URING_CQE_BYTES);
    this.#cqeWords = new Int32Array(this.#cqes.buffer);
    for (let i = SLOTS - 1; i >= 0; i--) this.#free.push(i);
  }

  /** O_DIRECT reads started so far (see `ImageFile.readAsync`). */
  directReads = 0;

  /** Requests submitted or queued and not yet completed. */
  get inflight(): number {
    return this.#inflight + this.#backlog.length;
  }

  /**
   * Reads `buf.length` bytes at `offset` of `fd` into `buf` (of which the
   * first `done` are read already); bytes past end of file read as zeros.
   */
  read(fd: number, buf: Uint8Array, offset: number, owner: RingOwner, done = 0): Promise<void> {
    return this.#start(UringOp.READ, fd, buf, offset, owner, done);
  }

  /**
   * Reads `buf.length` bytes at `offset` of `fd`, a descriptor opened with
   * O_DIRECT (offset and length multiples of 4096, at most
   * {@link DIRECT_MAX}), through an aligned bounce buffer; null when none is
   * free (the caller reads buffered instead).
   */
  readDirect(fd: number, buf: Uint8Array, offset: number, owner: RingOwner): Promise<void> | null {
    const bounce = this.#bounces.pop();
    if (bounce === undefined) return null;
    this.directReads++;
    return new Promise<void>((resolve, reject) => {
      const p: Pending = {
        op: UringOp.READ,
        target: buf,
        fd,
        buf: bounce.subarray(0, buf.length),
        done: 0,
        offset,
        owner,
        resolve,
        reject,
      };
      this.#enqueue(p);
    });
  }

  /** Writes all of `buf` at `offset` of `fd`. */
  write(fd: number, buf: Uint8Array, offset: number, owner: RingOwner): Promise<void> {
    return this.#start(UringOp.WRITE, fd, buf, offset, owner);
  }

  /** `fdatasync(fd)`: every write completed before this call is durable when it resolves. */
  datasync(fd: number, owner: RingOwner): Promise<void> {
    return this.#start(UringOp.FSYNC, fd, NO_BYTES, 0, owner);
  }

  #start(
    op: number,
    fd: number,
    buf: Uint8Array,
    offset: number,
    owner: RingOwner,
    done = 0,
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const p: Pending = { op, target: null, fd, buf, done, offset, owner, resolve, reject };
      if (buf.length === done && op !== UringOp.FSYNC) {
        owner.settled();
        resolve();
      } else {
        this.#enqueue(p);
      }
    });
  }

  #enqueue(p: Pending): void {
    const slot = this.#free.pop();
    if (slot === undefined) {
      this.#backlog.push(p);
      return;
    }
    this.#slots[slot] = p;
    this.#record(p, slot);
    this.#plan();
  }

  /** Submits in a microtask what this JS turn queued. */
  #plan(): void {
    if (this.#submitPlanned || this.#queued === 0) return;
    this.#submitPlanned = true;
    queueMicrotask(() => this.#submit());
  }

  /** Queues the record of the rest of `p` in slot `slot`. */
  #record(p: Pending, slot: number): void {
    const rest = p.done === 0 ? p.buf : p.buf.subarray(p.done);
    const addr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(rest)));
    const off = p.offset + p.done;
    const w = this.#reqWords;
    const at = this.#queued * (URING_REQ_BYTES / 4);
    w[at] = p.op;
    w[at + UringReq.FD / 4] = p.fd;
    w[at + UringReq.ADDR / 4] = addr % TWO32;
    w[at + UringReq.ADDR / 4 + 1] = Math.floor(addr / TWO32);
    w[at + UringReq.LEN / 4] = Math.min(rest.length, 1 << 30);
    w[at + UringReq.OP_FLAGS / 4] = p.op === UringOp.FSYNC ? URING_FSYNC_DATASYNC : 0;
    w[at + UringReq.USER_DATA / 4] = slot;
    w[at + UringReq.USER_DATA / 4 + 1] = 0;
    w[at + UringReq.OFF / 4] = off % TWO32;
    w[at + UringReq.OFF / 4 + 1] = Math.floor(off / TWO32);
    this.#queued++;
    this.#inflight++;
  }

  #submit(): void {
    this.#submitPlanned = false;
    if (this.#queued === 0) return;
    // The SQ has SLOTS entries and at most SLOTS records are queued, so it takes them all.
    this.#ring.submit(this.#reqs, this.#queued);
    this.#queued = 0;
    this.#reap();
    this.#arm();
  }

  /**
   * Reads what the page cache holds of `[offset, +buf.length)` on this
   * thread without waiting for the disk (`preadv2(RWF_NOWAIT)`); returns the
   * bytes read from the start (0 when the first page is not cached, or the
   * file system cannot say; short at end of file too).
   */
  readCached(fd: number, buf: Uint8Array, offset: number): number {
    if (!this.#nowait) return 0;
    const addr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
    const w = this.#oneWords;
    w[0] = UringOp.READ;
    w[UringReq.FD / 4] = fd;
    w[UringReq.ADDR / 4] = addr % TWO32;
    w[UringReq.ADDR / 4 + 1] = Math.floor(addr / TWO32);
    w[UringReq.LEN / 4] = Math.min(buf.length, 1 << 30);
    w[UringReq.OFF / 4] = offset % TWO32;
    w[UringReq.OFF / 4 + 1] = Math.floor(offset / TWO32);
    const r = ioShim().vkio_uring_read_nowait(this.#one, URING_REQ_BYTES);
    if (r === -EOPNOTSUPP) this.#nowait = false; // a file system without RWF_NOWAIT
    return r > 0 ? r : 0;
  }

  /** Handles every completion waiting in the CQ. */
  #reap(): void {
    while (this.#ring.ready() > 0) {
      const n = this.#ring.reap(this.#cqes, this.#ring.entries * 2);
      const w = this.#cqeWords;
      for (let i = 0; i < n; i++) {
        this.#complete(w[i * 4] ?? 0, w[i * 4 + 2] ?? 0);
      }
    }
    this.#plan();
    // Nothing left in flight: release the waiter blocked in poll (it keeps the process alive).
    if (this.#inflight === 0 && this.#waiting) this.#event.signal();
  }

  #complete(slot: number, res: number): void {
    const p = this.#slots[slot];
    if (p === undefined || p === null) return;
    this.#inflight--;
    if (p.target !== null) return this.#completeDirect(slot, p, res);
    if (res === -EINTR || res === -EAGAIN) {
      this.#record(p, slot);
      return;
    }
    if (res < 0) {
      this.#release(slot);
      p.owner.settled();
      p.reject(new DiskIoError(CALLS[p.op] ?? "io_uring", p.owner.path, -res, errText(-res)));
      return;
    }
    p.done += res;
    if (p.done < p.buf.length && res > 0) {
      this.#record(p, slot); // a short transfer: the rest
      return;
    }
    this.#release(slot);
    p.owner.settled();
    if (p.done === p.buf.length) p.resolve();
    else if (p.op === UringOp.READ) {
      p.buf.fill(0, p.done); // end of file
      p.resolve();
    } else {
      p.reject(new DiskIoError("pwrite", p.owner.path, ENOSPC, "the write moved no bytes"));
    }
  }

  /** An O_DIRECT read: short only at end of file; the bytes go from the bounce buffer. */
  #completeDirect(slot: number, p: Pending, res: number): void {
    if (res === -EINTR || res === -EAGAIN) {
      this.#record(p, slot);
      return;
    }
    this.#release(slot);
    const target = p.target as Uint8Array;
    this.#bounces.push(new Uint8Array(p.buf.buffer, p.buf.byteOffset, DIRECT_MAX));
    p.owner.settled();
    if (res < 0) {
      p.reject(new DiskIoError("pread(O_DIRECT)", p.owner.path, -res, errText(-res)));
      return;
    }
    target.set(res === target.length ? p.buf : p.buf.subarray(0, res));
    if (res < target.length) target.fill(0, res);
    p.resolve();
  }

  #release(slot: number): void {
    this.#slots[slot] = null;
    const next = this.#backlog.shift();
    if (next === undefined) {
      this.#free.push(slot);
      return;
    }
    this.#slots[slot] = next;
    this.#record(next, slot);
  }

  /** Waits for completions on the FFI thread pool while requests are in flight. */
  #arm(): void {
    if (this.#waiting || this.#inflight === 0) return;
    // Drain signals of completions already reaped, then look once more before waiting.
    this.#event.read();
    if (this.#ring.ready() > 0) {
      this.#reap();
      if (this.#inflight === 0) return;
    }
    this.#waiting = true;
    this.#waiter.wait(-1).then(
      () => {
        this.#waiting = false;
        this.#reap();
        this.#arm();
      },
      (err: Error) => {
        this.#waiting = false;
        this.#fail(err);
      },
    );
  }

  /** Rejects every request (the ring itself failed). */
  #fail(err: Error): void {
    for (let slot = 0; slot < SLOTS; slot++) {
      const p = this.#slots[slot];
      if (p === null || p === undefined) continue;
      this.#slots[slot] = null;
      this.#free.push(slot);
      p.owner.settled();
      p.reject(err);
    }
    for (const p of this.#backlog.splice(0)) {
      p.owner.settled();
      p.reject(err);
    }
    this.#inflight = 0;
  }
}

let ring: FileRing | null = null;
let starting: Promise<FileRing> | null = null;

/**
 * The thread's {@link FileRing}, created on first use (which loads the C
 * shim: built once with `cc`, then cached).
 */
export function fileRing(): FileRing | Promise<FileRing> {
  if (ring !== null) return ring;
  starting ??= loadShim().then(() => (ring = FileRing.create()));
  return starting;
}
