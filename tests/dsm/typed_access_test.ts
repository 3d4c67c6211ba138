import assert from "node:assert/strict";
import { runLocalCluster } from "../../dsm/cluster.ts";

const FIXTURE = new URL("./fixtures/typed_program.ts", import.meta.url).pathname;

Deno.test("typed stores on one node are read back exactly on another node, and bad accesses raise DsmAccessError", async () => {
  const run = await runLocalCluster({ program: FIXTURE, nodes: 2, workers: 1 });
  const r = run.result as Record<string, unknown>;
  assert.equal(r.u8, 250);
  assert.equal(r.i8, -5);
  assert.equal(r.u16, 65000);
  assert.equal(r.i16, -1234);
  assert.equal(r.u32, 4000000000);
  assert.equal(r.i32, -123456789);
  assert.equal(r.f32, Math.fround(1.1));
  assert.equal(r.f64, Math.PI);
  assert.equal(r.u64, (2n ** 63n + 5n).toString());
  assert.equal(r.i64, (-(2n ** 40n)).toString());
  assert.equal(r.bulkOk, true);
  assert.match(String(r.outOfBounds), /^DsmAccessError: .*outside 0\.\.4096/);
  assert.match(String(r.negative), /^DsmAccessError: /);
  assert.match(String(r.misaligned), /^DsmAccessError: .*not aligned to 8/);
  assert.match(String(r.unknownRegion), /^DsmError: no shared region 'nope'/);
  assert.match(String(r.badLock), /^DsmError: lock id -1/);
  assert.ok(run.stats.length === 2 && run.stats.every((s) => s.messages > 0));
});
