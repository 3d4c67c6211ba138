import assert from "node:assert/strict";
import { prng, TopK } from "../../netguard/mod.ts";

/** Space-Saving as first written, over a Map: what the typed-array index must reproduce. */
class MapTopK {
  readonly keys: number[] = [];
  readonly counts: number[] = [];
  readonly index = new Map<number, number>();
  constructor(readonly capacity: number) {}
  offer(key: number, weight: number): void {
    const slot = this.index.get(key);
    if (slot !== undefined) {
      this.counts[slot] = (this.counts[slot] ?? 0) + weight;
      return;
    }
    let s = this.keys.length;
    let base = 0;
    if (s === this.capacity) {
      s = 0;
      for (let i = 1; i < this.capacity; i++) {
        if ((this.counts[i] ?? 0) < (this.counts[s] ?? 0)) s = i;
      }
      base = this.counts[s] ?? 0;
      this.index.delete(this.keys[s] ?? 0);
    }
    this.keys[s] = key;
    this.counts[s] = base + weight;
    this.index.set(key, s);
  }
}

Deno.test("top-k keeps the same keys and counts as a Map-indexed Space-Saving on random offers", () => {
  const seed = Date.now() >>> 0;
  const rnd = prng(seed);
  const label = new Uint8Array(0);
  for (const capacity of [1, 3, 32]) {
    const top = new TopK(capacity, 0);
    const ref = new MapTopK(capacity);
    for (let i = 0; i < 20_000; i++) {
      // Few heavy keys, many light ones, IPv6-style keys above 2^32, and key 0.
      const r = rnd();
      const key = r < 0.3
        ? Math.floor(rnd() * 4)
        : r < 0.5
        ? 4294967296 + Math.floor(rnd() * 4294967296)
        : Math.floor(rnd() * 200);
      top.offer(key, 1 + (i & 3), label, 0, 0);
      ref.offer(key, 1 + (i & 3));
      if (i % 997 === 0 || i === 19_999) {
        const got = top.top(capacity).map((e) => `${e.key}:${e.count}`).sort();
        const want = ref.keys.map((k, s) => `${k}:${ref.counts[s]}`).sort();
        assert.deepEqual(got, want, `seed ${seed}, capacity ${capacity}, offer ${i}`);
      }
    }
  }
});
