/**
 * virtio-net (virtio 1.2 §5.1), the device side, on its I/O Worker, over a
 * host TAP opened with a virtio-net header on every frame: the guest's
 * header goes to the TAP as it is (checksum and segmentation offloads cost
 * nothing here), and the TAP's header comes back to the guest with
 * `num_buffers` filled in.
 *
 * The receive side is `net_rx.ts` (chains cached ahead of frames, batched
 * `readv` straight into guest buffers, MRG_RXBUF), the transmit side
 * `net_tx.ts` (batched `writev`, bad chains dropped and counted). This file
 * negotiates offloads, routes notifications, and runs both directions'
 * Firecracker-style rate limiters (ops = frames, bandwidth = bytes): a
 * limited direction retries on a timerfd, and a running interface's limiters
 * can be replaced (`setRateLimiters`). netguard's drop and rate-limit
 * decisions reach both sides through `net_filter.ts`, looked at once per
 * batch and applied only while a block is active. Before a quiesce the cached receive
 * chains go back to the available ring, so a saved device holds no buffer
 * the guest gave it.
 *
 * This module is the back-end module of a network interface: it exports
 * `createBackend(config, ctx)`.
 *
 * @module
 */

import {
  Tap,
  Timer,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_TSO_ECN,
} from "../../../native/tap.ts";
import { type VirtioBackend, type VirtioBackendContext, VirtioBackendError } from "./backend.ts";
import {
  MAX_GSO_FRAME,
  MAX_PLAIN_FRAME,
  NET_HDR_BYTES,
  type NetBackendConfig,
  NetFeature,
  type NetRateLimiterUpdate,
  NetStats,
  RX_QUEUE,
  SET_RATE_LIMITERS,
  TX_QUEUE,
  writeNetConfig,
} from "./net_format.ts";
import { NetFrameFilter } from "./net_filter.ts";
import { NetReceiver } from "./net_rx.ts";
import { NetTransmitter } from "./net_tx.ts";
import { RateLimiter } from "./rate_limiter.ts";

/** An Ethernet header with one VLAN tag: what a frame adds to its MTU-sized payload. */
const VLAN_ETH_HEADER = 18;

/** The virtio-net back end. */
export class NetBackend implements VirtioBackend {
  readonly #ctx: VirtioBackendContext;
  readonly #id: string;
  readonly #tap: Tap;
  readonly #timer: Timer;
  readonly #stats: NetStats;
  readonly #rxLimit: RateLimiter;
  readonly #txLimit: RateLimiter;
  readonly #rx: NetReceiver;
  readonly #tx: NetTransmitter;
  readonly #mtu: number;
  #timerWatched = false;
  #timerAt = Infinity;

  private constructor(
    ctx: VirtioBackendContext,
    cfg: NetBackendConfig,
    tap: Tap,
    timer: Timer,
  ) {
    this.#ctx = ctx;
    this.#id = cfg.id;
    this.#mtu = cfg.mtu ?? 0;
    this.#tap = tap;
    this.#timer = timer;
    this.#stats = new NetStats(cfg.stats);
    this.#rxLimit = new RateLimiter(cfg.rxRateLimiter);
    this.#txLimit = new RateLimiter(cfg.txRateLimiter);
    const retry = (ms: number, nowMs: number): void => this.#retryIn(ms, nowMs);
    const filter = new NetFrameFilter(cfg.filter);
    this.#rx = new NetReceiver(ctx, tap, this.#stats, this.#rxLimit, filter, retry);
    this.#tx = new NetTransmitter(ctx, tap, this.#stats, this.#txLimit, filter, retry);
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
    writeNetConfig(ctx.config, cfg.mac, cfg.mtu);
    return new NetBackend(ctx, cfg, tap, timer);
  }

  activate(): void {
    const ctx = this.#ctx;
    // Segmentation offloads need checksum offload (virtio 1.2 §5.1.3.1).
    const csum = ctx.negotiated(NetFeature.GUEST_CSUM);
    const tso4 = csum && ctx.negotiated(NetFeature.GUEST_TSO4);
    const tso6 = csum && ctx.negotiated(NetFeature.GUEST_TSO6);
    const ecn = (tso4 || tso6) && ctx.negotiated(NetFeature.GUEST_ECN);
    this.#tap.setOffload(
      (csum ? TUN_F_CSUM : 0) | (tso4 ? TUN_F_TSO4 : 0) | (tso6 ? TUN_F_TSO6 : 0) |
        (ecn ? TUN_F_TSO_ECN : 0),
    );
    // With merging, read only when the buffers hold the largest frame possible. With
    // VIRTIO_NET_F_MTU no unsegmented frame larger than the MTU reaches the guest (§5.1.4.1).
    const merge = ctx.negotiated(NetFeature.MRG_RXBUF);
    const mtu = ctx.negotiated(NetFeature.MTU) ? this.#mtu : 0;
    const plain = mtu > 0 ? mtu + VLAN_ETH_HEADER : MAX_PLAIN_FRAME;
    this.#rx.activate(
      merge,
      csum,
      merge ? NET_HDR_BYTES + (tso4 || tso6 ? Math.max(MAX_GSO_FRAME, plain) : plain) : 0,
      mtu,
    );
    if (!this.#timerWatched) {
      ctx.watch(this.#timer.fd, () => this.#onTimer());
      this.#timerWatched = true;
    }
  }

  process(q: number): void {
    if (q === RX_QUEUE) this.#rx.buffersAdded();
    else if (q === TX_QUEUE) this.#tx.run();
  }

  quiesced(): void {
    this.#rx.quiesced();
  }

  reset(): void {
    this.#rx.reset();
    this.#tx.reset();
    this.#timer.arm(0);
    this.#timerAt = Infinity;
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
    this.#rx.resume();
    this.#tx.resume();
  }
}

/** The back-end module's factory: opens the TAP named in `config`. */
export function createBackend(config: unknown, ctx: VirtioBackendContext): Promise<NetBackend> {
  return NetBackend.create(config, ctx);
}
