/**
 * The VMM a crash test kills: boots the blk.seq guest (RAM and disk being
 * written), takes a complete checkpoint A at PATH, then starts checkpoint B
 * at the same PATH and keeps running while B is written; prints one JSON
 * line per step on stdout. Usage: crash_child.ts DIR POLICY.
 *
 * @module
 */
import { checkpointerFor } from "../../vmm/checkpoint.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { createImage } from "../../cow/mod.ts";
import type { DiskPolicy } from "../../checkpoint/mod.ts";
import { buildGuests } from "../guests/build.ts";

const [dir = "", policy = "keep-parent"] = Deno.args;
const disk = `${dir}/disk.qcow2`;
createImage(disk, { size: 1 << 20, format: "qcow2" }).closeSync();
const serial = `${dir}/serial.log`;
await Deno.writeTextFile(serial, "");
const m = await Machine.create({
  memMiB: 64,
  vcpus: 1,
  kernel: await Deno.readFile(`${await buildGuests()}guest-pvh.elf`),
  cmdline: "mode=blk blk.seq",
  devices: defaultDeviceSpecs({ memMiB: 64, serialOut: { path: serial }, serialIn: false }),
  drives: [{ id: "vda", backend: { kind: "file", path: disk, format: "qcow2" } }],
});
await m.start();
while (!(await Deno.readTextFile(serial)).includes("blk seq")) {
  await new Promise((r) => setTimeout(r, 20));
}
// Touch more RAM so the save takes a while.
m.memory.write(24 << 20, new Uint8Array(32 << 20).fill(0x5a));
const say = (o: unknown): void => console.log(JSON.stringify(o));
const cp = await checkpointerFor(m);
const path = `${dir}/vm.ckpt`;
const a = await (await cp.checkpoint({ path, diskPolicy: policy as DiskPolicy })).done;
say({ a: a.id, saveMs: a.saveMs });
await new Promise((r) => setTimeout(r, 100));
const b = await cp.checkpoint({ path, diskPolicy: policy as DiskPolicy });
say({ b: "started", id: b.id, pauseUs: b.pauseUs });
const done = await b.done;
say({ b: done.id });
await new Promise((r) => setTimeout(r, 60_000));
