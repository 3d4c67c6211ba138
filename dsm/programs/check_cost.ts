/**
 * Inline-check cost probe: on one node, after every block is cached, times
 * loads and stores that hit (the fast path) against the same loops over a
 * plain typed array. `result` returns nanoseconds per access for each, one
 * number per trial.
 *
 * @module
 */

import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";
import type { Region } from "../region.ts";

const measured: Record<string, number[]> = {};

function dsmLoads(r: Region, words: number, reps: number): number {
  let s = 0;
  for (let k = 0; k < reps; k++) for (let i = 0; i < words; i++) s = (s + r.loadU32(i << 2)) | 0;
  return s;
}
function dsmLoadsHoisted(r: Region, words: number, reps: number): number {
  const load = r.loadU32;
  let s = 0;
  for (let k = 0; k < reps; k++) for (let i = 0; i < words; i++) s = (s + load(i << 2)) | 0;
  return s;
}
function dsmStoresHoisted(r: Region, words: number, reps: number): void {
  const store = r.storeU32;
  for (let k = 0; k < reps; k++) for (let i = 0; i < words; i++) store(i << 2, i + k);
}
function plainLoads(a: Uint32Array, words: number, reps: number): number {
  let s = 0;
  for (let k = 0; k < reps; k++) for (let i = 0; i < words; i++) s = (s + (a[i] ?? 0)) | 0;
  return s;
}
function plainAddrLoads(a: Uint32Array, words: number, reps: number): number {
  let s = 0;
  for (let k = 0; k < reps; k++) {
    for (let i = 0; i < words; i++) s = (s + (a[(i << 2) >>> 2] ?? 0)) | 0;
  }
  return s;
}
function plainAddrStores(a: Uint32Array, words: number, reps: number): void {
  for (let k = 0; k < reps; k++) for (let i = 0; i < words; i++) a[(i << 2) >>> 2] = i + k;
}
function dsmStores(r: Region, words: number, reps: number): void {
  for (let k = 0; k < reps; k++) for (let i = 0; i < words; i++) r.storeU32(i << 2, i + k);
}
function plainStores(a: Uint32Array, words: number, reps: number): void {
  for (let k = 0; k < reps; k++) for (let i = 0; i < words; i++) a[i] = i + k;
}

// A three-point stencil over f64 words (three loads and a store per point),
// the shape of a red-black SOR sweep, through the region and over plain memory.
function dsmStencil(r: Region, words: number, reps: number): void {
  const n = words >>> 1;
  for (let k = 0; k < reps; k++) {
    for (let i = 1; i < n - 1; i++) {
      const v = 0.25 * (r.loadF64((i - 1) << 3) + r.loadF64((i + 1) << 3)) +
        0.5 * r.loadF64(i << 3);
      r.storeF64(i << 3, v);
    }
  }
}
function plainStencil(a: Float64Array, words: number, reps: number): void {
  const n = words >>> 1;
  for (let k = 0; k < reps; k++) {
    for (let i = 1; i < n - 1; i++) {
      const v = 0.25 * ((a[i - 1] ?? 0) + (a[i + 1] ?? 0)) + 0.5 * (a[i] ?? 0);
      a[i] = v;
    }
  }
}

// A dot product of the two halves of the region (two f64 loads and a
// multiply-add per element), the inner loop of matrix multiply.
function dsmDot(r: Region, words: number, reps: number): number {
  const n = words >>> 2;
  const half = n << 3;
  let s = 0;
  for (let k = 0; k < reps; k++) {
    for (let i = 0; i < n; i++) s += r.loadF64(i << 3) * r.loadF64(half + (i << 3));
  }
  return s;
}
function plainDot(a: Float64Array, words: number, reps: number): number {
  const n = words >>> 2;
  let s = 0;
  for (let k = 0; k < reps; k++) {
    for (let i = 0; i < n; i++) s += (a[i] ?? 0) * (a[n + i] ?? 0);
  }
  return s;
}

