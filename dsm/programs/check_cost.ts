/**
 * Inline-check cost probe: on one node, after every block is cached, times
 * loads and stores that hit (the fast path) against the same loops over a
 * plain typed array. `result` returns nanoseconds per access for each.
 *
 * @module
 */

import type { DsmContext, DsmProgram, Params } from "../program.ts";
import type { Region } from "../region.ts";

const measured: Record<string, number> = {};

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

function time(f: () => unknown): number {
  const t0 = performance.now();
  f();
  return performance.now() - t0;
}

/** The check-cost program. */
export const program: DsmProgram = {
  name: "check_cost",
  defaults: { words: 16384, reps: 200, trials: 5 },
  regions: (p: Readonly<Params>) => [{ name: "m", size: (p.words ?? 0) * 4, blockSize: 4096 }],
  run(ctx: DsmContext): void {
    if (ctx.rank !== 0) return;
    const { words = 0, reps = 0, trials = 1 } = ctx.params;
    const m = ctx.region("m");
    const plain = new Uint32Array(words);
    for (let i = 0; i < words; i++) m.storeU32(i * 4, i); // take every block exclusive
    ctx.fence();
    let best = {
      dl: Infinity,
      dlh: Infinity,
      pl: Infinity,
      pal: Infinity,
      pas: Infinity,
      ds: Infinity,
      dsh: Infinity,
      ps: Infinity,
    };
    let sink = 0;
    for (let t = 0; t < trials; t++) {
      best = {
        dl: Math.min(best.dl, time(() => (sink += dsmLoads(m, words, reps)))),
        dlh: Math.min(best.dlh, time(() => (sink += dsmLoadsHoisted(m, words, reps)))),
        pl: Math.min(best.pl, time(() => (sink += plainLoads(plain, words, reps)))),
        pal: Math.min(best.pal, time(() => (sink += plainAddrLoads(plain, words, reps)))),
        pas: Math.min(best.pas, time(() => plainAddrStores(plain, words, reps))),
        ds: Math.min(best.ds, time(() => dsmStores(m, words, reps))),
        dsh: Math.min(best.dsh, time(() => dsmStoresHoisted(m, words, reps))),
        ps: Math.min(best.ps, time(() => plainStores(plain, words, reps))),
      };
    }
    const per = 1e6 / (words * reps);
    measured.dsmLoadNs = best.dl * per;
    measured.dsmLoadHoistedNs = best.dlh * per;
    measured.dsmStoreHoistedNs = best.dsh * per;
    measured.plainLoadNs = best.pl * per;
    measured.plainAddrLoadNs = best.pal * per;
    measured.plainAddrStoreNs = best.pas * per;
    measured.dsmStoreNs = best.ds * per;
    measured.plainStoreNs = best.ps * per;
    measured.sink = sink & 1;
  },
  result(): Record<string, number> {
    return measured;
  },
};
