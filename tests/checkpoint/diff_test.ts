import assert from "node:assert/strict";
import { Checkpointer } from "../../checkpoint/live.ts";
import { describeCheckpoint, mergeCheckpoint, verifyCheckpoint } from "../../checkpoint/tools.ts";
import { restoreMachine } from "../../vmm/checkpoint.ts";
import { copyRam, firstDifference, ReferenceTarget, seqMachine, sleep } from "./helpers.ts";

async function restoredRam(path: string): Promise<Uint8Array[]> {
  // The same VM resumed, not a clone: keep its generation id so RAM compares byte for byte.
  await using r = await restoreMachine(path, { vmGenId: false });
  return copyRam(r.machine);
}

Deno.test("a chain of three diffs and its merge restore to the RAM of the last pause (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-diff-" });
  await using m = await seqMachine(48, 1024);
  await sleep(300);
  const target = new ReferenceTarget(m);
  using cp = await Checkpointer.create(target);
  const full = await (await cp.checkpoint({ path: `${dir}/full.ckpt` })).done;
  assert.equal(full.diff, false);
  const diffs = [];
  for (let i = 1; i <= 3; i++) {
    await sleep(150);
    diffs.push(await (await cp.checkpoint({ path: `${dir}/d${i}.ckpt`, diff: true })).done);
  }
  const pages = 48 * 256;
  for (const d of diffs) {
    assert.equal(d.diff, true);
    assert.ok(d.inheritedPages > pages / 2, `a diff inherited only ${d.inheritedPages} pages`);
    assert.ok(d.dataPages > 0, "a diff saved no page");
  }
  const info = await describeCheckpoint(`${dir}/d3.ckpt`);
  assert.deepEqual(info.chain.map((p) => p.slice(dir.length + 1)), [
    "d3.ckpt",
    "d2.ckpt",
    "d1.ckpt",
    "full.ckpt",
  ]);
  assert.equal((await verifyCheckpoint(`${dir}/d3.ckpt`)).files, 4);

  const ram = await restoredRam(`${dir}/d3.ckpt`);
  let at = firstDifference(ram, target.ram);
  assert.equal(at, -1, `the chain restores RAM that differs at 0x${at.toString(16)}`);

  const merged = await mergeCheckpoint(`${dir}/d3.ckpt`, `${dir}/merged.ckpt`);
  assert.equal(merged.merged, 4);
  assert.equal((await describeCheckpoint(`${dir}/merged.ckpt`)).type, "full");
  await verifyCheckpoint(`${dir}/merged.ckpt`);
  at = firstDifference(await restoredRam(`${dir}/merged.ckpt`), target.ram);
  assert.equal(at, -1, `the merged checkpoint differs at 0x${at.toString(16)}`);
  await Deno.remove(dir, { recursive: true });
});
