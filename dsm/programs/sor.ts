/**
 * Red-black successive over-relaxation on an (n+2)×(n+2) grid of f64 with
 * fixed boundaries. Rows are split among the workers; each colour phase reads
 * only the other colour, so the parallel result equals the sequential one bit
 * for bit. Neighbouring workers share their boundary rows through the DSM.
 *
 * @module
 */

import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";
import { digestBytes, digestRegion, share } from "./util.ts";

const OMEGA = 1.25;

function boundary(i: number, j: number, w: number): number {
  if (i === 0) return 1 + j / w;
  if (i === w - 1) return 2 - j / w;
  if (j === 0) return 0.5;
  return 0.25;
}

function isBoundary(i: number, j: number, w: number): boolean {
  return i === 0 || j === 0 || i === w - 1 || j === w - 1;
}

/** The red-black SOR program. */
export const program: DsmProgram = {
  name: "sor",
  defaults: { n: 62, iters: 10 },
  limits: { n: int(1, 8190), iters: int(0, 1e6) },
  regions: (p: Readonly<Params>) => {
    const w = (p.n ?? 0) + 2;
    return [{ name: "grid", size: w * w * 8, blockSize: 512, home: "blocked" }];
  },
  run(ctx: DsmContext): void {
    const n = ctx.params.n ?? 0;
    const iters = ctx.params.iters ?? 0;
    const w = n + 2;
    const g = ctx.region("grid");
    const at = (i: number, j: number): number => (i * w + j) * 8;
    const [lo, hi] = share(n, ctx.rank, ctx.size);
    const r0 = lo + 1;
    const r1 = hi + 1;
    // Initialise own rows (and the boundary rows at the ends).
    const first = ctx.rank === 0 ? 0 : r0;
    const last = ctx.rank === ctx.size - 1 ? w : r1;
    for (let i = first; i < last; i++) {
      for (let j = 0; j < w; j++) g.storeF64(at(i, j), isBoundary(i, j, w) ? boundary(i, j, w) : 0);
    }
    ctx.barrier();
    for (let it = 0; it < iters; it++) {
      for (let colour = 0; colour < 2; colour++) {
        for (let i = r0; i < r1; i++) {
          for (let j = 1 + ((i + colour) & 1); j < w - 1; j += 2) {
            const s = g.loadF64(at(i - 1, j)) + g.loadF64(at(i + 1, j)) + g.loadF64(at(i, j - 1)) +
              g.loadF64(at(i, j + 1));
            g.storeF64(at(i, j), (1 - OMEGA) * g.loadF64(at(i, j)) + (OMEGA / 4) * s);
          }
        }
        ctx.barrier();
      }
    }
  },
  result(ctx: DsmContext): string {
    const w = (ctx.params.n ?? 0) + 2;
    return digestRegion(ctx.region("grid"), w * w * 8);
  },
  sequential(p: Readonly<Params>): string {
    const n = p.n ?? 0;
    const w = n + 2;
    const a = new Float64Array(w * w);
    for (let i = 0; i < w; i++) {
      for (let j = 0; j < w; j++) a[i * w + j] = isBoundary(i, j, w) ? boundary(i, j, w) : 0;
    }
    const v = (i: number, j: number): number => a[i * w + j] ?? 0;
    for (let it = 0; it < (p.iters ?? 0); it++) {
      for (let colour = 0; colour < 2; colour++) {
        for (let i = 1; i < w - 1; i++) {
          for (let j = 1 + ((i + colour) & 1); j < w - 1; j += 2) {
            const s = v(i - 1, j) + v(i + 1, j) + v(i, j - 1) + v(i, j + 1);
            a[i * w + j] = (1 - OMEGA) * v(i, j) + (OMEGA / 4) * s;
          }
        }
      }
    }
    return digestBytes(new Uint8Array(a.buffer));
  },
};
