import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { MmioAllocator } from "../../vmm/devices/mmio_allocator.ts";
import { VirtioDeviceHost } from "../../vmm/devices/virtio/host.ts";
import { NetConfigError, netDevice, NetStat } from "../../vmm/devices/virtio/net_format.ts";
import { HostMemory } from "../../vmm/memory.ts";
import { sleep, waitFor } from "../netguard/helpers.ts";
import { R, S } from "./virtio_driver.ts";
import { BUFS, F, type NetRig, netRig, startDriver } from "./virtio_net_rig.ts";

const BASE = F.VERSION_1 | F.MAC | F.STATUS;
const HDR = 12;

async function ping(r: NetRig, count: number, size = 56): Promise<void> {
  await r.ns.exec(
    ["ping", "-c", String(count), "-i", "0.05", "-W", "1", "-s", String(size), "10.95.0.2"],
    true,
  );
}

/** Waits until the device sets DEVICE_NEEDS_RESET; returns the reason it gave. */
async function needsReset(r: NetRig): Promise<string> {
  assert.ok(
    await waitFor(() => (r.drv.read(R.STATUS) & S.NEEDS_RESET) !== 0, 3000),
    "DEVICE_NEEDS_RESET not set",
  );
  await waitFor(() => r.host.guestErrors.length > 0, 1000);
  return r.host.guestErrors.join("; ");
}

/** After a reset and a fresh setup the device receives again. */
async function stillWorks(r: NetRig): Promise<void> {
  startDriver(r, BASE);
  r.drv.use(0);
  for (let i = 0; i < 4; i++) r.drv.addChain([{ addr: BUFS + i * 2048, len: 2048, write: true }]);
  r.drv.kick(0);
  await ping(r, 1);
  const used = await r.drv.collect(1);
  assert.equal(used[0]?.len, HDR + 14 + 20 + 8 + 56);
}

Deno.test("hostile receive chains (device-readable, smaller than the header, in the MMIO gap, past RAM) set DEVICE_NEEDS_RESET and a reset brings the device back (root, netns)", async () => {
  const r = await netRig();
  try {
    const cases: { bufs: { addr: number; len: number; write: boolean }[]; why: RegExp }[] = [
      { bufs: [{ addr: BUFS, len: 2048, write: false }], why: /device-readable/ },
      { bufs: [{ addr: BUFS, len: 8, write: true }], why: /cannot hold the 12-byte header/ },
      { bufs: [{ addr: 0xd000_0000, len: 2048, write: true }], why: /not inside guest RAM/ },
      { bufs: [{ addr: (32 << 20) - 100, len: 2048, write: true }], why: /not inside guest RAM/ },
      { bufs: [{ addr: BUFS, len: 0xffff_ffff, write: true }], why: /not inside guest RAM/ },
    ];
    for (const c of cases) {
      startDriver(r, BASE);
      r.drv.use(0);
      r.drv.addChain(c.bufs);
      r.drv.kick(0);
      const why = await needsReset(r);
      assert.match(why, c.why);
      r.host.guestErrors.length = 0;
      await stillWorks(r);
    }
    assert.equal(r.stats.get(NetStat.RX_FRAMES), cases.length, "only the good frames");
  } finally {
    await r.close();
  }
});

Deno.test("a descriptor loop or a chain longer than the queue in the transmit queue sets DEVICE_NEEDS_RESET, not a hang (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE, 16);
    r.drv.use(1);
    r.drv.writeDesc(0, BUFS, 64, 1, 0); // NEXT to itself
    r.drv.publish(0);
    r.drv.kick(1);
    assert.match(await needsReset(r), /longer than the queue|loop/);
    r.host.guestErrors.length = 0;
    await stillWorks(r);
  } finally {
    await r.close();
  }
});

Deno.test("a notify before DRIVER_OK takes nothing; the chains go out once the driver is ready (root, netns)", async () => {
  const r = await netRig();
  try {
    r.drv.negotiate(BASE);
    const frame = new Uint8Array(HDR + 60).fill(0xff, HDR, HDR + 6);
    r.mem.write(BUFS, frame);
    r.drv.setupQueue(1, { desc: 0x20000, avail: 0x21000, used: 0x22000, size: 16 });
    r.drv.addChain([{ addr: BUFS, len: frame.length, write: false }]);
    r.drv.kick(1);
    await sleep(100);
    assert.equal(r.drv.usedIdx(), 0);
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 0);
    r.drv.driverOk();
    await r.drv.collect(1);
    assert.equal(r.stats.get(NetStat.TX_FRAMES), 1);
  } finally {
    await r.close();
  }
});

Deno.test("a transmit chain longer than a 64 KiB GSO frame is dropped and counted (root, netns)", async () => {
  const r = await netRig();
  try {
    startDriver(r, BASE);
    r.drv.use(1);
    r.drv.addChain([{ addr: BUFS, len: HDR + 65550 + 1, write: false }]);
    r.drv.kick(1);
    await r.drv.collect(1);
    assert.equal(r.stats.get(NetStat.TX_BAD), 1);
    assert.equal(r.drv.read(R.STATUS) & S.NEEDS_RESET, 0);
  } finally {
    await r.close();
  }
});

Deno.test("a network interface with a bad MAC or TAP name is refused before anything starts; a TAP that cannot be opened names it", async () => {
  assert.throws(
    () => netDevice({ id: "eth0", tap: "t0", mac: "01:00:5e:00:00:01" }),
    (e: Error) => e instanceof NetConfigError && /multicast/.test(e.message),
  );
  assert.throws(() => netDevice({ id: "eth0", tap: "t0", mac: "02:00:00" }), NetConfigError);
  assert.throws(() => netDevice({ id: "eth0", tap: "a/b" }), NetConfigError);
  assert.throws(() => netDevice({ id: "bad id", tap: "t0" }), NetConfigError);
  await loadShim();
  using mem = HostMemory.create(16 << 20);
  const dev = netDevice({ id: "eth0", tap: "h8none0", netns: `h8-no-such-ns-${Deno.pid}` });
  await assert.rejects(
    () => VirtioDeviceHost.start(dev.device, mem.regions, new MmioAllocator().allocate("eth0")),
    /eth0.*tap h8none0: open failed: No such file/,
  );
});
