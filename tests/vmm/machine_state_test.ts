import assert from "node:assert/strict";
import { Machine } from "../../vmm/machine.ts";
import {
  COUNTER_ADDR,
  counterMachineConfig,
  readCounter,
  realModeLoader,
} from "./machine_guest.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 5 ms for up to `ms`; returns whether it became true. */
async function eventually(cond: () => boolean, ms = 3000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await sleep(5);
  }
  return true;
}
const PAGE = 4096;

const config = counterMachineConfig;
const counter = readCounter;

function dirty(bitmap: Uint8Array, page: number): boolean {
  return (((bitmap[page >> 3] ?? 0) >> (page & 7)) & 1) === 1;
}

Deno.test("KVM's dirty log on /dev/kvm reports exactly the pages a running guest wrote since the last read", async () => {
  await using m = await Machine.create(config());
  const slot = m.memory.regions[0];
  assert.ok(slot !== undefined);
  m.memory.setDirtyLogging(m.vm, true);
  await m.start();
  assert.ok(await eventually(() => counter(m) > 0), "the guest runs");
  await m.pause();
  const first = m.vm.getDirtyLog(slot.slot);
  assert.ok(dirty(first, COUNTER_ADDR / PAGE), "the counter page is dirty");
  assert.ok(!dirty(first, 0x1000 / PAGE), "the code page was only read");
  assert.ok(!dirty(first, 0x80_0000 / PAGE), "an untouched page is clean");
  const again = m.vm.getDirtyLog(slot.slot);
  assert.ok(again.every((b) => b === 0), "reading the log cleared it while paused");
  const before = counter(m);
  await m.resume();
  assert.ok(await eventually(() => counter(m) > before), "the guest runs again");
  await m.pause();
  assert.ok(dirty(m.vm.getDirtyLog(slot.slot), COUNTER_ADDR / PAGE));
  m.memory.setDirtyLogging(m.vm, false);
  assert.throws(() => m.vm.getDirtyLog(99), /slot 99 is not registered/);
});

Deno.test("a paused guest's vCPU, irqchip, PIT, clock and device state move to a second machine on /dev/kvm that carries on", async () => {
  await using a = await Machine.create(config());
  await a.start();
  assert.ok(await eventually(() => counter(a) > 0), "machine A runs");
  await a.pause();
  const cpu = a.saveCpuState();
  const devices = a.saveDevices();
  const ram = a.memory.read(0, 0x10000);
  const saved = counter(a);
  assert.ok(saved > 0);
  await a.stop();

  await using b = await Machine.create({
    ...config(),
    loader: realModeLoader(new Uint8Array([0xf4])),
  });
  const vcpuB = b.vcpus[0];
  assert.ok(vcpuB !== undefined);
  b.memory.write(0, ram);
  b.restoreCpuState(cpu);
  b.restoreDevices(devices);
  const saved0 = cpu.vcpus[0];
  assert.ok(saved0 !== undefined);
  assert.deepEqual(vcpuB.getRegs(), saved0.regs);
  assert.deepEqual(vcpuB.getSregs(), saved0.sregs);
  assert.deepEqual(vcpuB.getLapic(), saved0.lapic);
  assert.deepEqual(b.saveDevices(), devices);
  assert.equal(counter(b), saved);
  await b.start();
  await eventually(() => counter(b) > saved);
  await b.pause();
  assert.ok(counter(b) > saved, `machine B continued the count (${saved} -> ${counter(b)})`);
  const rip = vcpuB.getRegs().rip;
  assert.ok(rip >= 0x1000n && rip < 0x1007n, `B runs A's loop (rip 0x${rip.toString(16)})`);
});

Deno.test("restoring CPU state of another vCPU count or while running is refused with a clear error", async () => {
  await using a = await Machine.create(config());
  await using b = await Machine.create({ ...config(), vcpus: 2 });
  const cpu = a.saveCpuState();
  assert.throws(() => b.restoreCpuState(cpu), /saved state has 1 vCPUs, this machine 2/);
  await a.start();
  assert.throws(() => a.saveCpuState(), /call pause\(\) first/);
  assert.throws(() => a.restoreDevices({}), /call pause\(\) first/);
  await a.pause();
  assert.throws(() => a.restoreDevices({}), /no saved state for device 'com1'/);
});
