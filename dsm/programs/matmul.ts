/**
 * Matrix multiply C = A × B on n×n f64 matrices. Workers initialise their rows
 * of A and B, then each computes its rows of C, reading all of B through the
 * DSM. Summation order is fixed, so the result matches the sequential one.
 *
 * @module
 */

import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";
import { digestBytes, digestRegion, share } from "./util.ts";

function aAt(i: number, j: number): number {
  return ((i * 7 + j * 3) % 11) - 5 + 0.5;
}
function bAt(i: number, j: number): number {
  return ((i * 5 + j * 13) % 9) - 4 + 0.25;
}

/** The matrix-multiply program. */
export const program: DsmProgram = {
  name: "matmul",
  defaults: { n: 48 },
  limits: { n: int(1, 4096) },
  regions: (p: Readonly<Params>) => {
    const bytes = (p.n ?? 0) * (p.n ?? 0) * 8;
    return [
      { name: "a", size: bytes, blockSize: 256, home: "blocked" },
      { name: "b", size: bytes, blockSize: 256, home: "blocked" },
      { name: "c", size: bytes, blockSize: 256, home: "blocked" },
    ];
  },
  run(ctx: DsmContext): void {
    const n = ctx.params.n ?? 0;
    const a = ctx.region("a");
    const b = ctx.region("b");
    const c = ctx.region("c");
    const [lo, hi] = share(n, ctx.rank, ctx.size);
    for (let i = lo; i < hi; i++) {
      for (let j = 0; j < n; j++) {
        a.storeF64((i * n + j) * 8, aAt(i, j));
        b.storeF64((i * n + j) * 8, bAt(i, j));
      }
    }
    ctx.barrier();
    for (let i = lo; i < hi; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += a.loadF64((i * n + k) * 8) * b.loadF64((k * n + j) * 8);
        c.storeF64((i * n + j) * 8, s);
      }
    }
  },
  result(ctx: DsmContext): string {
    const n = ctx.params.n ?? 0;
    return digestRegion(ctx.region("c"), n * n * 8);
  },
  sequential(p: Readonly<Params>): string {
    const n = p.n ?? 0;
    const c = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let k = 0; k < n; k++) s += aAt(i, k) * bAt(k, j);
        c[i * n + j] = s;
      }
    }
    return digestBytes(new Uint8Array(c.buffer));
  },
};
