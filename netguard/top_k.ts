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
  readonly #index = new Map<number, number>();
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
  }

  /**
   * Counts `weight` for `key`; when the key is new, its label is copied from
   * `buf[off, off+len)` (len is clamped to the slot size).
   */
  offer(key: number, weight: number, buf: Uint8Array, off: number, len: number): void {
    const slot = this.#index.get(key);
    if (slot !== undefined) {
      this.#counts[slot] = (this.#counts[slot] ?? 0) + weight;
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
      this.#index.delete(this.#keys[s] ?? 0);
    }
    this.#keys[s] = key;
    this.#counts[s] = base + weight;
    this.#errors[s] = base;
    this.#index.set(key, s);
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
    this.#index.clear();
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
