/**
 * Heavy hitters in bounded memory (the Space-Saving algorithm): at most
 * `capacity` keys are tracked however many distinct keys a flood uses, and
 * every key whose share exceeds 1/capacity is guaranteed to be among them.
 *
 * @module
 */

/** One tracked key and its estimated weight. */
export interface TopEntry {
  /** The key as given to {@link TopK.offer}. */
  key: number;
  /** Estimated weight (an over-estimate by at most {@link TopEntry.error}). */
  count: number;
  /** Upper bound of the over-estimate. */
  error: number;
  /** The label bytes stored with the key (e.g. an address). */
  label: Uint8Array;
}

/** Space-Saving top-k counter over numeric keys, each with a small label. */
export class TopK {
  /** Most keys tracked. */
  readonly capacity: number;
  readonly #labelLen: number;
  readonly #keys: Float64Array;
  readonly #counts: Float64Array;
  readonly #errors: Float64Array;
  readonly #labels: Uint8Array;
  readonly #labelLens: Uint8Array;
  /**
   * Key to slot: an open-addressing table (linear probing, 1 + slot per
   * cell, 0 empty) four times the capacity, so a look-up is a probe or two
   * in typed memory and no Map entry is made per offer.
   */
  readonly #index: Int32Array;
  readonly #indexMask: number;
  #used = 0;

  /** Creates a counter of `capacity` slots, each with room for `labelLen` label bytes. */
  constructor(capacity = 32, labelLen = 16) {
    this.capacity = capacity;
    this.#labelLen = labelLen;
    this.#keys = new Float64Array(capacity);
    this.#counts = new Float64Array(capacity);
    this.#errors = new Float64Array(capacity);
    this.#labels = new Uint8Array(capacity * labelLen);
    this.#labelLens = new Uint8Array(capacity);
    let cells = 16;
    while (cells < capacity * 4) cells *= 2;
    this.#index = new Int32Array(cells);
    this.#indexMask = cells - 1;
  }

  /** The index cell holding `key`, or the empty cell where it would go. */
  #cell(key: number): number {
    const idx = this.#index;
    const mask = this.#indexMask;
    let i = keyHash(key) & mask;
    for (;;) {
      const e = idx[i] ?? 0;
      if (e === 0 || this.#keys[e - 1] === key) return i;
      i = (i + 1) & mask;
    }
  }

  /** Empties index cell `i`, moving later cells of its probe run back (no tombstones). */
  #unindex(i: number): void {
    const idx = this.#index;
    const mask = this.#indexMask;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const e = idx[j] ?? 0;
      if (e === 0) break;
      const home = keyHash(this.#keys[e - 1] ?? 0) & mask;
      // The entry at j may fill the hole at i unless its home lies cyclically in (i, j].
      const stays = i <= j ? home > i && home <= j : home > i || home <= j;
      if (!stays) {
        idx[i] = e;
        i = j;
      }
    }
    idx[i] = 0;
  }

  /**
   * Counts `weight` for `key`; when the key is new, its label is copied from
   * `buf[off, off+len)` (len is clamped to the slot size).
   */
  offer(key: number, weight: number, buf: Uint8Array, off: number, len: number): void {
    let cell = this.#cell(key);
    const hit = this.#index[cell] ?? 0;
    if (hit !== 0) {
      this.#counts[hit - 1] = (this.#counts[hit - 1] ?? 0) + weight;
      return;
    }
    let s: number;
    let base = 0;
    if (this.#used < this.capacity) {
      s = this.#used++;
    } else {
      // Replace the smallest; the newcomer inherits its count as error.
      s = 0;
      let min = this.#counts[0] ?? 0;
      for (let i = 1; i < this.capacity; i++) {
        const c = this.#counts[i] ?? 0;
        if (c < min) {
          min = c;
          s = i;
        }
      }
      base = min;
      this.#unindex(this.#cell(this.#keys[s] ?? 0));
      cell = this.#cell(key);
    }
    this.#keys[s] = key;
    this.#counts[s] = base + weight;
    this.#errors[s] = base;
    this.#index[cell] = s + 1;
    const n = len < this.#labelLen ? len : this.#labelLen;
    const at = s * this.#labelLen;
    for (let i = 0; i < n; i++) this.#labels[at + i] = buf[off + i] ?? 0;
    this.#labelLens[s] = n;
  }

  /** Multiplies every count by `factor` (0..1), so old traffic fades. */
  decay(factor: number): void {
    for (let i = 0; i < this.#used; i++) {
      this.#counts[i] = (this.#counts[i] ?? 0) * factor;
      this.#errors[i] = (this.#errors[i] ?? 0) * factor;
    }
  }

  /** Forgets every key. */
  clear(): void {
    this.#index.fill(0);
    this.#used = 0;
  }

  /** Number of keys tracked. */
  get size(): number {
    return this.#used;
  }

  /** The `n` heaviest keys, heaviest first. */
  top(n: number): TopEntry[] {
    const out: TopEntry[] = [];
    for (let i = 0; i < this.#used; i++) {
      const at = i * this.#labelLen;
      out.push({
        key: this.#keys[i] ?? 0,
        count: this.#counts[i] ?? 0,
        error: this.#errors[i] ?? 0,
        label: this.#labels.slice(at, at + (this.#labelLens[i] ?? 0)),
      });
    }
    out.sort((a, b) => b.count - a.count);
    return out.slice(0, n);
  }
}

/** A well-spread 32-bit hash of a key (an integer below 2^53). */
function keyHash(key: number): number {
  const lo = key | 0;
  const hi = (key / 4294967296) | 0;
  let h = Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b);
  h ^= h >>> 15;
  return Math.imul(h, 0xc2b2ae35) ^ (h >>> 13);
}
