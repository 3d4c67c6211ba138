/**
 * netguard's blocks at a virtio-net device's own frame tap. netguard
 * decides on the main thread (from its AF_PACKET watch of the TAP) which
 * packet classes of a NIC's traffic to drop or rate-limit; this is the
 * shared memory through which the decision reaches the device's I/O Worker,
 * and through which the device hands back the headers of the outbound
 * frames it dropped (they never reach the TAP, so the AF_PACKET watch would
 * not see them, and netguard would think the attack over while the guest
 * still sends it).
 *
 * One SharedArrayBuffer per NIC ({@link NET_FILTER_BYTES}):
 *
 * | Int32 word              | what                                                          |
 * | ----------------------- | ------------------------------------------------------------- |
 * | 0 `ACTIVE`              | bit 0: an inbound class is blocked; bit 1: an outbound one    |
 * | 1 `SEQ`                 | seqlock: odd while the main thread rewrites the tables        |
 * | 4 + 20·d …              | direction d (0 inbound, 1 outbound): 16 modes by `PacketClass` (0 pass, 1 drop, 2 rate limit), then the rate (pps) |
 * | 44 `HEAD`, 45 `TAIL`    | the dropped-frame ring: next slot the device writes, next the main thread reads |
 * | 46 `MISSED`             | frames dropped while the ring was full                        |
 *
 * From byte {@link RING_OFFSET}, {@link RING_SLOTS} slots of
 * {@link SLOT_BYTES}: float64 time (ms since the epoch), uint32 length on
 * the wire, uint32 bytes kept, then the first {@link FILTER_SNAP} bytes of
 * the frame (no virtio-net header).
 *
 * The main thread is the only writer of the tables ({@link NetBlockPort}),
 * the device the only reader ({@link NetFrameFilter}); the device the only
 * writer of ring slots and `HEAD`, the main thread the only writer of
 * `TAIL`. The device looks at `ACTIVE` once per batch and classifies frames
 * only while a direction is blocked, with netguard's own parser on the first
 * {@link FILTER_SNAP} bytes (the AF_PACKET watch's snap length too, so both
 * see a frame as the same class).
 *
 * @module
 */

import { PacketInfo, parseEthernet } from "../../../netguard/packet.ts";
import { TokenBucket } from "../../../netguard/token_bucket.ts";

/** Direction index of the guest's receive side (netguard's "inbound"). */
export const NET_INBOUND = 0;
/** Direction index of the guest's transmit side (netguard's "outbound"). */
export const NET_OUTBOUND = 1;

/** Bytes of a frame the device classifies and keeps in a ring slot. */
export const FILTER_SNAP = 256;
/** Slots of the dropped-frame ring (a power of two). */
export const RING_SLOTS = 1024;
/** Bytes of one ring slot: 16 of metadata and the snap. */
export const SLOT_BYTES: number = 16 + FILTER_SNAP;
/** Where the ring starts in the shared buffer. */
export const RING_OFFSET = 256;
/** Bytes of a NIC's filter buffer. */
export const NET_FILTER_BYTES: number = RING_OFFSET + RING_SLOTS * SLOT_BYTES;

/** Class modes per direction (netguard's `PacketClass` has 10; room for 16). */
const CLASSES = 16;
const W_ACTIVE = 0;
const W_SEQ = 1;
const W_DIR = 4;
const DIR_WORDS = 20;
const W_RATE = CLASSES;
const W_HEAD = 44;
const W_TAIL = 45;
const W_MISSED = 46;

/** What {@link NetFrameFilter.verdict} says of a frame. */
export const FilterVerdict = {
  /** Pass it. */
  PASS: 0,
  /** Drop it: its class is blocked. */
  BLOCKED: 1,
  /** Drop it: its class is rate-limited and over the rate. */
  LIMITED: 2,
} as const;

/** Raised for a direction or mode out of range. */
export class NetFilterError extends Error {
  /** Creates the error. */
  constructor(detail: string) {
    super(`net filter: ${detail}`);
    this.name = "NetFilterError";
  }
}

/** Called per dropped outbound frame drained from the ring. */
export type DroppedFrameHandler = (
  buf: Uint8Array,
  off: number,
  len: number,
  wireLen: number,
  tsMs: number,
) => void;

/** Views of the ring's slots. */
class Ring {
  readonly f64: Float64Array;
  readonly u32: Uint32Array;
  readonly bytes: Uint8Array;

  constructor(buffer: SharedArrayBuffer) {
    this.f64 = new Float64Array(buffer, RING_OFFSET, (RING_SLOTS * SLOT_BYTES) / 8);
    this.u32 = new Uint32Array(buffer, RING_OFFSET, (RING_SLOTS * SLOT_BYTES) / 4);
    this.bytes = new Uint8Array(buffer, RING_OFFSET, RING_SLOTS * SLOT_BYTES);
  }
}

