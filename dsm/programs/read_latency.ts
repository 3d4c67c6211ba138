/**
 * Remote read-miss latency probe: the worker of rank 1 (on node 1) reads one
 * word of each of `count` blocks homed on node 0 that it never cached, timing
 * every miss. `result` returns the median and 90th percentile in microseconds.
 *
 * @module
 */

import { DsmConfigError } from "../errors.ts";
import type { DsmContext, DsmProgram, Params } from "../program.ts";

/** The read-latency program. */
export const program: DsmProgram = {
  name: "read_latency",
  defaults: { count: 1000 },
  regions: (p: Readonly<Params>) => [
    // Blocked homes: the first half of the blocks lives on node 0 (of 2).
    { name: "probe", size: (p.count ?? 0) * 2 * 64, blockSize: 64, home: "blocked" },
    { name: "out", size: (p.count ?? 0) * 2 * 8, blockSize: 64, home: "blocked" },
  ],
  run(ctx: DsmContext): void {
    if (ctx.nodeCount !== 2) throw new DsmConfigError("read_latency needs exactly 2 nodes");
    const count = ctx.params.count ?? 0;
    if (ctx.rank !== ctx.workersPerNode) return;
    const probe = ctx.region("probe");
    const out = ctx.region("out");
    let sink = 0;
    const lat = new Float64Array(count);
    for (let i = 0; i < count; i++) {
      const t0 = performance.now();
      sink += probe.loadU32(i * 64);
      lat[i] = (performance.now() - t0) * 1000;
    }
    for (let i = 0; i < count; i++) out.storeF64((count + i) * 8, lat[i] ?? 0);
    if (sink !== 0) throw new DsmConfigError(`probe memory was not zero (${sink})`);
  },
  result(ctx: DsmContext): Record<string, number> {
    const count = ctx.params.count ?? 0;
    const out = ctx.region("out");
    const v = Array.from({ length: count }, (_, i) => out.loadF64((count + i) * 8)).sort((a, b) =>
      a - b
    );
    const at = (q: number): number => v[Math.min(v.length - 1, Math.floor(q * v.length))] ?? 0;
    return { count, medianUs: at(0.5), p90Us: at(0.9), minUs: at(0) };
  },
};
