import assert from "node:assert/strict";
import { runLocalCluster } from "../../dsm/cluster.ts";
import { loadProgram } from "../../dsm/node_main.ts";

async function checkAgainstSequential(name: string, nodes: number, workers: number): Promise<void> {
  const { program } = await loadProgram(name);
  const expected = program.sequential?.(program.defaults);
  assert.notEqual(expected, undefined);
  const run = await runLocalCluster({ program: name, nodes, workers });
  assert.deepEqual(run.result, expected);
  const messages = run.stats.reduce((s, x) => s + x.messages, 0);
  assert.ok(messages > 0, "a multi-node run exchanges messages");
}

Deno.test("red-black SOR on 3 nodes x 2 workers equals the sequential run bit for bit", async () => {
  await checkAgainstSequential("sor", 3, 2);
});

Deno.test("matrix multiply on 4 nodes equals the sequential run bit for bit", async () => {
  await checkAgainstSequential("matmul", 4, 1);
});

Deno.test("LU decomposition on 2 nodes x 2 workers equals the sequential run bit for bit", async () => {
  await checkAgainstSequential("lu", 2, 2);
});

Deno.test("histogram with locks on 3 nodes x 2 workers equals the sequential count", async () => {
  await checkAgainstSequential("histogram", 3, 2);
});

Deno.test("histogram with blocking stores on 2 nodes gives the same counts as lock-up free stores", async () => {
  const { program } = await loadProgram("histogram");
  const run = await runLocalCluster({
    program: "histogram",
    nodes: 2,
    workers: 2,
    blockingStores: true,
  });
  assert.deepEqual(run.result, program.sequential?.(program.defaults));
});
