/**
 * Remote read-miss latency probe: the worker of rank 1 (on node 1) reads one
 * word of each of `count` blocks homed on node 0 that it never cached, timing
 * every miss. `warmup` misses on other blocks come first and are reported
 * apart (`warmupMedianUs`), so the main figures describe the protocol code
 * once the JIT compiled it rather than the interpreter. `result` returns the
 * median and 90th percentile in microseconds, and with `samples=1` every
 * timed sample (sorted), so a bench can pool the runs.
 *
 * @module
 */

import { DsmConfigError } from "../errors.ts";
import { type DsmContext, type DsmProgram, intParam as int, type Params } from "../program.ts";

/** The read-latency program. */
export const program: DsmProgram = {
  name: "read_latency",
  defaults: { count: 1000, warmup: 1000, samples: 0 },
  limits: { count: int(1, 1e7), warmup: int(0, 1e7), samples: int(0, 1) },
  regions: (p: Readonly<Params>) => {
    const n = (p.count ?? 0) + (p.warmup ?? 0);
    return [
      // Blocked homes: the first half of the blocks lives on node 0 (of 2).
      { name: "probe", size: n * 2 * 64, blockSize: 64, home: "blocked" },
      // The second half (homed on node 1, the prober): timed, then warm-up latencies.
      { name: "out", size: n * 2 * 8, blockSize: 64, home: "blocked" },
    ];
  },
  run(ctx: DsmContext): void {
    if (ctx.nodeCount !== 2) throw new DsmConfigError("read_latency needs exactly 2 nodes");
    const count = ctx.params.count ?? 0;
    const warmup = ctx.params.warmup ?? 0;
    if (ctx.rank !== ctx.workersPerNode) return;
    const n = count + warmup;
    const probe = ctx.region("probe");
    const out = ctx.region("out");
    let sink = 0;
    const lat = new Float64Array(n);
    // Warm-up misses first (blocks count.., timed apart), then the measured ones (blocks 0..).
    for (let i = 0; i < n; i++) {
      const block = i < warmup ? count + i : i - warmup;
      const t0 = performance.now();
      sink += probe.loadU32(block * 64);
      lat[i] = (performance.now() - t0) * 1000;
    }
    for (let i = 0; i < count; i++) out.storeF64((n + i) * 8, lat[warmup + i] ?? 0);
    for (let i = 0; i < warmup; i++) out.storeF64((n + count + i) * 8, lat[i] ?? 0);
    if (sink !== 0) throw new DsmConfigError(`probe memory was not zero (${sink})`);
  },
  result(ctx: DsmContext): Record<string, number | number[]> {
    const count = ctx.params.count ?? 0;
    const warmup = ctx.params.warmup ?? 0;
    const n = count + warmup;
    const out = ctx.region("out");
    const sorted = (from: number, len: number): number[] =>
      Array.from({ length: len }, (_, i) => out.loadF64((from + i) * 8)).sort((a, b) => a - b);
    const at = (v: number[], q: number): number =>
      v[Math.min(v.length - 1, Math.floor(q * v.length))] ?? 0;
    const v = sorted(n, count);
    const cold = sorted(n + count, warmup);
    const res: Record<string, number | number[]> = {
      count,
      medianUs: at(v, 0.5),
      p90Us: at(v, 0.9),
      minUs: at(v, 0),
      warmupMedianUs: at(cold, 0.5),
    };
    // Every timed miss (sorted, 0.1 µs) only when asked: a command line wants the summary.
    if (ctx.params.samples === 1) res.samplesUs = v.map((x) => Math.round(x * 10) / 10);
    return res;
  },
};
