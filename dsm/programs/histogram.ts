/**
 * Histogram with locks: every worker generates its share of the input into
 * shared memory, then counts another worker's share, and adds its counts to
 * the shared bins under per-bin-group locks (bins of different groups share
 * blocks, so stores from several nodes merge into the same blocks).
 *
 * @module
 */

import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";
import { hash32, share } from "./util.ts";

const LOCK_GROUPS = 8;

function value(i: number, seed: number, bins: number): number {
  return hash32(i, seed) % bins;
}

/** The histogram program. */
export const program: DsmProgram = {
  name: "histogram",
  defaults: { n: 20000, bins: 64, seed: 7 },
  limits: { n: int(1, 1 << 26), bins: int(1, 1 << 20), seed: int(0, 2 ** 32 - 1) },
  regions: (p: Readonly<Params>) => [
    { name: "input", size: (p.n ?? 0) * 4, blockSize: 1024, home: "blocked" },
    { name: "bins", size: (p.bins ?? 0) * 4, blockSize: 64 },
  ],
  run(ctx: DsmContext): void {
    const { n = 0, bins = 1, seed = 0 } = ctx.params;
    const input = ctx.region("input");
    const hist = ctx.region("bins");
    const [lo, hi] = share(n, ctx.rank, ctx.size);
    for (let i = lo; i < hi; i++) input.storeU32(i * 4, value(i, seed, bins));
    ctx.barrier();
    const other = (ctx.rank + 1) % ctx.size;
    const [olo, ohi] = share(n, other, ctx.size);
    const local = new Uint32Array(bins);
    for (let i = olo; i < ohi; i++) {
      const v = input.loadU32(i * 4);
      local[v] = (local[v] ?? 0) + 1;
    }
    for (let g = 0; g < LOCK_GROUPS; g++) {
      ctx.lock(g);
      for (let b = g; b < bins; b += LOCK_GROUPS) {
        const c = local[b] ?? 0;
        if (c !== 0) hist.storeU32(b * 4, hist.loadU32(b * 4) + c);
      }
      ctx.unlock(g);
    }
  },
  result(ctx: DsmContext): number[] {
    const hist = ctx.region("bins");
    return Array.from({ length: ctx.params.bins ?? 0 }, (_, b) => hist.loadU32(b * 4));
  },
  sequential(p: Readonly<Params>): number[] {
    const { n = 0, bins = 1, seed = 0 } = p;
    const out = new Array<number>(bins).fill(0);
    for (let i = 0; i < n; i++) {
      const v = value(i, seed, bins);
      out[v] = (out[v] ?? 0) + 1;
    }
    return out;
  },
};
