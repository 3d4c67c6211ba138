import assert from "node:assert/strict";
import { startLocalCluster } from "../../dsm/cluster.ts";

Deno.test("killing a node with SIGKILL makes every other node fail with a clear error and no wrong value", async () => {
  const cluster = await startLocalCluster({
    program: "death_watch",
    nodes: 3,
    workers: 1,
    timeoutMs: 60_000,
  });
  await cluster.ready;
  // Let the program run a while: several hundred barrier rounds.
  await new Promise((r) => setTimeout(r, 700));
  cluster.kill(2, "SIGKILL");
  const outcomes = await cluster.finished;
  const dead = outcomes[2];
  assert.ok(dead !== undefined && dead.code !== 0, "the killed node did not exit 0");
  for (const o of outcomes.slice(0, 2)) {
    assert.equal(o.code, 1, `node ${o.node} exits 1 (stderr: ${o.stderr})`);
    assert.match(o.stderr, /node 2 at 127\.0\.0\.1:\d+ .*died/);
    assert.doesNotMatch(o.stderr + o.stdout, /WRONG VALUE/);
    assert.doesNotMatch(o.stdout, /DSM-RESULT/);
  }
});
