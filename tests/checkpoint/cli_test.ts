import assert from "node:assert/strict";
import { Checkpointer } from "../../checkpoint/live.ts";
import { MachineTarget } from "../../vmm/checkpoint.ts";
import { vmkit } from "../vmm/run_helpers.ts";
import { seqMachine, sleep } from "./helpers.ts";

Deno.test("vmkit checkpoint info, verify and merge report a diff chain and refuse a corrupt file (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-ckcli-" });
  {
    await using m = await seqMachine(32, 256);
    await sleep(200);
    using cp = await Checkpointer.create(new MachineTarget(m));
    await (await cp.checkpoint({ path: `${dir}/a.ckpt` })).done;
    await sleep(100);
    await (await cp.checkpoint({ path: `${dir}/b.ckpt`, diff: true })).done;
  }
  const info = await vmkit(["checkpoint", "info", `${dir}/b.ckpt`, "--output", "json"]);
  assert.equal(info.code, 0, info.stderr);
  const j = JSON.parse(info.stdout);
  assert.equal(j.type, "diff");
  assert.equal(j.chain.length, 2);
  assert.equal(j["mem-bytes"], 32 << 20);

  const v = await vmkit(["checkpoint", "verify", `${dir}/b.ckpt`]);
  assert.equal(v.code, 0, v.stderr);
  assert.match(v.stdout, /ok \(2 file\(s\)/);

  const m = await vmkit(["checkpoint", "merge", `${dir}/b.ckpt`, `${dir}/flat.ckpt`]);
  assert.equal(m.code, 0, m.stderr);
  const flat = JSON.parse(
    (await vmkit(["checkpoint", "info", `${dir}/flat.ckpt`, "--json"])).stdout,
  );
  assert.equal(flat.type, "full");

  const bytes = await Deno.readFile(`${dir}/a.ckpt`);
  await Deno.writeFile(`${dir}/cut.ckpt`, bytes.subarray(0, bytes.length >> 1));
  const bad = await vmkit(["checkpoint", "verify", `${dir}/cut.ckpt`]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /commit record/);
  assert.equal((await vmkit(["checkpoint", "merge", `${dir}/a.ckpt`])).code, 64);
  await Deno.remove(dir, { recursive: true });
});
