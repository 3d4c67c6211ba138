/**
 * virtio-net's receive side (virtio 1.2 §5.1.6.3), on the device's I/O
 * Worker: chains are taken from the receive queue ahead of frames (a small
 * cache of resolved buffers), frames are read from the TAP straight into
 * them in batches (`readv`, no copy), and with `VIRTIO_NET_F_MRG_RXBUF` a
 * frame runs on over as many buffers as it needs, all of which appear on the
 * used ring at once. A frame is read only when the buffers can hold the
 * largest frame the negotiated offloads allow; otherwise frames wait in the
 * TAP (its queue drops when full, as a NIC does) until the guest adds
 * buffers, and the TAP is not polled meanwhile.
 *
 * While netguard blocks a class of inbound traffic (`net_filter.ts`), frames
 * are read one per call and classified in the guest's buffers; a blocked
 * frame is counted and its buffers are reused for the next frame, so the
 * guest never sees it.
 *
 * @module
 */

import { Iovecs, type Tap } from "../../../native/tap.ts";
import type { VirtioBackendContext } from "./backend.ts";
import {
  NET_HDR_BYTES,
  NET_QUEUE_SIZE,
  NetHdr,
  NetStat,
  type NetStats,
  RX_QUEUE,
} from "./net_format.ts";
import { FILTER_SNAP, FilterVerdict, NET_INBOUND, type NetFrameFilter } from "./net_filter.ts";
import { DescChain, POP_ERROR, POP_OK, type SplitQueue } from "./queue.ts";
import type { RateLimiter } from "./rate_limiter.ts";

/** Most iovecs the receive cache holds. */
const MAX_IOVECS = 4096;
/** Receive chains cached ahead of frames. */
const RX_CACHE = 128;
/** Most frames moved in one call, so receive cannot starve transmit. */
const BUDGET = 256;

/** The receive side of one virtio-net device. */
export class NetReceiver {
  readonly #ctx: VirtioBackendContext;
  readonly #tap: Tap;
  readonly #stats: NetStats;
  readonly #limit: RateLimiter;
  readonly #filter: NetFrameFilter;
  readonly #retry: (ms: number, nowMs: number) => void;
  readonly #chain = new DescChain(NET_QUEUE_SIZE);
  // The cache: chains taken, resolved to iovecs, not yet used.
  readonly #iov = new Iovecs(MAX_IOVECS);
  readonly #region = new Int32Array(MAX_IOVECS);
  readonly #off = new Float64Array(MAX_IOVECS);
  readonly #head = new Int32Array(RX_CACHE);
  readonly #cap = new Float64Array(RX_CACHE);
  readonly #first = new Int32Array(RX_CACHE + 1);
  readonly #out = new Int32Array(2 * BUDGET);
  #count = 0;
  #space = 0;
  // Per activation.
  #merge = false;
  #guestCsum = false;
  #need = 0;
  #mtu = 0;
  #tapWatched = false;
  #held = false;

  /**
   * The receive side over `tap`; `limit` paces it, and `retry(ms, now)` asks
   * for {@link resume} once the limit allows again; `filter` applies
   * netguard's inbound blocks.
   */
  constructor(
    ctx: VirtioBackendContext,
    tap: Tap,
    stats: NetStats,
    limit: RateLimiter,
    filter: NetFrameFilter,
    retry: (ms: number, nowMs: number) => void,
  ) {
    this.#ctx = ctx;
    this.#tap = tap;
    this.#stats = stats;
    this.#limit = limit;
    this.#filter = filter;
    this.#retry = retry;
  }

  /**
   * Starts receiving after DRIVER_OK: `merge` (MRG_RXBUF negotiated),
   * `guestCsum` (GUEST_CSUM negotiated) and `need`, the buffer space a frame
   * may need (0: any chain holds a frame), and `mtu` the negotiated
   * `VIRTIO_NET_F_MTU` (0: none): larger unsegmented frames are dropped.
   */
  activate(merge: boolean, guestCsum: boolean, need: number, mtu = 0): void {
    this.#merge = merge;
    this.#guestCsum = guestCsum;
    this.#need = need;
    this.#mtu = mtu;
    this.#watchTap(true);
  }

