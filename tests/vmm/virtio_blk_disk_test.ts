import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { HostMemory } from "../../vmm/memory.ts";
import { DiskHandle } from "../../vmm/disk_handle.ts";
import type { DriveConfig } from "../../vmm/io_config.ts";
import { HostDriver, queueLayout, R, startBlk } from "./virtio_driver.ts";

await loadShim();

const MEM = 16 << 20;
const QUEUE_AT = 0x10000;
const BUF_AT = 0x100000;
const F = (1n << 32n) | (1n << 29n);
const T_IN = 0, T_OUT = 1;

/** One request of `type` on 4 KiB at `sector`; returns the status byte (and the data for reads). */
async function io(
  d: HostDriver,
  type: number,
  sector: number,
  fill = 0,
): Promise<{ status: number; data: Uint8Array }> {
  const hdr = new DataView(new ArrayBuffer(16));
  hdr.setUint32(0, type, true);
  hdr.setBigUint64(8, BigInt(sector), true);
  d.mem.write(BUF_AT, new Uint8Array(hdr.buffer));
  if (type === T_OUT) d.mem.write(BUF_AT + 0x1000, new Uint8Array(4096).fill(fill));
  d.mem.write(BUF_AT + 0x3000, new Uint8Array([0xee]));
  d.addChain([
    { addr: BUF_AT, len: 16, write: false },
    { addr: BUF_AT + 0x1000, len: 4096, write: type === T_IN },
    { addr: BUF_AT + 0x3000, len: 1, write: true },
  ]);
  d.kick();
  await d.collect(1);
  return {
    status: d.mem.read(BUF_AT + 0x3000, 1)[0] ?? -1,
    data: d.mem.read(BUF_AT + 0x1000, 4096),
  };
}

/** qemu-img check of an image the running drive holds open (-U: share its write lock). */
async function qemuImgCheck(path: string): Promise<string> {
  const out = await new Deno.Command("qemu-img", {
    args: ["check", "-U", path],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `qemu-img check ${path} failed:\n${text}`);
  return text;
}

Deno.test("a checkpoint's disk steps on a running drive: arm an overlay, switch at quiesce, write, commit back to the raw parent", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-disk-" });
  const base = `${dir}/base.raw`;
  await Deno.writeFile(base, new Uint8Array(4 << 20).fill(0x11));
  using mem = HostMemory.create(MEM);
  const drive: DriveConfig = { id: "vda", backend: { kind: "file", path: base } };
  const host = await startBlk(mem, drive);
  const disk = new DiskHandle(host, drive);
  try {
    const d = new HostDriver(mem, host);
    d.negotiate(F);
    d.setupQueue(0, queueLayout(QUEUE_AT, 64));
    d.driverOk();
    assert.equal((await io(d, T_OUT, 0, 0xaa)).status, 0);
    let desc = await disk.describe();
    assert.deepEqual(desc.layers.map((l) => [l.format, l.path]), [["raw", base]]);

    const overlay = `${dir}/ckpt1.qcow2`;
    desc = await disk.armOverlay(overlay);
    assert.equal(desc.armedOverlay, overlay);
    assert.equal(desc.layers.length, 1, "armed, not yet switched");
    assert.equal(
      (await io(d, T_OUT, 8, 0xbb)).status,
      0,
      "writes before the quiesce go to the base",
    );
    await host.quiesce(); // the switch happens here, before any pause window
    host.resume();
    desc = await disk.describe();
    assert.deepEqual(desc.layers.map((l) => l.format), ["qcow2", "raw"]);
    assert.equal(desc.armedOverlay, undefined);

    assert.equal((await io(d, T_OUT, 0, 0xcc)).status, 0);
    const r = await io(d, T_IN, 0);
    assert.ok(r.data.every((b) => b === 0xcc), "reads see the overlay");
    assert.ok((await io(d, T_IN, 8)).data.every((b) => b === 0xbb), "and the base below it");
    const frozen = await Deno.readFile(base);
    assert.ok(
      frozen.subarray(0, 4096).every((b) => b === 0xaa),
      "the base is frozen after the switch",
    );
    assert.match(await qemuImgCheck(overlay), /No errors were found/);

    desc = await disk.commit();
    assert.deepEqual(desc.layers.map((l) => [l.format, l.path]), [["raw", base]]);
    const committed = await Deno.readFile(base);
    assert.ok(
      committed.subarray(0, 4096).every((b) => b === 0xcc),
      "commit copied the overlay down",
    );
    assert.equal((await io(d, T_OUT, 16, 0xdd)).status, 0);
    assert.ok((await io(d, T_IN, 16)).data.every((b) => b === 0xdd));
    const after = await Deno.readFile(base);
    assert.ok(
      after.subarray(16 * 512, 16 * 512 + 4096).every((b) => b === 0xdd),
      "back on the raw file",
    );
    assert.deepEqual(host.guestErrors, []);
  } finally {
    await host.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("replacing a running drive's back end (PATCH /drives) changes its capacity and bumps ConfigGeneration", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-disk-" });
  await Deno.writeFile(`${dir}/a.raw`, new Uint8Array(1 << 20).fill(0x01));
  await Deno.writeFile(`${dir}/b.raw`, new Uint8Array(2 << 20).fill(0x02));
  using mem = HostMemory.create(MEM);
  const drive: DriveConfig = { id: "vda", backend: { kind: "file", path: `${dir}/a.raw` } };
  const host = await startBlk(mem, drive);
  const disk = new DiskHandle(host, drive);
  try {
    const d = new HostDriver(mem, host);
    d.negotiate(F);
    d.setupQueue(0, queueLayout(QUEUE_AT, 64));
    d.driverOk();
    assert.equal(d.config(0, 4), 2048);
    const gen = d.read(R.CONFIG_GENERATION);
    assert.ok((await io(d, T_IN, 0)).data.every((b) => b === 1));
    const desc = await disk.replace({ kind: "file", path: `${dir}/b.raw` });
    assert.equal(desc.size, 2 << 20);
    assert.equal(d.config(0, 4), 4096, "capacity in sectors");
    assert.notEqual(d.read(R.CONFIG_GENERATION), gen);
    assert.ok((d.read(R.INTERRUPT_STATUS) & 2) !== 0, "configuration-change interrupt");
    assert.ok((await io(d, T_IN, 0)).data.every((b) => b === 2), "reads come from the new file");
    assert.equal((await io(d, T_IN, 4000)).status, 0, "the larger range is readable");
    await assert.rejects(
      disk.replace({ kind: "file", path: `${dir}/missing.raw` }),
      /does not exist|No such file/,
    );
    assert.ok(
      (await io(d, T_IN, 0)).data.every((b) => b === 2),
      "a failed replace keeps the drive",
    );
  } finally {
    await host.close();
    await Deno.remove(dir, { recursive: true });
  }
});
