import assert from "node:assert/strict";
import { allocateRegion, homeOf, LINE_SIZE, validateRegionSpec } from "../../dsm/layout.ts";
import { DsmConfigError } from "../../dsm/errors.ts";
import { orderMembers, parseEndpoint } from "../../dsm/transport.ts";

Deno.test("region sizes round up to whole blocks and bad block sizes are refused", () => {
  assert.equal(validateRegionSpec({ name: "a", size: 100, blockSize: 64 }), 128);
  assert.equal(validateRegionSpec({ name: "a", size: 4096, blockSize: 4096 }), 4096);
  for (const blockSize of [32, 96, 8192]) {
    assert.throws(() => validateRegionSpec({ name: "a", size: 100, blockSize }), DsmConfigError);
  }
  assert.throws(() => validateRegionSpec({ name: "a b", size: 100, blockSize: 64 }), /region name/);
  assert.throws(() => validateRegionSpec({ name: "a", size: 0, blockSize: 64 }), /size 0/);
  const r = allocateRegion({ name: "r", size: 1000, blockSize: 256 });
  assert.equal(r.data.byteLength, 1024);
  assert.equal(r.state.byteLength, 1024 / LINE_SIZE);
  assert.equal(r.locks.byteLength, 4 * 4);
});

Deno.test("cyclic homes deal blocks round-robin and blocked homes give contiguous ranges", () => {
  assert.deepEqual([0, 1, 2, 3, 4].map((b) => homeOf("cyclic", b, 5, 3)), [0, 1, 2, 0, 1]);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((b) => homeOf("blocked", b, 6, 3)), [0, 0, 1, 1, 2, 2]);
  for (let b = 0; b < 7; b++) assert.ok(homeOf("blocked", b, 7, 4) < 4);
});

Deno.test("every node derives the same ids from its own view of the membership list", () => {
  const all = ["10.0.0.2:9000", "10.0.0.1:9001", "10.0.0.1:900"].map(parseEndpoint);
  const views = all.map((self) => orderMembers(self, all.filter((e) => e !== self)));
  const order = views[0]?.members.map((e) => `${e.host}:${e.port}`);
  assert.deepEqual(order, ["10.0.0.1:900", "10.0.0.1:9001", "10.0.0.2:9000"]);
  for (const v of views) assert.deepEqual(v.members.map((e) => `${e.host}:${e.port}`), order);
  assert.deepEqual(views.map((v) => v.id), [2, 1, 0]);
  assert.deepEqual(parseEndpoint("[::1]:80"), { host: "::1", port: 80 });
  assert.throws(() => parseEndpoint("localhost"), DsmConfigError);
  assert.throws(() => parseEndpoint("h:70000"), DsmConfigError);
  assert.throws(() => orderMembers(parseEndpoint("a:1"), [parseEndpoint("a:1")]), /duplicates/);
});