// Real work per element: a load, a square root and a few multiply-adds, and a
// store back (a normalization pass), through the region and over plain memory.
function dsmWork(r: Region, words: number, reps: number): void {
  const n = words >>> 1;
  for (let k = 0; k < reps; k++) {
    for (let i = 0; i < n; i++) {
      const x = r.loadF64(i << 3);
      r.storeF64(i << 3, Math.sqrt(x * x + 1) * 0.5 + x * 0.25 - 0.75 * (x / (1 + x)));
    }
  }
}
function plainWork(a: Float64Array, words: number, reps: number): void {
  const n = words >>> 1;
  for (let k = 0; k < reps; k++) {
    for (let i = 0; i < n; i++) {
      const x = a[i] ?? 0;
      a[i] = Math.sqrt(x * x + 1) * 0.5 + x * 0.25 - 0.75 * (x / (1 + x));
    }
  }
}

function time(f: () => unknown): number {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
}

/** The check-cost program. */
export const program: DsmProgram = {
  name: "check_cost",
  defaults: { words: 16384, reps: 200, trials: 5 },
  limits: { words: int(16, 1 << 24), reps: int(1, 1e6), trials: int(1, 1000) },
  regions: (p: Readonly<Params>) => [
    { name: "m", size: (p.words ?? 0) * 4, blockSize: 4096 },
    { name: "f", size: (p.words ?? 0) * 4, blockSize: 4096 },
  ],
  run(ctx: DsmContext): void {
    if (ctx.rank !== 0) return;
    const { words = 0, reps = 0, trials = 1 } = ctx.params;
    const m = ctx.region("m");
    const plain = new Uint32Array(words);
    // The f64 kernels run on a region of their own holding the same ordinary
    // values as their plain array (the u32 loops' words read as f64 would be
    // denormals, which the FPU handles slowly).
    const f = ctx.region("f");
    const plainF64 = new Float64Array(words >>> 1);
    for (let i = 0; i < plainF64.length; i++) {
      plainF64[i] = 1 + i / plainF64.length;
      f.storeF64(i << 3, plainF64[i] ?? 0);
    }
    for (let i = 0; i < words; i++) m.storeU32(i * 4, i); // take every block exclusive
    ctx.fence();
    let sink = 0;
    let fsink = 0;
    // Every trial is kept (ns per access): the bench reports the median and range.
    const kernels: Array<[string, number, () => unknown]> = [
      ["dsmLoadNs", words * reps, () => (sink += dsmLoads(m, words, reps))],
      ["dsmLoadHoistedNs", words * reps, () => (sink += dsmLoadsHoisted(m, words, reps))],
      ["plainLoadNs", words * reps, () => (sink += plainLoads(plain, words, reps))],
      ["plainAddrLoadNs", words * reps, () => (sink += plainAddrLoads(plain, words, reps))],
      ["plainAddrStoreNs", words * reps, () => plainAddrStores(plain, words, reps)],
      ["dsmStoreNs", words * reps, () => dsmStores(m, words, reps)],
      ["dsmStoreHoistedNs", words * reps, () => dsmStoresHoisted(m, words, reps)],
      ["plainStoreNs", words * reps, () => plainStores(plain, words, reps)],
      ["dsmStencilNs", ((words >>> 1) - 2) * reps, () => dsmStencil(f, words, reps)],
      ["plainStencilNs", ((words >>> 1) - 2) * reps, () => plainStencil(plainF64, words, reps)],
      ["dsmWorkNs", (words >>> 1) * reps, () => dsmWork(f, words, reps)],
      ["plainWorkNs", (words >>> 1) * reps, () => plainWork(plainF64, words, reps)],
      ["dsmDotNs", (words >>> 2) * reps, () => (fsink += dsmDot(f, words, reps))],
      ["plainDotNs", (words >>> 2) * reps, () => (fsink += plainDot(plainF64, words, reps))],
    ];
    for (const [key] of kernels) measured[key] = [];
    for (let t = 0; t < trials; t++) {
      for (const [key, accesses, kernel] of kernels) {
        measured[key]?.push(time(kernel) * 1e6 / accesses);
      }
    }
    measured.sink = [sink & 1];
    measured.fsink = [fsink];
  },
  result(): Record<string, number[]> {
    return measured;
  },
};
