/**
 * virtio-net (virtio 1.2 §5.1), the device side, on its I/O Worker, over a
 * host TAP opened with a virtio-net header on every frame: the guest's
 * header goes to the TAP as it is (checksum and segmentation offloads cost
 * nothing here), and the TAP's header comes back to the guest with
 * `num_buffers` filled in.
 *
 * Receive: chains are taken from the receive queue ahead of frames (a small
 * cache of resolved buffers), frames are read from the TAP straight into
 * them in batches (`readv`, no copy), and with `VIRTIO_NET_F_MRG_RXBUF` a
 * frame runs on over as many buffers as it needs, all of which appear on
 * the used ring at once. A frame is read only when the buffers can hold the
 * largest frame the negotiated offloads allow; otherwise frames wait in the
 * TAP (its queue drops when full, as a NIC does) until the guest adds
 * buffers, and the TAP is not polled meanwhile. Before a quiesce the cached
 * chains go back to the available ring, so a saved device holds no buffer
 * the guest gave it.
 *
 * Transmit: chains are taken in batches and written with one `writev` per
 * frame in one call; a chain too short for the header, longer than a 64 KiB
 * GSO frame, or asking for an offload that was not negotiated is dropped
 * and counted. Both directions may be limited by Firecracker-style rate
 * limiters (ops = frames, bandwidth = bytes); a limited direction retries on
 * a timerfd.
 *
 * This module is the back-end module of a network interface: it exports
 * `createBackend(config, ctx)`.
 *
 * @module
 */

import {
  Iovecs,
  Tap,
  Timer,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_TSO_ECN,
} from "../../../native/tap.ts";
import { type VirtioBackend, type VirtioBackendContext, VirtioBackendError } from "./backend.ts";
import {
  Gso,
  HDR_F_NEEDS_CSUM,
  MAX_GSO_FRAME,
  MAX_PLAIN_FRAME,
  NET_HDR_BYTES,
  NET_QUEUE_SIZE,
  type NetBackendConfig,
  NetFeature,
  NetHdr,
  type NetRateLimiterUpdate,
  NetStat,
  NetStats,
  RX_QUEUE,
  SET_RATE_LIMITERS,
  TX_QUEUE,
  writeNetConfig,
} from "./net_format.ts";
import { DescChain, POP_ERROR, POP_OK, type SplitQueue } from "./queue.ts";
import { RateLimiter } from "./rate_limiter.ts";

/** Most iovecs one batch holds (receive cache or transmit batch). */
const MAX_IOVECS = 4096;
/** Receive chains cached ahead of frames. */
const RX_CACHE = 128;
/** Most frames moved per direction in one call, so one direction cannot starve the other. */
const BUDGET = 256;
/** Frames per transmit batch. */
const TX_BATCH = 64;

/** The virtio-net back end. */
export class NetBackend implements VirtioBackend {
  readonly #ctx: VirtioBackendContext;
  readonly #id: string;
  readonly #tap: Tap;
  readonly #timer: Timer;
  readonly #stats: NetStats;
  readonly #rxLimit: RateLimiter;
  readonly #txLimit: RateLimiter;
  readonly #chain = new DescChain(NET_QUEUE_SIZE);
  // Receive cache: chains taken, resolved to iovecs, not yet used.
  readonly #rxIov = new Iovecs(MAX_IOVECS);
  readonly #rxRegion = new Int32Array(MAX_IOVECS);
  readonly #rxOff = new Float64Array(MAX_IOVECS);
  readonly #rxHead = new Int32Array(RX_CACHE);
  readonly #rxCap = new Float64Array(RX_CACHE);
  readonly #rxFirst = new Int32Array(RX_CACHE + 1);
  readonly #rxOut = new Int32Array(2 * BUDGET);
  #rxCount = 0;
  #rxSpace = 0;
  // Transmit batch.
  readonly #txIov = new Iovecs(MAX_IOVECS);
  readonly #txCounts = new Int32Array(TX_BATCH);
  readonly #txHeads = new Int32Array(TX_BATCH);
  readonly #txRes = new Int32Array(TX_BATCH);
  // Per activation.
  #merge = false;
  #guestCsum = false;
  #need = 0;
  #tapWatched = false;
  #timerWatched = false;
  #timerAt = Infinity;
  #rxHeld = false;
  #txHeld = false;

