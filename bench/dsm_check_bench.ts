/**
 * Cost of the inline state check on a hit: loads and stores of u32 words of a
 * cached region through the DSM accessors, against the same loops over a
 * plain Uint32Array (the peer), in the same worker of a one-node run.
 *
 * @module
 */

import { runLocalCluster } from "../dsm/cluster.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";

const TRIALS = 9;
const r = await runLocalCluster({
  program: "check_cost",
  nodes: 1,
  workers: 1,
  params: { trials: TRIALS },
});
const m = r.result as Record<string, number[]>;
const fmt = (x: number): string => x.toFixed(2);
const row = (name: string, vmkit: number[] = [], peer: number[] = []): string =>
  `| ${name} | ${medianRange(vmkit, fmt)} | ${medianRange(peer, fmt)} | ${
    (median(peer) / median(vmkit)).toFixed(2)
  } |`;
console.log("machine:", machineLine());
console.log(
  "peer command: the same loop over a plain Uint32Array in the same worker (dsm/programs/check_cost.ts)",
);
console.log(
  `| metric (ns per access, 16384 words x 200 reps, median of ${TRIALS} trials [range]) | vmkit | peer | ratio (peer/vmkit, higher is better) |`,
);
console.log("| --- | --- | --- | --- |");
console.log(
  row("load hit, region.loadU32(a) in the loop vs u32[i]", m.dsmLoadNs, m.plainLoadNs),
);
console.log(
  row(
    "load hit, region.loadU32(a) in the loop vs u32[a >>> 2]",
    m.dsmLoadNs,
    m.plainAddrLoadNs,
  ),
);
console.log(
  row(
    "load hit, accessor hoisted (const load = region.loadU32) vs u32[i]",
    m.dsmLoadHoistedNs,
    m.plainLoadNs,
  ),
);
console.log(
  row(
    "store hit, region.storeU32(a, v) in the loop vs u32[i] = v",
    m.dsmStoreNs,
    m.plainStoreNs,
  ),
);
console.log(
  row(
    "store hit, region.storeU32(a, v) in the loop vs u32[a >>> 2] = v",
    m.dsmStoreNs,
    m.plainAddrStoreNs,
  ),
);
console.log(
  row("store hit, accessor hoisted vs u32[i] = v", m.dsmStoreHoistedNs, m.plainStoreNs),
);
console.log(
  row(
    "stencil point (3 f64 loads + 1 store, SOR-like) vs the same over a Float64Array",
    m.dsmStencilNs,
    m.plainStencilNs,
  ),
);
console.log(
  row(
    "dot-product element (2 f64 loads + multiply-add, matmul-like) vs the same over a Float64Array",
    m.dsmDotNs,
    m.plainDotNs,
  ),
);
console.log(
  row(
    "real work per element (f64 load, sqrt, divide, multiply-adds, store back) vs the same over a Float64Array",
    m.dsmWorkNs,
    m.plainWorkNs,
  ),
);
const workX = median(m.dsmWorkNs ?? []) / median(m.plainWorkNs ?? []);
const stencilX = median(m.dsmStencilNs ?? []) / median(m.plainStencilNs ?? []);
const loadX = median(m.dsmLoadNs ?? []) / median(m.plainLoadNs ?? []);
const storeX = median(m.dsmStoreNs ?? []) / median(m.plainStoreNs ?? []);
console.log(
  `target: a hit costs <= 2x a plain typed-array access on a loop with real work per element: ` +
    `${workX.toFixed(2)}x (stencil ${stencilX.toFixed(2)}x): ${workX <= 2 ? "met" : "NOT met"}`,
);
console.log(
  `and, with no work per element, plainly (vs u32[i]): a sum of loads costs ${
    loadX.toFixed(2)
  }x, a loop of stores ${storeX.toFixed(2)}x (${
    Math.max(loadX, storeX) <= 2 ? "met" : "NOT met"
  } at 2x) ` +
    `(load ${loadAverage()})`,
);