  /** The guest added receive buffers: frames may wait in the TAP. */
  buffersAdded(): void {
    if (!this.#held) this.#watchTap(true);
    this.run();
  }

  /** Whether the rate limiter holds receiving back. */
  get held(): boolean {
    return this.#held;
  }

  /** Receives again after the rate limiter held it back. */
  resume(): void {
    if (!this.#held) return;
    this.#held = false;
    this.#watchTap(true);
    this.run();
  }

  /** Before a save: the cached chains go back to the ring, so the saved state holds none. */
  quiesced(): void {
    this.#queue()?.undoPop(this.#count);
    this.#clearCache();
    this.#watchTap(false);
  }

  /** Device reset: forgets the cache and stops watching the TAP. */
  reset(): void {
    this.#clearCache();
    this.#watchTap(false);
    this.#held = false;
  }

  #queue(): SplitQueue | null {
    return this.#ctx.queues[RX_QUEUE] ?? null;
  }

  #watchTap(on: boolean): void {
    if (on === this.#tapWatched) return;
    if (on) this.#ctx.watch(this.#tap.fd, () => this.run());
    else this.#ctx.unwatch(this.#tap.fd);
    this.#tapWatched = on;
  }

  #clearCache(): void {
    this.#count = 0;
    this.#space = 0;
    this.#iov.clear();
  }

