import assert from "node:assert/strict";
import { KVM_MP_STATE_RUNNABLE } from "../../native/kvm.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine, mergeSregs } from "../../vmm/machine.ts";
import { realModeCounter, realModeLoader, realModeSregs } from "./machine_guest.ts";
import { probeSpec } from "./machine_probe_devices.ts";

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
const AP_CODE = 0x1100;

function readU32(m: Machine, addr: number): number {
  const v = m.memory.view(addr, 4);
  return new DataView(v.buffer, v.byteOffset, 4).getUint32(0, true);
}

Deno.test("two vCPUs on /dev/kvm run guest code at the same time, each on its own thread, and pause together", async () => {
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 2,
    kernel: new Uint8Array(0),
    devices: [...defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }), probeSpec()],
    deviceModule: new URL("./machine_probe_devices.ts", import.meta.url).href,
    loader: realModeLoader(realModeCounter(0x2000)),
  });
  const ap = m.vcpus[1];
  assert.ok(ap !== undefined);
  // APs wait for INIT-SIPI; this test makes vCPU 1 runnable directly instead.
  m.memory.write(AP_CODE, realModeCounter(0x2004));
  const mp = new Uint8Array(4);
  new DataView(mp.buffer).setUint32(0, KVM_MP_STATE_RUNNABLE, true);
  ap.setMpState(mp);
  ap.setSregs(mergeSregs(ap.getSregs(), realModeSregs()));
  ap.setRegs({ ...ap.getRegs(), rip: BigInt(AP_CODE), rflags: 2n });

  await m.start();
  const threads = m.threadIds();
  assert.equal(threads.length, 2);
  assert.ok(threads.every((t) => t !== 0n), "every vCPU thread registered");
  assert.notEqual(threads[0], threads[1], "vCPUs run on distinct threads");

  const a0 = readU32(m, 0x2000);
  const b0 = readU32(m, 0x2004);
  const both = await eventually(() => readU32(m, 0x2000) > a0 && readU32(m, 0x2004) > b0);
  assert.ok(
    both,
    `both counters advance (${a0}, ${b0} -> ${readU32(m, 0x2000)}, ${readU32(m, 0x2004)})`,
  );

  const t0 = performance.now();
  await m.pause();
  const ms = performance.now() - t0;
  assert.ok(ms < 50, `pausing 2 vCPUs took ${ms.toFixed(1)} ms`);
  const a2 = readU32(m, 0x2000);
  const b2 = readU32(m, 0x2004);
  await sleep(50);
  assert.equal(readU32(m, 0x2000), a2);
  assert.equal(readU32(m, 0x2004), b2);
  await m.resume();
  await m.stop();
  assert.deepEqual(await m.wait(), { status: 0, reason: "stopped" });
});