  private constructor(
    ctx: VirtioBackendContext,
    cfg: NetBackendConfig,
    tap: Tap,
    timer: Timer,
  ) {
    this.#ctx = ctx;
    this.#id = cfg.id;
    this.#tap = tap;
    this.#timer = timer;
    this.#stats = new NetStats(cfg.stats);
    this.#rxLimit = new RateLimiter(cfg.rxRateLimiter);
    this.#txLimit = new RateLimiter(cfg.txRateLimiter);
  }

  /** Opens the TAP and builds the back end (the module's `createBackend`). */
  static async create(config: unknown, ctx: VirtioBackendContext): Promise<NetBackend> {
    const cfg = config as NetBackendConfig;
    let tap: Tap;
    try {
      tap = await Tap.open(cfg.tap, { netns: cfg.netns });
      tap.setOffload(0);
    } catch (err) {
      throw new VirtioBackendError(cfg.id, err instanceof Error ? err.message : String(err));
    }
    const timer = await Timer.create();
    writeNetConfig(ctx.config, cfg.mac);
    return new NetBackend(ctx, cfg, tap, timer);
  }

  activate(): void {
    const ctx = this.#ctx;
    this.#merge = ctx.negotiated(NetFeature.MRG_RXBUF);
    // Segmentation offloads need checksum offload (virtio 1.2 §5.1.3.1).
    const csum = ctx.negotiated(NetFeature.GUEST_CSUM);
    const tso4 = csum && ctx.negotiated(NetFeature.GUEST_TSO4);
    const tso6 = csum && ctx.negotiated(NetFeature.GUEST_TSO6);
    const ecn = (tso4 || tso6) && ctx.negotiated(NetFeature.GUEST_ECN);
    this.#guestCsum = csum;
    this.#tap.setOffload(
      (csum ? TUN_F_CSUM : 0) | (tso4 ? TUN_F_TSO4 : 0) | (tso6 ? TUN_F_TSO6 : 0) |
        (ecn ? TUN_F_TSO_ECN : 0),
    );
    // With merging, read only when the buffers hold the largest frame possible.
    this.#need = this.#merge ? NET_HDR_BYTES + (tso4 || tso6 ? MAX_GSO_FRAME : MAX_PLAIN_FRAME) : 0;
    this.#watchTap(true);
    if (!this.#timerWatched) {
      ctx.watch(this.#timer.fd, () => this.#onTimer());
      this.#timerWatched = true;
    }
  }

