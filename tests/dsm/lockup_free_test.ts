import assert from "node:assert/strict";
import { runLocalCluster } from "../../dsm/cluster.ts";

const FIXTURE = new URL("./fixtures/lockup_free_program.ts", import.meta.url).pathname;

Deno.test("stores to remote blocks return before they are performed, many outstanding, and a fence drains them", async () => {
  const run = await runLocalCluster({ program: FIXTURE, nodes: 2, workers: 1 });
  const r = run.result as Record<string, number | boolean>;
  assert.ok(Number(r.maxPending) >= 2, `at most ${r.maxPending} stores were in flight at once`);
  assert.equal(r.afterFence, 0);
  assert.equal(r.ownReadsOk, true, "a worker reads its own pending stores");
  assert.equal(r.remoteValuesOk, true);
});

Deno.test("with blocking stores every store is performed before it returns", async () => {
  const run = await runLocalCluster({
    program: FIXTURE,
    nodes: 2,
    workers: 1,
    blockingStores: true,
  });
  const r = run.result as Record<string, number | boolean>;
  assert.equal(r.maxPending, 0);
  assert.equal(r.ownReadsOk, true);
  assert.equal(r.remoteValuesOk, true);
});
