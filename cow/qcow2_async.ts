/**
 * The data path of a qcow2 image whose chain ends in an asynchronous device
 * (a `RemoteLayer`: an iSCSI LUN): reads of clusters the image does not
 * hold, and the copy-on-write of partial writes into them, await the
 * backing; everything else (allocated clusters, metadata, allocation) stays
 * synchronous and so atomic with respect to other JS on the thread.
 *
 * Ordering, per cluster: a write that must read the backing first (a
 * copy-on-write) holds its cluster; every later write or discard of that
 * cluster queues behind it, in arrival order, and runs once it is done, so
 * two partial writes into one unallocated cluster both land (the second
 * finds the cluster allocated and writes into it) and a discard never lands
 * under a copy that started before it. A read does not wait: it reads what
 * the cluster holds when it arrives, or the backing (which never changes)
 * for a cluster not yet allocated, which is the content before any write
 * still in flight, as a read racing a write may see (QEMU's qcow2 driver
 * behaves the same). After its await a copy re-checks the cluster's state
 * before it allocates.
 *
 * @module
 */

import type { DiskImage } from "./disk_image.ts";
import { checkRange } from "./disk_image.ts";
import { BlockRangeError } from "./errors.ts";

/** What the asynchronous path needs of its image (closures over its private state). */
export interface AsyncHost {
  /** Image path (for errors). */
  readonly path: string;
  /** Cluster size in bytes. */
  readonly clusterSize: number;
  /** Virtual size in bytes. */
  size(): number;
  /** The backing image (null: none). */
  backing(): DiskImage | null;
  /** Throws unless the image may be modified now (open, writable, not corrupt). */
  writable(what: string): void;
  /** Whether a write of `length` bytes into cluster `ci` needs the backing's bytes. */
  needsBacking(ci: number, length: number): boolean;
  /** Writes into one cluster, with the backing's bytes of it (`cow`) when it needed them. */
  writeCluster(ci: number, inOff: number, chunk: Uint8Array, cow: Uint8Array | null): void;
  /** Deallocates one whole cluster. */
  discardCluster(ci: number): void;
}

/** The asynchronous data path of one image (see the module doc). */
export class AsyncCow {
  readonly #h: AsyncHost;
  /** Per cluster, the tail of its queue of copy-on-write writes (settles, never rejects). */
  readonly #queues = new Map<number, Promise<void>>();
  /** Requests in flight (for close). */
  #inflight = 0;
  #drained: (() => void) | null = null;

  /** The path of `host`. */
  constructor(host: AsyncHost) {
    this.#h = host;
  }

  /** Whether a copy-on-write is queued or running (synchronous writes must not cut in). */
  get busy(): boolean {
    return this.#queues.size > 0;
  }

  /** Resolves once no request is in flight. */
  async drain(): Promise<void> {
    while (this.#inflight > 0) await new Promise<void>((r) => (this.#drained = r));
  }

  async #track(p: Promise<void>): Promise<void> {
    this.#inflight++;
    try {
      await p;
    } finally {
      if (--this.#inflight === 0 && this.#drained !== null) {
        const d = this.#drained;
        this.#drained = null;
        d();
      }
    }
  }

  /** Fills `buf` from the backing image at `offset` (zeros past its end). */
  async #readBacking(offset: number, buf: Uint8Array): Promise<void> {
    const b = this.#h.backing();
    if (b === null || offset >= b.size) {
      buf.fill(0);
      return;
    }
    const n = Math.min(buf.length, b.size - offset);
    await b.read(offset, n === buf.length ? buf : buf.subarray(0, n));
    if (n < buf.length) buf.fill(0, n);
  }

  /** Writes `data` at `offset` (see {@link DiskImage.write}). */
  write(offset: number, data: Uint8Array): Promise<void> {
    const h = this.#h;
    const jobs: Promise<void>[] = [];
    try {
      h.writable("write");
      checkRange("write", h.path, offset, data.length, h.size(), BlockRangeError);
      const cs = h.clusterSize;
      for (let pos = 0; pos < data.length;) {
        const go = offset + pos;
        const ci = Math.floor(go / cs);
        const inOff = go - ci * cs;
        const n = Math.min(cs - inOff, data.length - pos);
        const chunk = pos === 0 && n === data.length ? data : data.subarray(pos, pos + n);
        if (!this.#queues.has(ci) && !h.needsBacking(ci, n)) {
          h.writeCluster(ci, inOff, chunk, null);
        } else {
          jobs.push(this.#enqueue(ci, () => this.#copyOnWrite(ci, inOff, chunk)));
        }
        pos += n;
      }
    } catch (err) {
      // Queued parts still run; report the first failure once they are done.
      return Promise.allSettled(jobs).then(() => Promise.reject(err));
    }
    if (jobs.length === 0) return Promise.resolve();
    return this.#track(Promise.all(jobs).then(() => {}));
  }

  /** Runs `job` after everything queued on cluster `ci`; its result is the caller's. */
  #enqueue(ci: number, job: () => Promise<void> | void): Promise<void> {
    const prev = this.#queues.get(ci);
    const run = prev === undefined ? Promise.resolve().then(job) : prev.then(job);
    // The queue's tail only orders the next job: the job's own outcome goes to its caller.
    const tail = run.then(() => {}, () => {});
    this.#queues.set(ci, tail);
    tail.then(() => {
      if (this.#queues.get(ci) === tail) this.#queues.delete(ci);
    });
    return run;
  }

  async #copyOnWrite(ci: number, inOff: number, chunk: Uint8Array): Promise<void> {
    const h = this.#h;
    h.writable("write");
    if (!h.needsBacking(ci, chunk.length)) return h.writeCluster(ci, inOff, chunk, null);
    const cow = new Uint8Array(h.clusterSize);
    await this.#readBacking(ci * h.clusterSize, cow);
    // The backing never changes, so its bytes are still right; the cluster may have been
    // allocated or zeroed meanwhile only by a job outside this queue (none today): check again.
    h.writable("write");
    h.writeCluster(ci, inOff, chunk, h.needsBacking(ci, chunk.length) ? cow : null);
  }

  /** Discards `[offset, +length)` (see {@link DiskImage.discard}): partial clusters are zero-written. */
  discard(offset: number, length: number): Promise<void> {
    const h = this.#h;
    const parts: Promise<void>[] = [];
    try {
      h.writable("discard");
      const size = h.size();
      checkRange("discard", h.path, offset, length, size, BlockRangeError);
      if (length === 0) return Promise.resolve();
      const cs = h.clusterSize;
      const end = offset + length;
      const start = Math.ceil(offset / cs) * cs;
      const alignedEnd = end === size ? Math.ceil(end / cs) * cs : Math.floor(end / cs) * cs;
      if (start >= alignedEnd) return this.write(offset, new Uint8Array(length));
      if (start > offset) parts.push(this.write(offset, new Uint8Array(start - offset)));
      if (alignedEnd < end) parts.push(this.write(alignedEnd, new Uint8Array(end - alignedEnd)));
      for (let ci = start / cs; ci < alignedEnd / cs; ci++) {
        if (this.#queues.has(ci)) {
          const c = ci;
          parts.push(this.#enqueue(c, () => h.discardCluster(c)));
        } else {
          h.discardCluster(ci);
        }
      }
    } catch (err) {
      return Promise.allSettled(parts).then(() => Promise.reject(err));
    }
    if (parts.length === 0) return Promise.resolve();
    return this.#track(Promise.all(parts).then(() => {}));
  }
}