  /** Takes receive chains into the cache; false when the driver broke the queue. */
  #refill(q: SplitQueue): boolean {
    const chain = this.#chain;
    const iov = this.#iov;
    while (this.#count < RX_CACHE && iov.count + NET_QUEUE_SIZE <= MAX_IOVECS) {
      const r = q.pop(chain);
      if (r === POP_ERROR) {
        this.#ctx.fail(q.error);
        return false;
      }
      if (r !== POP_OK) break;
      if (chain.readable > 0) {
        this.#ctx.fail(
          `queue ${RX_QUEUE}: receive chain ${chain.head} has device-readable buffers`,
        );
        return false;
      }
      if (
        chain.writeBytes < NET_HDR_BYTES ||
        (this.#merge && (chain.len[0] ?? 0) < NET_HDR_BYTES)
      ) {
        this.#ctx.fail(
          `queue ${RX_QUEUE}: receive chain ${chain.head} of ${chain.writeBytes} bytes cannot hold the ${NET_HDR_BYTES}-byte header`,
        );
        return false;
      }
      const ram = this.#ctx.ram;
      const c = this.#count;
      this.#head[c] = chain.head;
      this.#cap[c] = chain.writeBytes;
      this.#first[c] = iov.count;
      for (let k = 0; k < chain.count; k++) {
        const region = chain.region[k] ?? 0;
        const addr = chain.addr[k] ?? 0;
        const i = iov.push(ram.host(region, addr), chain.len[k] ?? 0);
        this.#region[i] = region;
        this.#off[i] = ram.offset(region, addr);
      }
      this.#first[c + 1] = iov.count;
      this.#count = c + 1;
      this.#space += chain.writeBytes;
    }
    return true;
  }

  /** Writes byte `value` at offset `at` of cached chain `c`'s buffers. */
  #putByte(c: number, at: number, value: number): void {
    const ram = this.#ctx.ram;
    for (let i = this.#first[c] ?? 0; i < (this.#first[c + 1] ?? 0); i++) {
      const len = this.#iov.lengthOf(i);
      if (at < len) {
        const b = ram.bytes[this.#region[i] ?? 0];
        if (b !== undefined) b[(this.#off[i] ?? 0) + at] = value;
        return;
      }
      at -= len;
    }
  }

  /** Drops the first `n` cached chains (used by frames). */
  #shiftCache(n: number): void {
    if (n === 0) return;
    const left = this.#count - n;
    const from = this.#first[n] ?? 0;
    const iovs = this.#iov.count - from;
    this.#iov.words.copyWithin(0, from * 4, (from + iovs) * 4);
    this.#region.copyWithin(0, from, from + iovs);
    this.#off.copyWithin(0, from, from + iovs);
    this.#iov.count = iovs;
    for (let c = 0; c < n; c++) this.#space -= this.#cap[c] ?? 0;
    this.#head.copyWithin(0, n, this.#count);
    this.#cap.copyWithin(0, n, this.#count);
    for (let c = 0; c <= left; c++) this.#first[c] = (this.#first[c + n] ?? 0) - from;
    this.#count = left;
  }

  /**
   * netguard's verdict on the `len`-byte frame (header included) read into
   * the `used` cached chains from chain `c`: classified in place when its
   * first bytes are in one buffer, else gathered into the filter's scratch.
   */
  #verdict(c: number, used: number, len: number, nowMs: number): number {
    const filter = this.#filter;
    const ram = this.#ctx.ram;
    const iov = this.#iov;
    const want = Math.min(len - NET_HDR_BYTES, FILTER_SNAP);
    const i0 = this.#first[c] ?? 0;
    const b0 = ram.bytes[this.#region[i0] ?? 0];
    if (b0 !== undefined && iov.lengthOf(i0) - NET_HDR_BYTES >= want) {
      return filter.verdict(NET_INBOUND, b0, (this.#off[i0] ?? 0) + NET_HDR_BYTES, want, nowMs);
    }
    const dst = filter.scratch;
    let skip = NET_HDR_BYTES;
    let got = 0;
    const end = this.#first[c + used] ?? i0;
    for (let i = i0; i < end && got < want; i++) {
      const n = iov.lengthOf(i);
      if (skip >= n) {
        skip -= n;
        continue;
      }
      const b = ram.bytes[this.#region[i] ?? 0];
      if (b === undefined) break;
      const at = (this.#off[i] ?? 0) + skip;
      const take = Math.min(n - skip, want - got);
      for (let k = 0; k < take; k++) dst[got + k] = b[at + k] ?? 0;
      got += take;
      skip = 0;
    }
    return filter.verdict(NET_INBOUND, dst, 0, got, nowMs);
  }

  /** Moves frames from the TAP into receive buffers, up to a budget. */
  run(): void {
    const ctx = this.#ctx;
    const q = this.#queue();
    if (q === null || !ctx.canTake() || this.#held) return;
    const stats = this.#stats;
    const limit = this.#limit;
    let budget = BUDGET;
    while (budget > 0) {
      if (!this.#refill(q)) return;
      if (this.#count === 0 || this.#space < this.#need) {
        // No room: frames wait in the TAP until the guest adds buffers (it will notify).
        q.armNotify();
        if (q.pending() > 0) continue;
        stats.add(NetStat.RX_NO_BUFFERS);
        this.#watchTap(false);
        return;
      }
      let max = Math.min(budget, BUDGET);
      // One load per batch; while netguard blocks, one frame per read, so a
      // blocked one leaves its buffers in place for the next.
      const filtering = this.#filter.blocking(NET_INBOUND);
      if (filtering) max = 1;
      const now = limit.active ? performance.now() : 0;
      if (limit.active) {
        if (!limit.consume(1, 1, now)) {
          stats.add(NetStat.RX_THROTTLED);
          this.#held = true;
          this.#watchTap(false);
          this.#retry(limit.msUntil(1, 1, now), now);
          return;
        }
        max = 1;
      }
      const out = this.#out;
      const frames = this.#tap.readChains(
        this.#iov,
        this.#first,
        this.#count,
        this.#merge,
        this.#need,
        out,
        max,
        this.#mtu,
      );
      if (frames === 0) {
        limit.refund(1, 1);
        return; // the TAP is empty
      }
      let c = 0;
      let delivered = 0;
      let bytes = 0;
      const ram = ctx.ram;
      for (let f = 0; f < frames; f++) {
        const len = out[2 * f] ?? 0;
        const used = out[2 * f + 1] ?? 0;
        if (used === 0) {
          stats.add(NetStat.RX_TOO_BIG);
          continue;
        }
        if (filtering) {
          const v = this.#verdict(c, used, len, performance.timeOrigin + performance.now());
          if (v !== FilterVerdict.PASS) {
            stats.add(v === FilterVerdict.BLOCKED ? NetStat.RX_BLOCKED : NetStat.RX_LIMITED);
            limit.refund(1, 1);
            continue;
          }
        }
        const nb = this.#merge ? used : 1;
        const i0 = this.#first[c] ?? 0;
        const hdr = ram.bytes[this.#region[i0] ?? 0];
        if (hdr !== undefined && this.#iov.lengthOf(i0) >= NET_HDR_BYTES) {
          // The header is in the chain's first buffer (always, with MRG_RXBUF).
          const at = this.#off[i0] ?? 0;
          hdr[at + NetHdr.NUM_BUFFERS] = nb & 0xff;
          hdr[at + NetHdr.NUM_BUFFERS + 1] = nb >> 8;
          // Without GUEST_CSUM the flags must be zero (the TAP may say DATA_VALID).
          if (!this.#guestCsum) hdr[at + NetHdr.FLAGS] = 0;
        } else {
          this.#putByte(c, NetHdr.NUM_BUFFERS, nb & 0xff);
          this.#putByte(c, NetHdr.NUM_BUFFERS + 1, nb >> 8);
          if (!this.#guestCsum) this.#putByte(c, NetHdr.FLAGS, 0);
        }
        let left = len;
        for (let k = 0; k < used; k++, c++) {
          const n = Math.min(this.#cap[c] ?? 0, left);
          left -= n;
          q.addUsed(this.#head[c] ?? 0, n);
          ctx.started();
          ctx.completed();
        }
        delivered++;
        bytes += len - NET_HDR_BYTES;
        if (limit.active) limit.charge(len - 1, now);
      }
      if (c > 0) {
        stats.add(NetStat.RX_FRAMES, delivered);
        stats.add(NetStat.RX_BYTES, bytes);
        q.publishUsed();
        ctx.interruptIfNeeded(RX_QUEUE);
        this.#shiftCache(c);
      }
      budget -= frames;
      if (frames < max) return; // the TAP is drained (or the rest needs more buffers)
    }
  }
}
