import assert from "node:assert/strict";
import { checkpointerFor, restoreMachine } from "../../vmm/checkpoint.ts";
import { defaultMac, formatMac } from "../../vmm/devices/virtio/net_format.ts";
import { Netns } from "../netguard/helpers.ts";
import { sleep } from "./helpers.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { buildGuests } from "../guests/build.ts";

/** The MAC the guest reads from NIC `name`'s virtio-net config space (MMIO offset 0x100). */
function configMac(m: Machine, name: string): string {
  const slot = m.mmioDevices.find((s) => s.name === name);
  const dev = m.device(name);
  assert.ok(slot !== undefined && dev !== undefined, `no NIC ${name}`);
  const bytes = [0, 1, 2, 3, 4, 5].map((i) => dev.read(slot.base + 0x100 + i, 1) & 0xff);
  return formatMac(bytes);
}

Deno.test("a clone restored with a VM id gets its own MAC and the TAP it is given, the recorded TAP otherwise (needs root and /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-clone-net-" });
  const ns = await Netns.create("cn");
  const tap = (i: number) => `h3c${Deno.pid % 10000}t${i}`;
  try {
    for (let i = 0; i < 3; i++) await ns.ip(`tuntap add dev ${tap(i)} mode tap vnet_hdr`);
    const path = `${dir}/vm.ckpt`;
    const mac = "02:00:00:00:42:01";
    {
      await using m = await Machine.create({
        memMiB: 32,
        vcpus: 1,
        kernel: await Deno.readFile(`${await buildGuests()}guest-pvh.elf`),
        cmdline: "mode=seq:64",
        devices: defaultDeviceSpecs({ memMiB: 32, serialOut: "none" }),
        nets: [{ id: "eth0", tap: tap(0), netns: ns.name, mac }],
      });
      await m.start();
      await sleep(200);
      assert.equal(configMac(m, "eth0"), mac);
      await (await (await checkpointerFor(m)).checkpoint({ path })).done;
    }
    {
      await using same = await restoreMachine(path);
      assert.equal(same.machine.config.nets?.[0]?.tap, tap(0), "the recorded TAP");
      assert.equal(configMac(same.machine, "eth0"), mac);
    }
    {
      await using clone = await restoreMachine(path, {
        vmId: "clone-7",
        nets: { eth0: { tap: tap(1) } },
      });
      assert.equal(clone.machine.config.nets?.[0]?.tap, tap(1));
      const own = formatMac(defaultMac("clone-7", "eth0"));
      assert.notEqual(own, mac);
      assert.equal(configMac(clone.machine, "eth0"), own, "the clone's NIC shows its own MAC");
      await clone.machine.start();
      await sleep(100);
      assert.equal(clone.machine.state, "Running");
    }
  } finally {
    await ns.delete();
    await Deno.remove(dir, { recursive: true });
  }
});
