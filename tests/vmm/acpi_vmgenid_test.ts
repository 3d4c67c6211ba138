/**
 * The VM generation id end to end: a guest reads the id's address from the
 * DSDT's `VGEN.ADDR` and the notification GSI from the GED's `_CRS` (as a
 * driver would), sleeps, and re-reads the id at each interrupt; the host
 * changes the id with `changeVmGenId` as a restore does.
 */
import assert from "node:assert/strict";
import { changeVmGenId, newVmGenId, readVmGenId, VMGENID_ADDR } from "../../vmm/acpi/mod.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { FIRST_DEVICE_GSI } from "../../vmm/devices/mmio_allocator.ts";
import { Machine } from "../../vmm/machine.ts";
import { guest } from "./boot_fake_memory.ts";

const hex = (b: Uint8Array): string =>
  Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

async function waitFor(path: string, re: RegExp, ms = 20_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const text = await Deno.readTextFile(path);
    if (re.test(text)) return text;
    if (Date.now() > deadline) throw new Error(`no ${re} within ${ms} ms in:\n${text}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// The 64-bit guest only: this host's instruction emulator cannot execute a protected-mode
// IRET, so the 32-bit PVH guest cannot return from an interrupt (see tests/guests/virtio_blk.c).
for (const name of ["guest-vmlinux.elf"]) {
  Deno.test(`a ${name} guest finds vmgenid through the DSDT and sees each new id at the GED's interrupt (needs /dev/kvm)`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "vmkit-vmgenid-" });
    const serial = `${dir}/serial.log`;
    await Deno.writeTextFile(serial, "");
    try {
      await using m = await Machine.create({
        memMiB: 32,
        vcpus: 1,
        kernel: await guest(name),
        cmdline: "mode=vmgenid",
        devices: defaultDeviceSpecs({ serialOut: { path: serial }, serialIn: false, memMiB: 32 }),
      });
      const loc = m.acpi?.vmgenid;
      assert.ok(loc, "the machine has a vmgenid page");
      assert.equal(loc.gsi, FIRST_DEVICE_GSI, "the first free device line (no virtio devices)");
      const first = hex(readVmGenId(m.memory, loc));
      await m.start();
      await waitFor(serial, /^vmgenid ready$/m);
      const text = await Deno.readTextFile(serial);
      assert.match(
        text,
        new RegExp(`^vmgenid addr 0x${VMGENID_ADDR.toString(16)} gsi ${loc.gsi} id ${first}$`, "m"),
      );
      for (const n of [1, 2]) {
        const id = newVmGenId();
        changeVmGenId(m.memory, loc, id, (gsi, level) => m.vm.irqLine(gsi, level));
        await waitFor(serial, new RegExp(`^vmgenid notified ${n} id ${hex(id)}$`, "m"));
      }
      const exit = await m.wait();
      assert.equal(exit.status, 0, exit.reason);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
