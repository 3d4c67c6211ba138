/**
 * Lock-up free versus blocking stores on a store-heavy kernel: workers
 * overwrite blocks homed on other nodes (each block's first store an upgrade
 * miss). Same program and cluster; the peer is the blocking-store switch.
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

const params = { blocks: 128, blockSize: 256, rounds: 6 };
const shapes = [{ nodes: 2, workers: 1 }, { nodes: 3, workers: 1 }];
console.log("machine:", await machine());
console.log(
  `peer command: deno task vmkit dsm run store_kernel --nodes N --blocking-stores ` +
    `--param blocks=${params.blocks} --param blockSize=${params.blockSize} --param rounds=${params.rounds}`,
);
console.log(
  "| metric | vmkit (lock-up free) | peer (blocking) | ratio (peer/vmkit, higher is better) |",
);
console.log("| --- | --- | --- | --- |");
for (const shape of shapes) {
  const best = { free: Infinity, blocking: Infinity };
  let stores = 0;
  for (let run = 0; run < 2; run++) {
    for (const blockingStores of [false, true]) {
      const r = await runLocalCluster({
        program: "store_kernel",
        ...shape,
        params,
        blockingStores,
      });
      const res = r.result as { writeMs: number; stores: number };
      stores = res.stores;
      if (blockingStores) best.blocking = Math.min(best.blocking, res.writeMs);
      else best.free = Math.min(best.free, res.writeMs);
    }
  }
  console.log(
    `| write phase ms, ${shape.nodes} nodes x ${shape.workers} worker, ${stores} stores | ` +
      `${best.free.toFixed(1)} | ${best.blocking.toFixed(1)} | ${
        (best.blocking / best.free).toFixed(2)
      } |`,
  );
}