/**
 * The main thread's side: publishes netguard's blocks of one NIC and
 * drains the outbound frames the device dropped.
 */
export class NetBlockPort {
  readonly #w: Int32Array;
  readonly #ring: Ring;

  /** The port over `buffer` ({@link NET_FILTER_BYTES}, from {@link NetBlockPort.create}). */
  constructor(readonly buffer: SharedArrayBuffer) {
    if (buffer.byteLength < NET_FILTER_BYTES) {
      throw new NetFilterError(`buffer of ${buffer.byteLength} bytes, need ${NET_FILTER_BYTES}`);
    }
    this.#w = new Int32Array(buffer, 0, RING_OFFSET / 4);
    this.#ring = new Ring(buffer);
  }

  /** A port over a fresh, zeroed buffer: nothing blocked. */
  static create(): NetBlockPort {
    return new NetBlockPort(new SharedArrayBuffer(NET_FILTER_BYTES));
  }

  /**
   * Sets direction `dir`'s ({@link NET_INBOUND}, {@link NET_OUTBOUND}) mode per
   * packet class (netguard's `PacketClass`: 0 pass, 1 drop, 2 rate limit)
   * and the rate of the limited classes (packets/s, all of them together;
   * at most 2^31 - 1).
   *
   * @throws {NetFilterError} for a bad direction, mode or rate.
   */
  publish(dir: number, modes: ArrayLike<number>, ratePps: number): void {
    if (dir !== NET_INBOUND && dir !== NET_OUTBOUND) throw new NetFilterError(`direction ${dir}`);
    if (modes.length > CLASSES) throw new NetFilterError(`${modes.length} classes, at most 16`);
    let any = false;
    for (let c = 0; c < modes.length; c++) {
      const m = modes[c] ?? 0;
      if (m !== 0 && m !== 1 && m !== 2) throw new NetFilterError(`mode ${m} of class ${c}`);
      any ||= m !== 0;
    }
    if (!(ratePps >= 0)) throw new NetFilterError(`rate ${ratePps} pps`);
    const w = this.#w;
    const base = W_DIR + dir * DIR_WORDS;
    Atomics.add(w, W_SEQ, 1); // odd: the device keeps its old table meanwhile
    for (let c = 0; c < CLASSES; c++) {
      Atomics.store(w, base + c, c < modes.length ? modes[c] ?? 0 : 0);
    }
    Atomics.store(w, base + W_RATE, Math.min(Math.round(ratePps), 0x7fffffff));
    Atomics.add(w, W_SEQ, 1);
    if (any) Atomics.or(w, W_ACTIVE, 1 << dir);
    else Atomics.and(w, W_ACTIVE, ~(1 << dir));
  }

  /** Lifts every block of both directions. */
  clear(): void {
    const none = new Uint8Array(CLASSES);
    this.publish(NET_INBOUND, none, 0);
    this.publish(NET_OUTBOUND, none, 0);
  }

