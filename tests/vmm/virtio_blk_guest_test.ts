import assert from "node:assert/strict";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import type { DriveConfig } from "../../vmm/io_config.ts";
import { buildGuests } from "../guests/build.ts";

const GUESTS = await buildGuests();
const SECTOR0 = "hello from the host disk";

/** Boots `guest` with `mode=blk` over `drives`; returns the serial output and the exit. */
export async function bootBlkGuest(
  guest: string,
  drives: DriveConfig[],
  extra: Partial<Parameters<typeof Machine.create>[0]> = {},
): Promise<{ out: string; status: number; reason: string }> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-guest-" });
  const serial = `${dir}/serial.txt`;
  try {
    await using m = await Machine.create({
      memMiB: 64,
      vcpus: 1,
      kernel: await Deno.readFile(`${GUESTS}${guest}`),
      cmdline: "mode=blk",
      devices: defaultDeviceSpecs({ memMiB: 64, serialOut: { path: serial }, serialIn: false }),
      drives,
      ...extra,
    });
    await m.start();
    const timer = setTimeout(() => void m.stop(), 60_000);
    const exit = await m.wait();
    clearTimeout(timer);
    return { out: await Deno.readTextFile(serial), ...exit };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function rawDisk(dir: string, bytes = 1 << 20): Promise<string> {
  const path = `${dir}/disk.raw`;
  const data = new Uint8Array(bytes);
  data.set(new TextEncoder().encode(SECTOR0));
  await Deno.writeFile(path, data);
  return path;
}

function line(out: string, prefix: string): string {
  const l = out.split("\n").find((x) => x.startsWith(prefix));
  assert.ok(l !== undefined, `no '${prefix}' line in:\n${out}`);
  return l.slice(prefix.length);
}

for (const guest of ["guest-pvh.elf", "guest-vmlinux.elf"]) {
  const completion = guest === "guest-vmlinux.elf" ? "interrupts" : "polled InterruptStatus";
  Deno.test(`a ${guest} guest's own virtio-blk driver finds the disk on the command line, reads, writes, flushes and sees completions by ${completion} (needs /dev/kvm)`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-g-" });
    try {
      const path = await rawDisk(dir);
      const r = await bootBlkGuest(guest, [{
        id: "vda",
        backend: { kind: "file", path },
        serial: "disk-serial-7",
      }]);
      assert.equal(r.status, 0, `${r.reason}\n${r.out}`);
      assert.match(r.out, /blk found base=0xd0000000 irq=5 id=2/);
      assert.equal(line(r.out, "blk capacity "), String((1 << 20) / 512));
      assert.equal(line(r.out, "blk serial ").replace(/\0+$/, ""), "disk-serial-7");
      assert.equal(line(r.out, "blk sector0 "), SECTOR0);
      assert.equal(line(r.out, "blk write status "), "0");
      assert.equal(line(r.out, "blk flush status "), "0");
      assert.equal(line(r.out, "blk readback "), "ok");
      assert.equal(line(r.out, "blk inflight ok "), "8");
      assert.ok(Number(line(r.out, "blk irqs ")) >= 4, `completions signalled by ${completion}`);
      const file = await Deno.readFile(path);
      assert.equal(file[512 + 1], (1 * 7 + 3) & 0xff, "the guest's write reached the file");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
