/**
 * Messages and bytes per shared access for each example program on a local
 * cluster of 3 nodes x 1 worker, and the cluster's time against the plain
 * sequential version of the same program (the peer), run in this process.
 *
 * @module
 */

import { runLocalCluster } from "../dsm/cluster.ts";
import { loadProgram } from "../dsm/node_main.ts";
import type { Params } from "../dsm/program.ts";
import { machineLine, median, medianRange } from "./stats.ts";

/** Shared loads and stores each program performs (counted from its code). */
function accesses(name: string, p: Params, size: number): number {
  const n = p.n ?? 0;
  switch (name) {
    case "sor": {
      const w = n + 2;
      return w * w + (p.iters ?? 0) * n * n * 3 + w * w; // init, 6 per cell per 2 colours, result read
    }
    case "matmul":
      return 2 * n * n + n * n * (2 * n + 1) + n * n;
    case "lu": {
      let c = n * n + n * n;
      for (let k = 0; k < n - 1; k++) c += size + (n - k - 1) * (2 + 3 * (n - k - 1));
      return c;
    }
    case "histogram":
      return 2 * (p.n ?? 0) + 2 * (p.bins ?? 0) * size + (p.bins ?? 0);
  }
  return 0;
}

const NODES = 3;
const RUNS = 5;
console.log("machine:", machineLine());
console.log(
  "peer command: program.sequential(params) of the same module, in this process (no DSM)",
);
console.log(
  `| program (3 nodes x 1 worker) | msgs/access | bytes/access | msgs | bytes | vmkit ms, median of ${RUNS} [range] | peer ms | ratio (peer/vmkit) |`,
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const name of ["sor", "matmul", "lu", "histogram"]) {
  const { program } = await loadProgram(name);
  const params = { ...program.defaults };
  const vmkitMs: number[] = [];
  const peerMs: number[] = [];
  let msgs = 0;
  let bytes = 0;
  for (let r = 0; r < RUNS; r++) {
    const sides = [
      async () => {
        const run = await runLocalCluster({ program: name, nodes: NODES, workers: 1, params });
        if (JSON.stringify(program.sequential?.(params)) !== JSON.stringify(run.result)) {
          throw new Error(`${name}: result differs from sequential`);
        }
        msgs = run.stats.reduce((s, x) => s + x.messages, 0);
        bytes = run.stats.reduce((s, x) => s + x.bytes, 0);
        vmkitMs.push(Math.max(...run.stats.map((s) => s.elapsedMs)));
      },
      () => {
        const t0 = performance.now();
        program.sequential?.(params);
        peerMs.push(performance.now() - t0);
        return Promise.resolve();
      },
    ];
    if (r % 2 === 1) sides.reverse();
    for (const side of sides) await side();
  }
  const acc = accesses(name, params, NODES);
  const fmt = (x: number): string => x.toFixed(1);
  console.log(
    `| ${name} ${JSON.stringify(params)} | ${(msgs / acc).toFixed(4)} | ${
      (bytes / acc).toFixed(2)
    } | ${msgs} | ${bytes} | ` +
      `${medianRange(vmkitMs, fmt)} | ${medianRange(peerMs, fmt)} | ${
        (median(peerMs) / median(vmkitMs)).toFixed(3)
      } |`,
  );
}
