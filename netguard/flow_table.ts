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
  readonly #hashes: Int32Array;
  readonly #seen: Float64Array;
  readonly #idleMs: number;

  /** Creates a table of 2^`bits` slots; flows idle for `idleMs` count as new again. */
  constructor(bits = 16, idleMs = 10_000) {
    const size = 1 << bits;
    this.#mask = size - 1;
    this.#hashes = new Int32Array(size);
    this.#seen = new Float64Array(size).fill(-Infinity);
    this.#idleMs = idleMs;
  }

  /** Records flow `hash` at `nowMs`; returns true when the flow is new. */
  touch(hash: number, nowMs: number): boolean {
    const slot = hash & this.#mask;
    const old = this.#seen[slot] ?? -Infinity;
    const isNew = this.#hashes[slot] !== hash || nowMs - old > this.#idleMs;
    this.#hashes[slot] = hash;
    this.#seen[slot] = nowMs;
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