  process(q: number): void {
    if (q === RX_QUEUE) {
      // The guest added receive buffers: frames may wait in the TAP.
      if (!this.#rxHeld) this.#watchTap(true);
      this.#rx();
    } else if (q === TX_QUEUE) this.#tx();
  }

  quiesced(): void {
    // Buffers taken ahead go back to the ring: the saved state holds none.
    this.#rxQueue()?.undoPop(this.#rxCount);
    this.#clearCache();
    this.#watchTap(false);
  }

  reset(): void {
    this.#clearCache();
    this.#watchTap(false);
    this.#timer.arm(0);
    this.#timerAt = Infinity;
    this.#rxHeld = false;
    this.#txHeld = false;
    this.#tap.setOffload(0);
  }

  /**
   * `setRateLimiters` ({@link NetRateLimiterUpdate}): replaces the limiters
   * of a running interface; a direction held back by its old limiter is
   * retried at once under the new one.
   */
  call(method: string, args: unknown): Promise<unknown> {
    if (method !== SET_RATE_LIMITERS) {
      return Promise.reject(new VirtioBackendError(this.#id, `virtio-net has no call '${method}'`));
    }
    const u = args as NetRateLimiterUpdate;
    const now = performance.now();
    try {
      if (u.rx !== undefined) this.#rxLimit.update(u.rx, now);
      if (u.tx !== undefined) this.#txLimit.update(u.tx, now);
    } catch (err) {
      return Promise.reject(err);
    }
    this.#timer.arm(0);
    this.#timerAt = Infinity;
    this.#retryHeld();
    return Promise.resolve(undefined);
  }

  close(): Promise<void> {
    this.#tap.close();
    this.#timer.close();
    return Promise.resolve();
  }

  #rxQueue(): SplitQueue | null {
    return this.#ctx.queues[RX_QUEUE] ?? null;
  }

  #watchTap(on: boolean): void {
    if (on === this.#tapWatched) return;
    if (on) this.#ctx.watch(this.#tap.fd, () => this.#rx());
    else this.#ctx.unwatch(this.#tap.fd);
    this.#tapWatched = on;
  }

  #clearCache(): void {
    this.#rxCount = 0;
    this.#rxSpace = 0;
    this.#rxIov.clear();
  }

  /** Retries a limited direction at `nowMs + ms`. */
  #retryIn(ms: number, nowMs: number): void {
    const at = nowMs + Math.max(ms, 0.05);
    if (at >= this.#timerAt) return;
    this.#timerAt = at;
    this.#timer.arm(at - nowMs);
  }

  #onTimer(): void {
    this.#timer.drain();
    this.#timerAt = Infinity;
    this.#retryHeld();
  }

  /** Takes up again the directions a limiter held back (each may be held again). */
  #retryHeld(): void {
    if (!this.#ctx.canTake()) return;
    if (this.#rxHeld) {
      this.#rxHeld = false;
      this.#watchTap(true);
      this.#rx();
    }
    if (this.#txHeld) {
      this.#txHeld = false;
      this.#tx();
    }
  }

  // ---- receive ----