  /** Whether direction `dir` has a blocked class now. */
  blocking(dir: number): boolean {
    return (Atomics.load(this.#w, W_ACTIVE) & (1 << dir)) !== 0;
  }

  /**
   * Calls `onFrame` for each outbound frame the device dropped since the
   * last drain, oldest first (`buf` is shared memory: read it during the
   * call only). Frames dropped while the ring was full are handed over as
   * copies of the last one. Returns the number of frames handed over.
   */
  drain(onFrame: DroppedFrameHandler): number {
    const w = this.#w;
    const r = this.#ring;
    const tail = Atomics.load(w, W_TAIL);
    const head = Atomics.load(w, W_HEAD);
    const n = (head - tail) | 0;
    if (n <= 0) return 0;
    let slot = 0;
    for (let i = 0; i < n; i++) {
      slot = (tail + i) & (RING_SLOTS - 1);
      const kept = r.u32[slot * (SLOT_BYTES / 4) + 3] ?? 0;
      const wire = r.u32[slot * (SLOT_BYTES / 4) + 2] ?? 0;
      const ts = r.f64[slot * (SLOT_BYTES / 8)] ?? 0;
      onFrame(r.bytes, slot * SLOT_BYTES + 16, Math.min(kept, FILTER_SNAP), wire, ts);
    }
    // The device counts a drop into MISSED only while the ring is full, so
    // the last slot drained is the latest frame kept before those drops.
    const missed = Atomics.exchange(w, W_MISSED, 0);
    const kept = Math.min(r.u32[slot * (SLOT_BYTES / 4) + 3] ?? 0, FILTER_SNAP);
    const wire = r.u32[slot * (SLOT_BYTES / 4) + 2] ?? 0;
    const ts = r.f64[slot * (SLOT_BYTES / 8)] ?? 0;
    for (let i = 0; i < missed; i++) onFrame(r.bytes, slot * SLOT_BYTES + 16, kept, wire, ts);
    Atomics.store(w, W_TAIL, head);
    return n + missed;
  }
}

/**
 * The device's side, on its I/O Worker: tells per frame whether netguard
 * blocks it, and keeps the headers of dropped outbound frames for netguard.
 */
export class NetFrameFilter {
  readonly #w: Int32Array;
  readonly #ring: Ring;
  readonly #modes = [new Uint8Array(CLASSES), new Uint8Array(CLASSES)];
  readonly #buckets: (TokenBucket | null)[] = [null, null];
  readonly #info = new PacketInfo();
  #seq = 0;
  /** Where a frame whose first {@link FILTER_SNAP} bytes span buffers is gathered. */
  readonly scratch: Uint8Array<ArrayBuffer> = new Uint8Array(FILTER_SNAP);

  /** The filter over a NIC's buffer (from its {@link NetBlockPort}). */
  constructor(buffer: SharedArrayBuffer) {
    this.#w = new Int32Array(buffer, 0, RING_OFFSET / 4);
    this.#ring = new Ring(buffer);
  }

  /** Whether direction `dir` has a blocked class (one atomic load: check it once per batch). */
  blocking(dir: number): boolean {
    return (Atomics.load(this.#w, W_ACTIVE) & (1 << dir)) !== 0;
  }

  /**
   * Classifies the frame at `buf[off, off+len)` (its first
   * {@link FILTER_SNAP} bytes are enough) going `dir` at `nowMs`, and says
   * what to do with it ({@link FilterVerdict}).
   */
  verdict(dir: number, buf: Uint8Array, off: number, len: number, nowMs: number): number {
    this.#sync();
    const info = this.#info;
    parseEthernet(buf, off, len < FILTER_SNAP ? len : FILTER_SNAP, info);
    const mode = this.#modes[dir]?.[info.cls] ?? 0;
    if (mode === 0) return FilterVerdict.PASS;
    if (mode === 1) return FilterVerdict.BLOCKED;
    const b = this.#buckets[dir] ?? null;
    return b !== null && b.take(nowMs) ? FilterVerdict.PASS : FilterVerdict.LIMITED;
  }

  /** Takes a new table if the main thread published one (and is not writing it now). */
  #sync(): void {
    const w = this.#w;
    const seq = Atomics.load(w, W_SEQ);
    if (seq === this.#seq || (seq & 1) !== 0) return; // unchanged, or being written: next frame
    for (let d = 0; d < 2; d++) {
      const modes = this.#modes[d];
      if (modes === undefined) continue;
      const base = W_DIR + d * DIR_WORDS;
      let limited = false;
      for (let c = 0; c < CLASSES; c++) {
        const m = Atomics.load(w, base + c);
        modes[c] = m;
        limited ||= m === 2;
      }
      const rate = Atomics.load(w, base + W_RATE);
      const old = this.#buckets[d] ?? null;
      // As netguard's own tap: one bucket while any class is limited, a fresh one when limiting starts.
      this.#buckets[d] = !limited || rate <= 0
        ? null
        : old !== null && old.ratePps === rate
        ? old
        : new TokenBucket(rate);
    }
    if (Atomics.load(w, W_SEQ) === seq) this.#seq = seq; // else torn: read again next frame
  }

  /**
   * Keeps the first {@link FILTER_SNAP} bytes of a dropped outbound frame at
   * `buf[off, off+len)` (`wireLen` bytes in all) for netguard; counts it as
   * missed when the ring is full.
   */
  report(buf: Uint8Array, off: number, len: number, wireLen: number, nowMs: number): void {
    const w = this.#w;
    const head = Atomics.load(w, W_HEAD);
    if (((head - Atomics.load(w, W_TAIL)) | 0) >= RING_SLOTS) {
      Atomics.add(w, W_MISSED, 1);
      return;
    }
    const r = this.#ring;
    const slot = head & (RING_SLOTS - 1);
    const kept = len < FILTER_SNAP ? len : FILTER_SNAP;
    r.f64[slot * (SLOT_BYTES / 8)] = nowMs;
    r.u32[slot * (SLOT_BYTES / 4) + 2] = wireLen;
    r.u32[slot * (SLOT_BYTES / 4) + 3] = kept;
    const to = r.bytes;
    const at = slot * SLOT_BYTES + 16;
    for (let i = 0; i < kept; i++) to[at + i] = buf[off + i] ?? 0;
    Atomics.store(w, W_HEAD, (head + 1) | 0); // publishes the slot (a release)
  }
}
