/**
 * The disk step: a guest keeps writing sequence numbers to its virtio-blk
 * disk (`blk.seq`: sector 16 + s % 64 gets s, the last completed s goes to
 * RAM at 0xf00000); at the checkpoint's pause (the drive already switched
 * to its overlay) the test reads what the guest's disk holds as the
 * reference. Both policies, raw and qcow2 parents.
 */
import assert from "node:assert/strict";
import { Checkpointer, type DiskPolicy } from "../../checkpoint/mod.ts";
import { openCheckpoint } from "../../checkpoint/reader.ts";
import { openImage } from "../../cow/chain.ts";
import { createImage } from "../../cow/mod.ts";
import type { MachineCpuState } from "../../checkpoint/target.ts";
import { MachineTarget, restoreMachine } from "../../vmm/checkpoint.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { buildGuests } from "../guests/build.ts";
import { sleep, waitForText } from "./helpers.ts";

const DISK_BYTES = 1 << 20;
const SEQ_FIRST = 16;
const SEQ_SECTORS = 64;
const SEQ_DONE = 0xf00000;

/** Reads the whole disk a chain shows (read-only, sharing it with its writer). */
function readChain(path: string): Uint8Array {
  const img = openImage(path, { readOnly: true, forceShare: true });
  try {
    const buf = new Uint8Array(img.size);
    img.readSync(0, buf);
    return buf;
  } finally {
    img.closeSync();
  }
}

/** The sequence value in sector `k` of the guest's range. */
function sectorValue(disk: Uint8Array, k: number): number {
  return new DataView(disk.buffer, disk.byteOffset + (SEQ_FIRST + k) * 512, 4).getUint32(0, true);
}

/** Every sector of the range holds a value of its residue, all within `n` of `done`. */
function assertConsistent(disk: Uint8Array, done: number, what: string): void {
  for (let k = 0; k < SEQ_SECTORS; k++) {
    const v = sectorValue(disk, k);
    if (v === 0) continue; // not written yet
    assert.equal(v % SEQ_SECTORS, k, `${what}: sector ${k} holds ${v}`);
    assert.ok(v <= done + 1 && v + SEQ_SECTORS > done - SEQ_SECTORS, `${what}: ${v} vs ${done}`);
  }
}

async function qemuImgCheck(path: string): Promise<void> {
  const out = await new Deno.Command("qemu-img", { args: ["check", "-U", path] }).output();
  assert.equal(out.code, 0, `qemu-img check ${path}:\n${new TextDecoder().decode(out.stdout)}`);
}

/** Reads the disk and the guest's count inside the pause (after the quiesce switched the drive). */
class DiskReference extends MachineTarget {
  disk: Uint8Array = new Uint8Array();
  done = 0;
  constructor(machine: Machine, readonly diskPath: string) {
    super(machine);
  }
  override saveCpuState(): MachineCpuState {
    this.disk = readChain(this.diskPath);
    this.done = new DataView(this.machine.memory.read(SEQ_DONE, 4).buffer).getUint32(0, true);
    return super.saveCpuState();
  }
}

