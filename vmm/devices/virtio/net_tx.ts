/**
 * virtio-net's transmit side (virtio 1.2 §5.1.6.2), on the device's I/O
 * Worker: chains are taken in batches and written with one `writev` per
 * frame in one call; a chain too short for the header, longer than a 64 KiB
 * GSO frame, or asking for an offload that was not negotiated is dropped and
 * counted, never fatal.
 *
 * While netguard blocks a class of outbound traffic (`net_filter.ts`), the
 * first bytes of each frame are copied out of guest memory, classified
 * there and written to the TAP from that copy (so the guest cannot change
 * them between the check and the write); a blocked frame is counted, used
 * with length 0, and its headers go to netguard through the filter's ring.
 *
 * @module
 */

import { Iovecs, type Tap } from "../../../native/tap.ts";
import type { VirtioBackendContext } from "./backend.ts";
import {
  Gso,
  HDR_F_NEEDS_CSUM,
  MAX_GSO_FRAME,
  NET_HDR_BYTES,
  NET_QUEUE_SIZE,
  NetFeature,
  NetHdr,
  NetStat,
  type NetStats,
  TX_QUEUE,
} from "./net_format.ts";
import { FILTER_SNAP, FilterVerdict, NET_OUTBOUND, type NetFrameFilter } from "./net_filter.ts";
import { DescChain, POP_ERROR, POP_OK } from "./queue.ts";
import type { RateLimiter } from "./rate_limiter.ts";

/** Most iovecs one batch holds. */
const MAX_IOVECS = 4096;
/** Most frames moved in one call, so transmit cannot starve receive. */
const BUDGET = 256;
/** Frames per transmit batch. */
const TX_BATCH = 64;
/** Bytes of a frame's copied head while netguard filters (header and snap, 8-aligned). */
const HEAD_SLOT = (NET_HDR_BYTES + FILTER_SNAP + 7) & ~7;

/** The transmit side of one virtio-net device. */
export class NetTransmitter {
  readonly #ctx: VirtioBackendContext;
  readonly #tap: Tap;
  readonly #stats: NetStats;
  readonly #limit: RateLimiter;
  readonly #filter: NetFrameFilter;
  readonly #retry: (ms: number, nowMs: number) => void;
  readonly #chain = new DescChain(NET_QUEUE_SIZE);
  readonly #iov = new Iovecs(MAX_IOVECS);
  // The copied heads of one batch's frames while netguard filters.
  readonly #heads8 = new Uint8Array(TX_BATCH * HEAD_SLOT);
  readonly #headsAddr = Iovecs.addressOf(this.#heads8);
  readonly #counts = new Int32Array(TX_BATCH);
  readonly #heads = new Int32Array(TX_BATCH);
  readonly #res = new Int32Array(TX_BATCH);
  #held = false;

  /**
   * The transmit side over `tap`; `limit` paces it, and `retry(ms, now)` asks
   * for {@link resume} once the limit allows again; `filter` applies
   * netguard's outbound blocks.
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

  /** Whether the rate limiter holds transmitting back. */
  get held(): boolean {
    return this.#held;
  }

