/**
 * LU decomposition without pivoting of a diagonally dominant n×n f64 matrix,
 * in place (L below the diagonal, U on and above). Rows are dealt to workers
 * cyclically; step k reads the pivot row k from whichever node wrote it, and a
 * barrier ends each step. Same operation order as the sequential version.
 *
 * @module
 */

import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";
import { digestBytes, digestRegion } from "./util.ts";

function init(i: number, j: number, n: number): number {
  return i === j ? 2 * n + 1 + (i % 3) : ((i * 3 + j * 5) % 7) - 3 + 0.5;
}

/** The LU program. */
export const program: DsmProgram = {
  name: "lu",
  defaults: { n: 32 },
  limits: { n: int(1, 4096) },
  regions: (p: Readonly<Params>) => [
    { name: "m", size: (p.n ?? 0) * (p.n ?? 0) * 8, blockSize: 256 },
  ],
  run(ctx: DsmContext): void {
    const n = ctx.params.n ?? 0;
    const m = ctx.region("m");
    const at = (i: number, j: number): number => (i * n + j) * 8;
    for (let i = ctx.rank; i < n; i += ctx.size) {
      for (let j = 0; j < n; j++) m.storeF64(at(i, j), init(i, j, n));
    }
    ctx.barrier();
    for (let k = 0; k < n - 1; k++) {
      const pivot = m.loadF64(at(k, k));
      for (let i = ctx.rank; i < n; i += ctx.size) {
        if (i <= k) continue;
        const l = m.loadF64(at(i, k)) / pivot;
        m.storeF64(at(i, k), l);
        for (let j = k + 1; j < n; j++) {
          m.storeF64(at(i, j), m.loadF64(at(i, j)) - l * m.loadF64(at(k, j)));
        }
      }
      ctx.barrier();
    }
  },
  result(ctx: DsmContext): string {
    const n = ctx.params.n ?? 0;
    return digestRegion(ctx.region("m"), n * n * 8);
  },
  sequential(p: Readonly<Params>): string {
    const n = p.n ?? 0;
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) a[i * n + j] = init(i, j, n);
    const v = (i: number, j: number): number => a[i * n + j] ?? 0;
    for (let k = 0; k < n - 1; k++) {
      const pivot = v(k, k);
      for (let i = k + 1; i < n; i++) {
        const l = v(i, k) / pivot;
        a[i * n + k] = l;
        for (let j = k + 1; j < n; j++) a[i * n + j] = v(i, j) - l * v(k, j);
      }
    }
    return digestBytes(new Uint8Array(a.buffer));
  },
};
