/**
 * Lock-up free versus blocking stores on a store-heavy kernel: workers
 * overwrite blocks homed on other nodes (each block's first store an upgrade
 * miss). Same program and cluster; the peer is the blocking-store switch.
 *
 * @module
 */

import { runLocalCluster } from "../dsm/cluster.ts";
import { machineLine, median, medianRange } from "./stats.ts";

const RUNS = 5;

const params = { blocks: 128, blockSize: 256, rounds: 6 };
const shapes = [{ nodes: 2, workers: 1 }, { nodes: 3, workers: 1 }];
console.log("machine:", machineLine());
console.log(
  `peer command: deno task vmkit dsm run store_kernel --nodes N --blocking-stores ` +
    `--param blocks=${params.blocks} --param blockSize=${params.blockSize} --param rounds=${params.rounds}`,
);
console.log(
  "| metric | vmkit (lock-up free) | peer (blocking) | ratio (peer/vmkit, higher is better) |",
);
console.log("| --- | --- | --- | --- |");
for (const shape of shapes) {
  const free: number[] = [];
  const blocking: number[] = [];
  let stores = 0;
  for (let run = 0; run < RUNS; run++) {
    // Alternate which side goes first.
    const order = run % 2 === 0 ? [false, true] : [true, false];
    for (const blockingStores of order) {
      const r = await runLocalCluster({
        program: "store_kernel",
        ...shape,
        params,
        blockingStores,
      });
      const res = r.result as { writeMs: number; stores: number };
      stores = res.stores;
      (blockingStores ? blocking : free).push(res.writeMs);
    }
  }
  const fmt = (x: number): string => x.toFixed(1);
  console.log(
    `| write phase ms, ${shape.nodes} nodes x ${shape.workers} worker, ${stores} stores, median of ${RUNS} [range] | ` +
      `${medianRange(free, fmt)} | ${medianRange(blocking, fmt)} | ${
        (median(blocking) / median(free)).toFixed(2)
      } |`,
  );
}
