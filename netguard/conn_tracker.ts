/**
 * Which TCP traffic is a working connection: a fixed-memory table of TCP
 * flows keyed by their direction-free 5-tuple, shared by the inbound and
 * outbound monitors of one VM interface, so it sees both sides of a flow.
 *
 * A flow is *established* once both ends have sent ACK segments and
 * neither has reset it (a three-way handshake ends that way; so does a
 * connection picked up mid-stream). It is *acknowledged* while one end's
 * acknowledgement number has advanced within the last `ackWindowMs`: the
 * other end's data is being received. Traffic of established, acknowledged
 * flows is what netguard does not take for an attack by volume alone, as
 * long as it comes from few host pairs ({@link ConnTracker.spread}).
 *
 * Spoofed floods do not get there: a victim answers segments of connections
 * it does not know with RST (which resets the flow here), or not at all (so
 * one end never ACKs), and nobody acknowledges the flood's data.
 *
 * The table is two-way set associative; an established flow is evicted only
 * by a flow in a full set of established flows. A flow that lost its slot
 * counts as not established until it is seen from both ends again: the safe
 * side for flood detection.
 *
 * @module
 */

import { finish32, mix32 } from "./flow_table.ts";
import type { PacketInfo } from "./packet.ts";

const SYN = 0x02;
const RST = 0x04;
const ACK = 0x10;

/** Slot flag bits. */
const F_ACK0 = 1;
const F_ACK1 = 2;
const F_EST = 4;
const F_RESET = 8;

/** Fields of a slot: four numbers in each record array. */
const SLOT = 4;
const T_SEEN = 0;
const T_ACK_AT = 1;
const T_HASH = 2;
const T_PAIR = 3;
const W_FLAGS = 0;
const W_GEN = 1;
/** W_ACK + side: the last acknowledgement number sent by that end. */
const W_ACK = 2;

/** Default size of the table: 2^13 flows. */
const DEFAULT_BITS = 13;
/** A flow idle this long is forgotten. */
const IDLE_MS = 30_000;

/** TCP flow state for the flows of one VM interface. */
export class ConnTracker {
  /** How recently an acknowledgement must have advanced for a flow to count as acknowledged. */
  readonly ackWindowMs: number;
  readonly #mask: number;
  /**
   * Per slot, side by side so a look-up touches one or two cache lines:
   * last seen, last acknowledgement advance, flow hash, host-pair hash.
   */
  readonly #times: Float64Array;
  /** Per slot: flags, generation, the two ends' last acknowledgement numbers. */
  readonly #words: Uint32Array;
  /** Slots that became established, with their generation (stale entries are dropped lazily). */
  #listSlot: Int32Array;
  #listGen: Uint32Array;
  #listLen = 0;
  /** Scratch set for counting distinct host pairs. */
  #set = new Int32Array(0);
  #setUsed = new Uint8Array(0);
  #spreadAt = -1;
  #spreadCap = -1;
  #spread = 0;

  /** Creates a table of 2^`bits` flows. */
  constructor(ackWindowMs: number = 1000, bits: number = DEFAULT_BITS) {
    this.ackWindowMs = ackWindowMs;
    const size = 1 << bits;
    this.#mask = size - 1;
    this.#times = new Float64Array(size * SLOT);
    for (let i = 0; i < size; i++) {
      this.#times[i * SLOT + T_SEEN] = -Infinity;
      this.#times[i * SLOT + T_ACK_AT] = -Infinity;
    }
    this.#words = new Uint32Array(size * SLOT);
    this.#listSlot = new Int32Array(1024);
    this.#listGen = new Uint32Array(1024);
  }

  /**
   * Records a parsed TCP segment (not a later fragment) seen at `nowMs`;
   * `srcKey`/`dstKey` identify its addresses (the IPv4 address, or a hash of
   * the IPv6 one).
   *
   * @returns whether the segment belongs to an established, acknowledged flow.
   */
  observe(
    buf: Uint8Array,
    info: PacketInfo,
    srcKey: number,
    dstKey: number,
    nowMs: number,
  ): boolean {
    // Direction-free key: the lower endpoint first; `side` says which end sent this segment.
    const sp = info.srcPort;
    const dp = info.dstPort;
    const side = (srcKey >>> 0) < (dstKey >>> 0) || (srcKey === dstKey && sp <= dp) ? 0 : 1;
    const lo = side === 0 ? srcKey : dstKey;
    const hi = side === 0 ? dstKey : srcKey;
    const ports = side === 0 ? (sp << 16) | dp : (dp << 16) | sp;
    const h = finish32(mix32(mix32(mix32(0x7c9, lo), hi), ports));
    const slot = this.#slot(h, nowMs, lo, hi);
    const t = this.#times;
    const w = this.#words;
    const ts = slot * SLOT;
    const flags = info.tcpFlags;
    let f = w[ts + W_FLAGS] ?? 0;
    t[ts + T_SEEN] = nowMs;
    if ((flags & RST) !== 0) {
      w[ts + W_FLAGS] = F_RESET;
      return false;
    }
    if ((flags & SYN) !== 0) {
      // A new connection on this 5-tuple (or its handshake): start over unless it is the SYN-ACK.
      if ((flags & ACK) === 0) {
        w[ts + W_FLAGS] = 0;
        t[ts + T_ACK_AT] = -Infinity;
      }
      return false;
    }
    if ((flags & ACK) === 0 || (f & F_RESET) !== 0) return false;
    const end = info.frameOff + info.capLen;
    const q = info.l4Off + 8;
    if (info.l4Off < 0 || q + 4 > end) return false;
    const ack = (((buf[q] ?? 0) << 24) | ((buf[q + 1] ?? 0) << 16) | ((buf[q + 2] ?? 0) << 8) |
      (buf[q + 3] ?? 0)) >>> 0;
    const bit = side === 0 ? F_ACK0 : F_ACK1;
    const ai = ts + W_ACK + side;
    if ((f & bit) !== 0) {
      const d = (ack - (w[ai] ?? 0)) >>> 0;
      if (d > 0 && d < 0x80000000) t[ts + T_ACK_AT] = nowMs;
    }
    w[ai] = ack;
    f |= bit;
    if ((f & (F_ACK0 | F_ACK1)) === (F_ACK0 | F_ACK1) && (f & F_EST) === 0) {
      f |= F_EST;
      this.#list(slot);
    }
    w[ts + W_FLAGS] = f;
    return (f & F_EST) !== 0 && nowMs - (t[ts + T_ACK_AT] ?? -Infinity) <= this.ackWindowMs;
  }

