/**
 * The suite's guest virtio-blk driver (tests/guests/virtio_blk.c) against a
 * device nobody on the team wrote: QEMU's virtio-blk-device on a microvm (TCG,
 * modern virtio-mmio). It must print what it prints over vmkit's device
 * (virtio_blk_guest_test.ts asserts the same lines): if this passes and a
 * vmkit test fails, the bug is in vmkit's device, not in the guest.
 *
 * @module
 */

import assert from "node:assert/strict";
import { guest } from "./run_helpers.ts";

/**
 * microvm with ioapic2=off has eight virtio-mmio transports from 0xfeb00000, 512 bytes apart, GSIs
 * 5..12; QEMU plugs the first device into the last one. This driver takes the first
 * `virtio_mmio.device=` it is given, so it is given that one.
 */
const TRANSPORT = "virtio_mmio.device=512@0xfeb00e00:12";

const SECTOR0 = "hello from the host disk";

/** Kills `child` unless it has exited already. */
function kill(child: Deno.ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch (err) {
    if (!(err instanceof TypeError)) throw err; // it exited already
  }
}

function line(out: string, prefix: string): string {
  const l = out.split("\n").find((x) => x.startsWith(prefix));
  assert.ok(l !== undefined, `no '${prefix}' line in:\n${out}`);
  return l.slice(prefix.length).trimEnd();
}

Deno.test("the guest blk driver reads, writes, flushes and keeps 8 requests in flight through QEMU's virtio-blk as through vmkit's (qemu)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blkq-" });
  const path = `${dir}/disk.raw`;
  const data = new Uint8Array(1 << 20);
  data.set(new TextEncoder().encode(SECTOR0));
  await Deno.writeFile(path, data);
  const child = new Deno.Command("qemu-system-x86_64", {
    args: [
      ...["-M", "microvm,ioapic2=off,x-option-roms=off,rtc=off", "-accel", "tcg", "-m", "32"],
      ...["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"],
      ...["-global", "virtio-mmio.force-legacy=false"],
      ...["-kernel", guest("guest-pvh.elf")],
      ...["-append", `mode=blk ${TRANSPORT}`],
      ...["-drive", `file=${path},format=raw,if=none,id=d0,cache=writeback`],
      ...["-device", "virtio-blk-device,drive=d0,serial=disk-serial-7"],
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  let out = "";
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  try {
    while (!out.includes("blk done") && !out.includes("blk error")) {
      const { value, done } = await reader.read();
      if (done) break;
      out += value;
    }
  } finally {
    clearTimeout(timer);
    kill(child);
    await reader.cancel();
    await child.status;
  }
  try {
    assert.match(out, /blk found base=0xfeb00e00 irq=12 id=2/, out);
    assert.equal(line(out, "blk capacity "), String((1 << 20) / 512));
    assert.equal(line(out, "blk serial ").replace(/\0+$/, ""), "disk-serial-7");
    assert.equal(line(out, "blk sector0 "), SECTOR0);
    assert.equal(line(out, "blk write status "), "0");
    assert.equal(line(out, "blk flush status "), "0");
    assert.equal(line(out, "blk readback "), "ok");
    assert.equal(line(out, "blk inflight ok "), "8");
    const disk = await Deno.readFile(path);
    for (let i = 0; i < 512; i++) assert.equal(disk[512 + i], (i * 7 + 3) & 0xff, `byte ${i}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
