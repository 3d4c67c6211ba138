import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { GuestMemoryError, MMIO_GAP_END, MMIO_GAP_START } from "../../vmm/guest_memory.ts";
import { Machine } from "../../vmm/machine.ts";
import { HostMemory, MemoryError } from "../../vmm/memory.ts";
import { longModeLoader, longModeReader, TABLE_ADDR } from "./machine_guest.ts";
import { PROBE_PORT, PROBE_STOP_PORT, probeSpec, probeValues } from "./machine_probe_devices.ts";

await loadShim();

const GiB = 1024 * 1024 * 1024;
const MiB = 1024 * 1024;

function rssBytes(): number {
  const m = Deno.readTextFileSync("/proc/self/status").match(/VmRSS:\s+(\d+) kB/);
  assert.ok(m !== null && m[1] !== undefined, "VmRSS in /proc/self/status");
  return Number(m[1]) * 1024;
}

Deno.test("a 16 GiB memory table has RAM at 0..3 GiB and 4..17 GiB around the MMIO gap and stays sparse", () => {
  const before = rssBytes();
  using mem = HostMemory.create(16 * GiB);
  assert.equal(mem.size, 16 * GiB);
  assert.deepEqual(
    mem.regions.map((r) => [r.guestAddr, r.size, r.slot]),
    [[0, MMIO_GAP_START, 0], [MMIO_GAP_END, 13 * GiB, 1]],
  );
  assert.equal(MMIO_GAP_END + 13 * GiB, 17 * GiB);
  for (const r of mem.regions) assert.ok(r.hostAddr > 0n && r.fd === -1);
  // Touch one page in every GiB: 17 pages, not GiBs.
  for (let g = 0; g < 17; g++) {
    if (g * GiB >= MMIO_GAP_START && g * GiB < MMIO_GAP_END) continue;
    mem.write(g * GiB + 12345, new Uint8Array([g + 1]));
  }
  for (let g = 0; g < 17; g++) {
    if (g * GiB >= MMIO_GAP_START && g * GiB < MMIO_GAP_END) continue;
    assert.equal(mem.read(g * GiB + 12345, 1)[0], g + 1);
  }
  const grew = rssBytes() - before;
  assert.ok(grew < 64 * MiB, `RSS grew by ${(grew / MiB).toFixed(1)} MiB`);
});

Deno.test("guest memory rejects ranges in the MMIO gap, past the end or straddling regions", () => {
  using mem = HostMemory.create(4 * GiB);
  assert.throws(() => mem.view(MMIO_GAP_START, 1), GuestMemoryError);
  assert.throws(() => mem.view(MMIO_GAP_START - 2, 4), GuestMemoryError);
  assert.throws(() => mem.view(5 * GiB, 1), GuestMemoryError);
  assert.throws(() => mem.view(-1, 1), GuestMemoryError);
  assert.throws(() => mem.view(0, Number.MAX_SAFE_INTEGER), GuestMemoryError);
  assert.equal(mem.view(MMIO_GAP_END + GiB - 4, 4).length, 4);
  assert.throws(() => HostMemory.create(4095), MemoryError);
  assert.throws(() => HostMemory.create(65 * GiB), /64 GiB maximum/);
});

Deno.test("memfd-backed guest memory maps every region and reads back what was written", () => {
  using mem = HostMemory.create(64 * MiB, { backing: "memfd" });
  assert.ok(mem.regions.every((r) => r.fd >= 0));
  mem.write(0x100000, new Uint8Array([1, 2, 3]));
  assert.deepEqual(Array.from(mem.read(0x100000, 3)), [1, 2, 3]);
  mem.discard(0x100000, 4096);
  assert.deepEqual(Array.from(mem.read(0x100000, 3)), [0, 0, 0]);
});

Deno.test("writes through view() reach a 64-bit guest on /dev/kvm below and above the MMIO gap of 16 GiB RAM, and unclaimed MMIO reads all-ones", async () => {
  const probe = probeSpec();
  const before = rssBytes();
  await using m = await Machine.create({
    memMiB: 16 * 1024,
    vcpus: 1,
    kernel: new Uint8Array(0),
    devices: [...defaultDeviceSpecs({ serialOut: "none", memMiB: 16 * 1024 }), probe],
    deviceModule: new URL("./machine_probe_devices.ts", import.meta.url).href,
    loader: longModeLoader(longModeReader(PROBE_PORT, PROBE_STOP_PORT)),
  });
  const addrs = [
    0x2000,
    MMIO_GAP_START - 4096,
    MMIO_GAP_END,
    MMIO_GAP_END + 7 * GiB + 3,
    17 * GiB - 1,
  ];
  const table = m.memory.view(TABLE_ADDR, 8 * (addrs.length + 2));
  const dv = new DataView(table.buffer, table.byteOffset, table.length);
  addrs.forEach((a, i) => {
    dv.setBigUint64(i * 8, BigInt(a), true);
    m.memory.view(a, 1)[0] = 0x40 + i;
  });
  // Last, a read from the MMIO gap that no device claims: an MMIO exit answered with all-ones.
  dv.setBigUint64(addrs.length * 8, BigInt(MMIO_GAP_START + 0x1000_0000), true);
  dv.setBigUint64((addrs.length + 1) * 8, 0n, true);
  await m.start();
  assert.deepEqual(await m.wait(), { status: 0, reason: "probe stop 0" });
  assert.deepEqual(probeValues(probe), [...addrs.map((_, i) => 0x40 + i), 0xff]);
  const grew = rssBytes() - before;
  assert.ok(grew < 100 * MiB, `RSS grew by ${(grew / MiB).toFixed(1)} MiB for a 16 GiB guest`);
});
