import assert from "node:assert/strict";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine, type MachineConfig } from "../../vmm/machine.ts";
import {
  longModeSregs,
  REAL_MODE_COUNTER,
  realModeLoader,
  startRegs,
  writePageTables,
} from "./machine_guest.ts";
import { PROBE_STOP_PORT, probeSpec } from "./machine_probe_devices.ts";
import type { BootPlan } from "../../vmm/boot/types.ts";
import type { GuestMemory } from "../../vmm/guest_memory.ts";

const DEVICE_MODULE = new URL("./machine_probe_devices.ts", import.meta.url).href;
const COUNTER_ADDR = 0x2000;

function config(loader: MachineConfig["loader"], vcpus = 1): MachineConfig {
  return {
    memMiB: 16,
    vcpus,
    kernel: new Uint8Array(0),
    devices: [...defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }), probeSpec()],
    deviceModule: DEVICE_MODULE,
    ...(loader === undefined ? {} : { loader }),
  };
}

function counter(m: Machine): number {
  const v = m.memory.view(COUNTER_ADDR, 4);
  return new DataView(v.buffer, v.byteOffset, 4).getUint32(0, true);
}

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

Deno.test("a spinning guest on /dev/kvm pauses within 50 ms, runs no instruction while paused, resumes and stops", async () => {
  await using m = await Machine.create(config(realModeLoader(REAL_MODE_COUNTER)));
  assert.equal(m.state, "Created");
  await m.start();
  assert.equal(m.state, "Running");
  assert.ok(await eventually(() => counter(m) > 1000), "the guest loop runs");
  const t0 = performance.now();
  await m.pause();
  const pauseMs = performance.now() - t0;
  assert.ok(pauseMs < 50, `pause took ${pauseMs.toFixed(1)} ms`);
  assert.equal(m.state, "Paused");
  const vcpu = m.vcpus[0];
  assert.ok(vcpu !== undefined);
  const rip1 = vcpu.getRegs().rip;
  const c1 = counter(m);
  await sleep(100);
  assert.equal(vcpu.getRegs().rip, rip1, "rip unchanged while paused");
  assert.equal(counter(m), c1, "guest memory unchanged while paused");
  assert.ok(rip1 >= 0x1000n && rip1 < 0x1007n, `rip 0x${rip1.toString(16)} inside the loop`);
  await m.resume();
  assert.equal(m.state, "Running");
  assert.ok(await eventually(() => counter(m) > c1), "the guest runs again after resume");
  await m.stop();
  assert.equal(m.state, "Stopped");
  assert.deepEqual(await m.wait(), { status: 0, reason: "stopped" });
});

Deno.test("pause and resume repeated quickly on /dev/kvm always leave the machine consistent", async () => {
  await using m = await Machine.create(config(realModeLoader(REAL_MODE_COUNTER)));
  await m.start();
  for (let i = 0; i < 20; i++) {
    await m.pause();
    const c = counter(m);
    await sleep(2);
    assert.equal(counter(m), c, `round ${i}: paused guest moved`);
    await m.resume();
  }
  const pausing = m.pause();
  const resuming = m.resume(); // waits for the pause in progress, then resumes
  await Promise.all([pausing, resuming]);
  assert.equal(m.state, "Running");
  await m.stop();
  assert.equal((await m.wait()).reason, "stopped");
});

Deno.test("a device stop request on /dev/kvm ends the run with the device's status and reason", async () => {
  const code = new Uint8Array([
    0xba,
    PROBE_STOP_PORT & 0xff,
    PROBE_STOP_PORT >> 8, // mov dx, stop port
    0xb0,
    0x07, // mov al, 7
    0xee, // out dx, al
    0xeb,
    0xfe, // jmp $
  ]); // deno-fmt-ignore
  await using m = await Machine.create(config(realModeLoader(code)));
  await m.start();
  assert.deepEqual(await m.wait(), { status: 7, reason: "probe stop 7" });
  assert.equal(m.state, "Stopped");
});

/** A 64-bit guest running `code` with an empty IDT, so any exception escalates. */
function faultingLoader(code: number[]) {
  return (memory: GuestMemory): BootPlan => {
    writePageTables(memory);
    memory.write(0x1000, new Uint8Array(code));
    return {
      protocol: "linux64",
      regs: startRegs(),
      sregs: { ...longModeSregs(), idt: { base: 0n, limit: 0 } },
      kernel: { start: 0x1000, end: 0x1000 + code.length },
    };
  };
}

Deno.test("a guest triple fault on /dev/kvm ends the run with a non-zero status", async () => {
  await using m = await Machine.create(config(faultingLoader([0x0f, 0x0b]))); // ud2
  await m.start();
  const exit = await m.wait();
  assert.notEqual(exit.status, 0);
  assert.equal(exit.reason, "guest shutdown (triple fault)");
});

Deno.test("a KVM internal error on /dev/kvm ends the run naming the suberror and rip", async () => {
  await using m = await Machine.create(config(faultingLoader([0xcc]))); // int3, no IDT
  await m.start();
  const exit = await m.wait();
  assert.notEqual(exit.status, 0);
  assert.match(exit.reason, /internal error, suberror \d+ at rip 0x1000/);
});

Deno.test("a machine stopped before start on /dev/kvm reports stopped and rejects start", async () => {
  await using m = await Machine.create(config(realModeLoader(REAL_MODE_COUNTER)));
  await m.stop();
  assert.equal(m.state, "Stopped");
  assert.deepEqual(await m.wait(), { status: 0, reason: "stopped" });
  await assert.rejects(() => m.start(), /start\(\) needs a Created machine/);
});

Deno.test("saveDevices on /dev/kvm returns every device's state by name while paused and refuses while running", async () => {
  await using m = await Machine.create(config(realModeLoader(REAL_MODE_COUNTER)));
  await m.start();
  assert.throws(() => m.saveDevices(), /pause\(\) first/);
  await m.pause();
  const states = m.saveDevices();
  assert.deepEqual(Object.keys(states).sort(), ["com1", "i8042", "probe", "rtc"]);
  for (const [name, bytes] of Object.entries(states)) {
    assert.ok(bytes.length > 0, `${name} saved bytes`);
  }
  assert.equal(m.device("com1")?.name, "com1");
  assert.equal(m.device("nope"), undefined);
});

Deno.test("bad machine configurations are rejected with a clear error", async () => {
  await assert.rejects(() => Machine.create({ ...config(undefined), vcpus: 0 }), /vcpus 0/);
  await assert.rejects(() => Machine.create({ ...config(undefined), memMiB: 1 << 20 }), /memMiB/);
});
