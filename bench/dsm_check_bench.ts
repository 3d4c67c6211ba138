/**
 * Cost of the inline state check on a hit: loads and stores of u32 words of a
 * cached region through the DSM accessors, against the same loops over a
 * plain Uint32Array (the peer), in the same worker of a one-node run.
 *
 * @module
 */

import { runLocalCluster } from "../dsm/cluster.ts";

async function machine(): Promise<string> {
  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/model name\s*:\s*(.*)/)?.[1] ??
    "unknown";
  return `nproc ${navigator.hardwareConcurrency}, ${cpu}, load ${
    Deno.loadavg().map((x) => x.toFixed(2)).join(" ")
  }`;
}

const r = await runLocalCluster({ program: "check_cost", nodes: 1, workers: 1 });
const m = r.result as Record<string, number>;
const row = (name: string, vmkit: number, peer: number): string =>
  `| ${name} | ${vmkit.toFixed(2)} | ${peer.toFixed(2)} | ${(peer / vmkit).toFixed(2)} |`;
console.log("machine:", await machine());
console.log(
  "peer command: the same loop over a plain Uint32Array in the same worker (dsm/programs/check_cost.ts)",
);
console.log(
  "| metric (ns per access, 16384 words x 200 reps, best of 5) | vmkit | peer | ratio (peer/vmkit, higher is better) |",
);
console.log("| --- | --- | --- | --- |");
console.log(
  row("load hit, region.loadU32(a) in the loop vs u32[i]", m.dsmLoadNs ?? 0, m.plainLoadNs ?? 0),
);
console.log(
  row(
    "load hit, region.loadU32(a) in the loop vs u32[a >>> 2]",
    m.dsmLoadNs ?? 0,
    m.plainAddrLoadNs ?? 0,
  ),
);
console.log(
  row(
    "load hit, accessor hoisted (const load = region.loadU32) vs u32[i]",
    m.dsmLoadHoistedNs ?? 0,
    m.plainLoadNs ?? 0,
  ),
);
console.log(
  row(
    "store hit, region.storeU32(a, v) in the loop vs u32[i] = v",
    m.dsmStoreNs ?? 0,
    m.plainStoreNs ?? 0,
  ),
);
console.log(
  row(
    "store hit, region.storeU32(a, v) in the loop vs u32[a >>> 2] = v",
    m.dsmStoreNs ?? 0,
    m.plainAddrStoreNs ?? 0,
  ),
);
console.log(
  row("store hit, accessor hoisted vs u32[i] = v", m.dsmStoreHoistedNs ?? 0, m.plainStoreNs ?? 0),
);
console.log(
  row(
    "stencil point (3 f64 loads + 1 store, SOR-like) vs the same over a Float64Array",
    m.dsmStencilNs ?? 0,
    m.plainStencilNs ?? 0,
  ),
);
console.log(
  row(
    "dot-product element (2 f64 loads + multiply-add, matmul-like) vs the same over a Float64Array",
    m.dsmDotNs ?? 0,
    m.plainDotNs ?? 0,
  ),
);
const loadX = (m.dsmLoadNs ?? 0) / (m.plainLoadNs ?? 1);
const storeX = (m.dsmStoreNs ?? 0) / (m.plainStoreNs ?? 1);
console.log(
  `target hit cost <= 2x a plain access (vs u32[i]): loads ${loadX.toFixed(2)}x, stores ${
    storeX.toFixed(2)
  }x: ` +
    (Math.max(loadX, storeX) <= 2 ? "met" : "NOT met"),
);
