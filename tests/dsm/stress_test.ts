import assert from "node:assert/strict";
import { runLocalCluster } from "../../dsm/cluster.ts";

interface StressCase {
  seed: number;
  nodes: number;
  workers: number;
  blockingStores: boolean;
  blockSize: number;
}

const SEEDS: ReadonlyArray<StressCase> = [
  { seed: 11, nodes: 2, workers: 2, blockingStores: false, blockSize: 64 },
  { seed: 23, nodes: 3, workers: 1, blockingStores: false, blockSize: 64 },
  { seed: 37, nodes: 4, workers: 1, blockingStores: false, blockSize: 64 },
  { seed: 53, nodes: 3, workers: 2, blockingStores: false, blockSize: 256 },
  { seed: 41, nodes: 2, workers: 1, blockingStores: true, blockSize: 128 },
];

for (const c of SEEDS) {
  Deno.test(
    `random loads, stores, locks and barriers on ${c.nodes} nodes x ${c.workers} workers ` +
      `(seed ${c.seed}, ${c.blockSize} B blocks${
        c.blockingStores ? ", blocking stores" : ""
      }) obey the memory model`,
    async () => {
      try {
        const run = await runLocalCluster({
          program: "stress",
          nodes: c.nodes,
          workers: c.workers,
          params: { seed: c.seed, rounds: 8, ops: 250, blockSize: c.blockSize },
          blockingStores: c.blockingStores,
        });
        const r = run.result as Record<string, number>;
        assert.equal(r.violations, 0, `first violation code ${r.firstViolation}`);
        assert.equal(r.finalMismatches, 0);
        assert.equal(r.counterMismatches, 0);
        assert.ok((r.increments ?? 0) > 0, "the run took locks");
      } catch (err) {
        console.error(
          `dsm stress failed with seed ${c.seed} (nodes ${c.nodes}, workers ${c.workers})`,
        );
        throw err;
      }
    },
  );
}
