import assert from "node:assert/strict";
import { Checkpointer } from "../../checkpoint/live.ts";
import { MachineTarget, restoreMachine } from "../../vmm/checkpoint.ts";
import {
  copyRam,
  firstDifference,
  ReferenceTarget,
  SEQ_BASE,
  seqMachine,
  sleep,
} from "./helpers.ts";

Deno.test("a live checkpoint restores to the RAM and registers of its pause while the guest kept writing (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-ckpt-" });
  const path = `${dir}/vm.ckpt`;
  await using m = await seqMachine(64, 2048);
  await sleep(400);
  const target = new ReferenceTarget(m);
  using cp = await Checkpointer.create(target);
  const save = await cp.checkpoint({ path });
  assert.ok(save.pauseUs > 0);
  const summary = await save.done;
  assert.equal(summary.inheritedPages, 0);
  assert.ok(summary.dataPages >= 2048, `data pages ${summary.dataPages}`);
  await sleep(300); // the guest goes on writing
  await m.pause();
  const later = copyRam(m);
  assert.notEqual(
    firstDifference(later, target.ram),
    -1,
    "the guest wrote nothing after the pause",
  );
  await m.resume();

  // RAM filled privately (no shared page store) restores the same bytes.
  {
    await using p = await restoreMachine(path, { vmGenId: false, pageStore: false });
    assert.equal(p.pageStore, undefined);
    const diff = firstDifference(copyRam(p.machine), target.ram);
    assert.equal(diff, -1, `privately filled RAM differs at 0x${diff.toString(16)}`);
  }

  // The same VM resumed, not a clone: keep its generation id so RAM compares byte for byte.
  await using r = await restoreMachine(path, { vmGenId: false });
  assert.ok(r.pageStore !== undefined, "no shared page store (is /dev/shm a tmpfs?)");
  const restored = copyRam(r.machine);
  const diff = firstDifference(restored, target.ram);
  assert.equal(diff, -1, `restored RAM differs from the pause's at 0x${diff.toString(16)}`);
  const cpu = r.machine.saveCpuState();
  assert.equal(cpu.vcpus[0]?.regs.rip, target.cpu?.vcpus[0]?.regs.rip);
  assert.equal(cpu.vcpus[0]?.regs.rax, target.cpu?.vcpus[0]?.regs.rax);

  // The restored guest runs on from there.
  await r.machine.start();
  await sleep(300);
  await r.machine.pause();
  const after = r.machine.memory.read(SEQ_BASE, 2048 * 4096);
  const before = target.ram[0]?.subarray(SEQ_BASE, SEQ_BASE + 2048 * 4096);
  assert.ok(
    before !== undefined && after.some((b, i) => b !== before[i]),
    "the restored guest did not run",
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a restored VM (RAM on the shared page store) is checkpointed again, as a diff against its origin and fully, and both restore exactly (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-reckpt-" });
  {
    await using m = await seqMachine(48, 1024);
    await sleep(300);
    using cp = await Checkpointer.create(new MachineTarget(m));
    await (await cp.checkpoint({ path: `${dir}/a.ckpt` })).done;
  }
  // With a new generation id: the restore's own write into RAM must be in the diff too.
  await using r = await restoreMachine(`${dir}/a.ckpt`);
  assert.ok(r.pageStore !== undefined);
  assert.ok(r.vmGenId !== undefined, "no new VM generation id was written");
  await r.machine.start();
  await sleep(300);
  // Taken while paused (a paused VM stays paused), so RAM now is what each must hold.
  const cp = r.checkpointer;
  await r.machine.pause();
  const refB = copyRam(r.machine);
  const b = await (await cp.checkpoint({ path: `${dir}/b.ckpt`, diff: true })).done;
  assert.equal(b.diff, true, "the restored VM's writes are tracked from its first instruction");
  assert.ok(b.inheritedPages > 0, "the diff against its origin inherited nothing");
  await r.machine.resume();
  await sleep(300);
  await r.machine.pause();
  const refC = copyRam(r.machine);
  const c = await (await cp.checkpoint({ path: `${dir}/c.ckpt` })).done;
  assert.equal(c.inheritedPages, 0);
  assert.notEqual(firstDifference(refB, refC), -1, "the guest did not run between them");
  for (const [path, ref] of [[`${dir}/b.ckpt`, refB], [`${dir}/c.ckpt`, refC]] as const) {
    await using x = await restoreMachine(path, { vmGenId: false });
    const diff = firstDifference(copyRam(x.machine), ref);
    assert.equal(diff, -1, `${path} restores RAM that differs at 0x${diff.toString(16)}`);
  }
  await Deno.remove(dir, { recursive: true });
});
