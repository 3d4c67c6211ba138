/**
 * New-flow detection in fixed memory: a direct-mapped table of flow hashes
 * with their last-seen time. A flow is new when its slot holds another hash
 * or a time older than the idle timeout; collisions make the count a slight
 * over-estimate, which is the safe side for flood detection.
 *
 * @module
 */

/** Fixed-size table that tells whether a flow hash was seen recently. */
export class FlowTable {
  readonly #mask: number;
  /**
   * Per slot its flow hash and last-seen time (whole ms since `#base`) side
   * by side: 8 bytes a flow, one cache line per look-up.
   */
  readonly #slots: Int32Array;
  readonly #idleMs: number;
  /** Time origin of the stored times; NaN until the first touch. */
  #base = NaN;

  /** Creates a table of 2^`bits` slots; flows idle for `idleMs` count as new again. */
  constructor(bits = 16, idleMs = 10_000) {
    const size = 1 << bits;
    this.#mask = size - 1;
    this.#slots = new Int32Array(size * 2);
    this.#idleMs = idleMs;
  }

  /** Records flow `hash` at `nowMs`; returns true when the flow is new. */
  touch(hash: number, nowMs: number): boolean {
    let rel = nowMs - this.#base;
    // The origin lies 2^29 ms (6 days) before the first time seen, so times
    // out of order stay in range; a time out of range (18 days on) starts the
    // table over: every flow counts as new once, the safe side.
    if (!(rel >= 1 && rel < 0x7fffffff)) {
      this.#slots.fill(0);
      this.#base = nowMs - 0x20000000;
      rel = 0x20000000;
    }
    const t = Math.floor(rel);
    const at = (hash & this.#mask) << 1;
    const s = this.#slots;
    const seen = s[at + 1] ?? 0;
    // Slot time 0: never used since the origin.
    const isNew = s[at] !== hash || seen === 0 || t - seen > this.#idleMs;
    s[at] = hash;
    s[at + 1] = t;
    return isNew;
  }
}

/** Mixes 32-bit words into a well-spread 32-bit hash (murmur3 finalizer steps). */
export function mix32(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** Final avalanche of a {@link mix32} chain. */
export function finish32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}