  /** Transmits again after the rate limiter held it back. */
  resume(): void {
    if (!this.#held) return;
    this.#held = false;
    this.run();
  }

  /** Device reset. */
  reset(): void {
    this.#held = false;
  }

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

  /**
   * Copies the first `n` readable bytes of the chain into head slot `slot`
   * and pushes iovecs for the frame: that copy, then the rest from guest
   * memory. Returns the number of iovecs pushed.
   */
  #pushCopiedHead(slot: number, n: number): number {
    const chain = this.#chain;
    const ram = this.#ctx.ram;
    const iov = this.#iov;
    const dst = this.#heads8;
    const at = slot * HEAD_SLOT;
    let got = 0;
    let pushed = 1;
    iov.push(this.#headsAddr + at, n);
    for (let k = 0; k < chain.readable; k++) {
      const r = chain.region[k] ?? 0;
      const addr = chain.addr[k] ?? 0;
      const len = chain.len[k] ?? 0;
      let skip = 0;
      if (got < n) {
        const b = ram.bytes[r];
        const from = ram.offset(r, addr);
        const take = Math.min(len, n - got);
        if (b !== undefined) {
          for (let i = 0; i < take; i++) dst[at + got + i] = b[from + i] ?? 0;
        }
        got += take;
        skip = take;
      }
      if (skip < len) {
        iov.push(ram.host(r, addr + skip), len - skip);
        pushed++;
      }
    }
    return pushed;
  }

  /**
   * Under a netguard block: classifies the popped chain (`bytes` readable,
   * header included) from a copy of its head in slot `slot`. A frame that
   * passes gets its iovecs (the copy, then the rest from guest memory) and
   * their count is returned; a dropped one is counted, handed to netguard's
   * ring, its rate-limiter tokens given back, and -1 returned.
   */
  #filtered(slot: number, bytes: number): number {
    const iov = this.#iov;
    const head = Math.min(bytes, NET_HDR_BYTES + FILTER_SNAP);
    const first = iov.count;
    const pushed = this.#pushCopiedHead(slot, head);
    const at = slot * HEAD_SLOT + NET_HDR_BYTES;
    const now = performance.timeOrigin + performance.now();
    const v = this.#filter.verdict(NET_OUTBOUND, this.#heads8, at, head - NET_HDR_BYTES, now);
    if (v === FilterVerdict.PASS) return pushed;
    iov.count = first;
    this.#limit.refund(1, bytes - NET_HDR_BYTES);
    this.#stats.add(v === FilterVerdict.BLOCKED ? NetStat.TX_BLOCKED : NetStat.TX_LIMITED);
    this.#filter.report(this.#heads8, at, head - NET_HDR_BYTES, bytes - NET_HDR_BYTES, now);
    return -1;
  }

  /** Sends the frames the guest queued, in batches, up to a budget. */
  run(): void {
    const ctx = this.#ctx;
    const q = ctx.queues[TX_QUEUE];
    if (q === null || q === undefined || !ctx.canTake() || this.#held) return;
    const stats = this.#stats;
    const limit = this.#limit;
    const chain = this.#chain;
    const iov = this.#iov;
    const ram = ctx.ram;
    let budget = BUDGET;
    for (;;) {
      iov.clear();
      let n = 0;
      let dropped = 0;
      let empty = false;
      // One load per batch: classify only while netguard blocks outbound traffic.
      const filtering = this.#filter.blocking(NET_OUTBOUND);
      while (n < TX_BATCH && budget > 0) {
        if (iov.count + NET_QUEUE_SIZE + 1 > MAX_IOVECS) break;
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
            this.#held = true;
            this.#retry(limit.msUntil(1, bytes - NET_HDR_BYTES, now), now);
            budget = 0;
            break;
          }
        }
        if (filtering) {
          const pushed = this.#filtered(n, bytes);
          if (pushed < 0) {
            q.addUsed(chain.head, 0);
            dropped++;
            continue;
          }
          this.#counts[n] = pushed;
        } else {
          for (let k = 0; k < chain.readable; k++) {
            const region = chain.region[k] ?? 0;
            iov.push(ram.host(region, chain.addr[k] ?? 0), chain.len[k] ?? 0);
          }
          this.#counts[n] = chain.readable;
        }
        this.#heads[n] = chain.head;
        n++;
      }
      if (n > 0) {
        const res = this.#res;
        const tried = this.#tap.writeFrames(iov, this.#counts, n, res);
        for (let i = 0; i < n; i++) {
          const w = i < tried ? (res[i] ?? -1) : -11; // not tried: the TAP would block (EAGAIN)
          if (w >= 0) {
            stats.add(NetStat.TX_FRAMES);
            stats.add(NetStat.TX_BYTES, w - NET_HDR_BYTES);
          } else stats.add(NetStat.TX_ERRORS);
          q.addUsed(this.#heads[i] ?? 0, 0);
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