  /** The slot of flow `h`, claiming one (and resetting it) if the flow is not in the table. */
  #slot(h: number, nowMs: number, lo: number, hi: number): number {
    const t = this.#times;
    const a = h & this.#mask & ~1;
    const b = a + 1;
    const ta = a * SLOT;
    const tb = ta + SLOT;
    if (t[ta + T_HASH] === h && nowMs - (t[ta + T_SEEN] ?? -Infinity) <= IDLE_MS) return a;
    if (t[tb + T_HASH] === h && nowMs - (t[tb + T_SEEN] ?? -Infinity) <= IDLE_MS) return b;
    // Replace an idle slot, else one not established, else the least recently seen.
    const va = this.#victimScore(a, nowMs);
    const vb = this.#victimScore(b, nowMs);
    const s = va >= vb ? a : b;
    const ts = s * SLOT;
    const w = this.#words;
    t[ts + T_HASH] = h;
    t[ts + T_PAIR] = finish32(mix32(mix32(0x51f, lo), hi));
    w[ts + W_FLAGS] = 0;
    w[ts + W_GEN] = ((w[ts + W_GEN] ?? 0) + 1) >>> 0;
    t[ts + T_ACK_AT] = -Infinity;
    return s;
  }

  /** Higher is a better slot to reuse. */
  #victimScore(s: number, nowMs: number): number {
    const age = nowMs - (this.#times[s * SLOT + T_SEEN] ?? -Infinity);
    if (age > IDLE_MS) return Infinity;
    return ((this.#words[s * SLOT + W_FLAGS] ?? 0) & F_EST) === 0 ? 1e12 + age : age;
  }

  #list(slot: number): void {
    if (this.#listLen === this.#listSlot.length) {
      this.#compact();
      if (this.#listLen === this.#listSlot.length) {
        const s = new Int32Array(this.#listSlot.length * 2);
        s.set(this.#listSlot);
        this.#listSlot = s;
        const g = new Uint32Array(this.#listGen.length * 2);
        g.set(this.#listGen);
        this.#listGen = g;
      }
    }
    this.#listSlot[this.#listLen] = slot;
    this.#listGen[this.#listLen] = this.#words[slot * SLOT + W_GEN] ?? 0;
    this.#listLen++;
  }

  /** Drops list entries whose slot was reused or is no longer established. */
  #compact(): void {
    let n = 0;
    for (let i = 0; i < this.#listLen; i++) {
      const s = this.#listSlot[i] ?? 0;
      const g = this.#listGen[i] ?? 0;
      const w = s * SLOT;
      if (this.#words[w + W_GEN] !== g || ((this.#words[w + W_FLAGS] ?? 0) & F_EST) === 0) continue;
      this.#listSlot[n] = s;
      this.#listGen[n] = g;
      n++;
    }
    this.#listLen = n;
  }

  /**
   * Distinct host pairs among the established, acknowledged flows at
   * `nowMs`, counted up to `cap + 1` (any more is "too many"). Cached per
   * time, as both monitors of an interface ask at every bucket.
   */
  spread(nowMs: number, cap: number): number {
    if (nowMs === this.#spreadAt && cap === this.#spreadCap) return this.#spread;
    this.#compact();
    let size = 16;
    while (size < (cap + 1) * 2) size *= 2;
    if (this.#set.length !== size) {
      this.#set = new Int32Array(size);
      this.#setUsed = new Uint8Array(size);
    } else this.#setUsed.fill(0);
    const set = this.#set;
    const used = this.#setUsed;
    const mask = size - 1;
    let count = 0;
    for (let i = 0; i < this.#listLen && count <= cap; i++) {
      const s = this.#listSlot[i] ?? 0;
      if (nowMs - (this.#times[s * SLOT + T_ACK_AT] ?? -Infinity) > this.ackWindowMs) continue;
      const p = this.#times[s * SLOT + T_PAIR] ?? 0;
      let j = p & mask;
      while (used[j] === 1 && set[j] !== p) j = (j + 1) & mask;
      if (used[j] === 1) continue;
      used[j] = 1;
      set[j] = p;
      count++;
    }
    this.#spreadAt = nowMs;
    this.#spreadCap = cap;
    this.#spread = count;
    return count;
  }
}