for (
  const [policy, format] of [
    ["keep-parent", "raw"],
    ["keep-parent", "qcow2"],
    ["copy-parent", "raw"],
    ["copy-parent", "qcow2"],
  ] as [DiskPolicy, "raw" | "qcow2"][]
) {
  Deno.test(`${policy} over a ${format} disk: the checkpoint's disk holds the pause instant, every image checks clean (needs /dev/kvm)`, async () => {
    const dir = await Deno.makeTempDir({ prefix: `vmkit-disk-${policy}-${format}-` });
    const disk = `${dir}/disk.${format}`;
    createImage(disk, { size: DISK_BYTES, format }).closeSync();
    const serial = `${dir}/serial.log`;
    await Deno.writeTextFile(serial, "");
    const ckpt = `${dir}/vm.ckpt`;
    let reference: Uint8Array = new Uint8Array();
    {
      await using m = await Machine.create({
        memMiB: 32,
        vcpus: 1,
        kernel: await Deno.readFile(`${await buildGuests()}guest-pvh.elf`),
        cmdline: "mode=blk blk.seq",
        devices: defaultDeviceSpecs({ memMiB: 32, serialOut: { path: serial }, serialIn: false }),
        drives: [{ id: "vda", backend: { kind: "file", path: disk, format } }],
      });
      await m.start();
      await waitForText(serial, /^blk seq$/m);
      await sleep(200);
      const target = new DiskReference(m, disk);
      using cp = await Checkpointer.create(target);
      const save = await cp.checkpoint({ path: ckpt, diskPolicy: policy });
      const summary = await save.done;
      assert.equal(summary.warning, undefined);
      assert.ok(target.done > 0, "the guest wrote nothing before the pause");
      assertConsistent(target.disk, target.done, "the disk at the pause");
      reference = target.disk;

      using chain = await openCheckpoint(ckpt);
      const rec = chain.top.disks() as { policy: string; disks: { layers: { path: string }[] }[] };
      assert.equal(rec.policy, policy);
      const recorded = rec.disks[0]?.layers[0]?.path ?? "";
      assert.deepEqual(
        readChain(recorded),
        target.disk,
        "the checkpoint's disk is not the pause's",
      );
      const now = await m.disk("vda")?.describe();
      if (policy === "keep-parent") {
        assert.equal(recorded, disk, "keep-parent records the parent itself");
        assert.equal((Deno.statSync(disk).mode ?? 0) & 0o222, 0, "the kept parent is read-only");
        assert.equal(now?.layers[1]?.path, disk, "the VM goes on in an overlay over its parent");
        await qemuImgCheck(now?.layers[0]?.path ?? "");
      } else {
        assert.notEqual(recorded, disk, "copy-parent records a copy");
        assert.deepEqual(now?.layers.map((l) => l.path), [disk], "the VM is back on its own file");
        await qemuImgCheck(recorded);
        // The original file takes every later write.
        await sleep(300);
        await m.quiesceDevices();
        await m.pause();
        const later = readChain(disk);
        const done = new DataView(m.memory.read(SEQ_DONE, 4).buffer).getUint32(0, true);
        assert.ok(
          done > target.done + SEQ_SECTORS,
          `the guest wrote only ${done - target.done} more`,
        );
        assertConsistent(later, done, "the original file after the commit");
        await m.resume();
        m.resumeDevices();
      }
      if (format === "qcow2") await qemuImgCheck(disk);
    }

    // The restored VM runs on a fresh overlay; the checkpoint's images are never written.
    const before = Deno.statSync(policy === "keep-parent" ? disk : `${ckpt}`).mtime?.getTime();
    {
      await using r = await restoreMachine(ckpt, { vmGenId: false });
      const d = await r.machine.disk("vda")?.describe();
      const overlay = d?.layers[0]?.path ?? "";
      assert.ok(overlay.startsWith(`${dir}/vm.ckpt.vda.`), `restored onto ${overlay}`);
      assert.deepEqual(readChain(overlay), reference, "the restored disk is not the pause's");
      await r.machine.start();
      await sleep(300);
      await r.machine.quiesceDevices();
      await r.machine.pause();
      const done = new DataView(r.machine.memory.read(SEQ_DONE, 4).buffer).getUint32(0, true);
      assertConsistent(readChain(overlay), done, "the restored VM's disk");
      await qemuImgCheck(overlay);
    }
    assert.equal(
      Deno.statSync(policy === "keep-parent" ? disk : ckpt).mtime?.getTime(),
      before,
      "the restore wrote to the checkpoint",
    );

    // A changed parent is refused, and nothing is left behind.
    using chain = await openCheckpoint(ckpt);
    const recorded = (chain.top.disks() as { disks: { layers: { path: string }[] }[] })
      .disks[0]?.layers[0]?.path ?? "";
    Deno.chmodSync(recorded, 0o644);
    const f = await Deno.open(recorded, { write: true });
    await f.write(new Uint8Array([0x5a]));
    f.close();
    const files = [...Deno.readDirSync(dir)].length;
    await assert.rejects(restoreMachine(ckpt), /disks.*changed since the checkpoint/);
    assert.equal([...Deno.readDirSync(dir)].length, files, "a refused restore left files");
    await Deno.remove(dir, { recursive: true });
  });
}