  /** Takes receive chains into the cache; false when the driver broke the queue. */
  #refill(q: SplitQueue): boolean {
    const chain = this.#chain;
    const iov = this.#rxIov;
    while (this.#rxCount < RX_CACHE && iov.count + NET_QUEUE_SIZE <= MAX_IOVECS) {
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
      const c = this.#rxCount;
      this.#rxHead[c] = chain.head;
      this.#rxCap[c] = chain.writeBytes;
      this.#rxFirst[c] = iov.count;
      for (let k = 0; k < chain.count; k++) {
        const region = chain.region[k] ?? 0;
        const addr = chain.addr[k] ?? 0;
        const i = iov.push(ram.host(region, addr), chain.len[k] ?? 0);
        this.#rxRegion[i] = region;
        this.#rxOff[i] = ram.offset(region, addr);
      }
      this.#rxFirst[c + 1] = iov.count;
      this.#rxCount = c + 1;
      this.#rxSpace += chain.writeBytes;
    }
    return true;
  }

  /** Writes byte `value` at offset `at` of cached chain `c`'s buffers. */
  #putByte(c: number, at: number, value: number): void {
    const ram = this.#ctx.ram;
    for (let i = this.#rxFirst[c] ?? 0; i < (this.#rxFirst[c + 1] ?? 0); i++) {
      const len = this.#rxIov.lengthOf(i);
      if (at < len) {
        const b = ram.bytes[this.#rxRegion[i] ?? 0];
        if (b !== undefined) b[(this.#rxOff[i] ?? 0) + at] = value;
        return;
      }
      at -= len;
    }
  }

  /** Drops the first `n` cached chains (used by frames). */
  #shiftCache(n: number): void {
    if (n === 0) return;
    const left = this.#rxCount - n;
    const from = this.#rxFirst[n] ?? 0;
    const iovs = this.#rxIov.count - from;
    this.#rxIov.words.copyWithin(0, from * 4, (from + iovs) * 4);
    this.#rxRegion.copyWithin(0, from, from + iovs);
    this.#rxOff.copyWithin(0, from, from + iovs);
    this.#rxIov.count = iovs;
    for (let c = 0; c < n; c++) this.#rxSpace -= this.#rxCap[c] ?? 0;
    this.#rxHead.copyWithin(0, n, this.#rxCount);
    this.#rxCap.copyWithin(0, n, this.#rxCount);
    for (let c = 0; c <= left; c++) this.#rxFirst[c] = (this.#rxFirst[c + n] ?? 0) - from;
    this.#rxCount = left;
  }

  #rx(): void {
    const ctx = this.#ctx;
    const q = this.#rxQueue();
    if (q === null || !ctx.canTake() || this.#rxHeld) return;
    const stats = this.#stats;
    const limit = this.#rxLimit;
    let budget = BUDGET;
    while (budget > 0) {
      if (!this.#refill(q)) return;
      if (this.#rxCount === 0 || this.#rxSpace < this.#need) {
        // No room: frames wait in the TAP until the guest adds buffers (it will notify).
        q.armNotify();
        if (q.pending() > 0) continue;
        stats.add(NetStat.RX_NO_BUFFERS);
        this.#watchTap(false);
        return;
      }
      let max = Math.min(budget, BUDGET);
      const now = limit.active ? performance.now() : 0;
      if (limit.active) {
        if (!limit.consume(1, 1, now)) {
          stats.add(NetStat.RX_THROTTLED);
          this.#rxHeld = true;
          this.#watchTap(false);
          this.#retryIn(limit.msUntil(1, 1, now), now);
          return;
        }
        max = 1;
      }
      const out = this.#rxOut;
      const frames = this.#tap.readChains(
        this.#rxIov,
        this.#rxFirst,
        this.#rxCount,
        this.#merge,
        this.#need,
        out,
        max,
      );
      if (frames === 0) {
        limit.ops?.replenish(1);
        limit.bandwidth?.replenish(1);
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
        const nb = this.#merge ? used : 1;
        const i0 = this.#rxFirst[c] ?? 0;
        const hdr = ram.bytes[this.#rxRegion[i0] ?? 0];
        if (hdr !== undefined && this.#rxIov.lengthOf(i0) >= NET_HDR_BYTES) {
          // The header is in the chain's first buffer (always, with MRG_RXBUF).
          const at = this.#rxOff[i0] ?? 0;
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
          const n = Math.min(this.#rxCap[c] ?? 0, left);
          left -= n;
          q.addUsed(this.#rxHead[c] ?? 0, n);
          ctx.started();
          ctx.completed();
        }
        delivered++;
        bytes += len - NET_HDR_BYTES;
        if (limit.active) limit.charge(len - 1, now);
      }
      stats.add(NetStat.RX_FRAMES, delivered);
      stats.add(NetStat.RX_BYTES, bytes);
      q.publishUsed();
      ctx.interruptIfNeeded(RX_QUEUE);
      this.#shiftCache(c);
      budget -= frames;
      if (frames < max) return; // the TAP is drained (or the rest needs more buffers)
    }
  }

  // ---- transmit ----

  /** Byte `at` of the chain's readable data (the header may be split over buffers). */
  #chainByte(at: number): number {
    const chain = this.#chain;
    const ram = this.#ctx.ram;
    for (let k = 0; k < chain.readable; k++) {
      const len = chain.len[k] ?? 0;
      if (at < len) {
        const r = chain.region[k] ?? 0;
        return ram.bytes[r]?.[ram.offset(r, chain.addr[k] ?? 0) + at] ?? 0;
      }
      at -= len;
    }
    return 0;
  }

  /** Whether the chain's header asks only for offloads that were negotiated. */
  #headerAllowed(): boolean {
    const ctx = this.#ctx;
    const flags = this.#chainByte(NetHdr.FLAGS);
    const gso = this.#chainByte(NetHdr.GSO_TYPE);
    if ((flags & HDR_F_NEEDS_CSUM) !== 0 && !ctx.negotiated(NetFeature.CSUM)) return false;
    if (gso === Gso.NONE) return true;
    if (!ctx.negotiated(NetFeature.CSUM)) return false;
    if ((gso & Gso.ECN) !== 0 && !ctx.negotiated(NetFeature.HOST_ECN)) return false;
    const kind = gso & ~Gso.ECN;
    if (kind === Gso.TCPV4) return ctx.negotiated(NetFeature.HOST_TSO4);
    if (kind === Gso.TCPV6) return ctx.negotiated(NetFeature.HOST_TSO6);
    return false;
  }

  #tx(): void {
    const ctx = this.#ctx;
    const q = ctx.queues[TX_QUEUE];
    if (q === null || q === undefined || !ctx.canTake() || this.#txHeld) return;
    const stats = this.#stats;
    const limit = this.#txLimit;
    const chain = this.#chain;
    const iov = this.#txIov;
    const ram = ctx.ram;
    let budget = BUDGET;
    for (;;) {
      iov.clear();
      let n = 0;
      let dropped = 0;
      let empty = false;
      while (n < TX_BATCH && budget > 0) {
        if (iov.count + NET_QUEUE_SIZE > MAX_IOVECS) break;
        const r = q.pop(chain);
        if (r === POP_ERROR) return ctx.fail(q.error);
        if (r !== POP_OK) {
          empty = true;
          break;
        }
        budget--;
        const bytes = chain.readBytes;
        if (
          bytes < NET_HDR_BYTES || bytes > NET_HDR_BYTES + MAX_GSO_FRAME || !this.#headerAllowed()
        ) {
          stats.add(NetStat.TX_BAD);
          q.addUsed(chain.head, 0);
          dropped++;
          continue;
        }
        if (limit.active) {
          const now = performance.now();
          if (!limit.consume(1, bytes - NET_HDR_BYTES, now)) {
            q.undoPop(1);
            stats.add(NetStat.TX_THROTTLED);
            this.#txHeld = true;
            this.#retryIn(limit.msUntil(1, bytes - NET_HDR_BYTES, now), now);
            budget = 0;
            break;
          }
        }
        for (let k = 0; k < chain.readable; k++) {
          const region = chain.region[k] ?? 0;
          iov.push(ram.host(region, chain.addr[k] ?? 0), chain.len[k] ?? 0);
        }
        this.#txCounts[n] = chain.readable;
        this.#txHeads[n] = chain.head;
        n++;
      }
      if (n > 0) {
        const res = this.#txRes;
        const tried = this.#tap.writeFrames(iov, this.#txCounts, n, res);
        for (let i = 0; i < n; i++) {
          const w = i < tried ? (res[i] ?? -1) : -11; // not tried: the TAP would block (EAGAIN)
          if (w >= 0) {
            stats.add(NetStat.TX_FRAMES);
            stats.add(NetStat.TX_BYTES, w - NET_HDR_BYTES);
          } else stats.add(NetStat.TX_ERRORS);
          q.addUsed(this.#txHeads[i] ?? 0, 0);
          ctx.started();
          ctx.completed();
        }
      }
      if (n + dropped > 0) {
        q.publishUsed();
        ctx.interruptIfNeeded(TX_QUEUE);
      }
      if (budget <= 0) return;
      if (empty) {
        // EVENT_IDX: ask for a notify past what we took, then re-check.
        q.armNotify();
        if (q.pending() === 0) return;
      }
    }
  }
}

/** The back-end module's factory: opens the TAP named in `config`. */
export function createBackend(config: unknown, ctx: VirtioBackendContext): Promise<NetBackend> {
  return NetBackend.create(config, ctx);
}
