import assert from "node:assert/strict";
import {
  createDevices,
  defaultDeviceSpecs,
  DeviceBus,
  DeviceBusError,
  type DeviceEnv,
  DeviceSpecError,
  SharedMutex,
} from "../../vmm/devices/mod.ts";
import { COUNTER_PORT, CounterDevice } from "./devices_counter_device.ts";

const quietEnv: DeviceEnv = { setIrq() {}, requestStop() {} };

Deno.test("device bus routes port and MMIO accesses to the claiming device", () => {
  const stops: number[] = [];
  const env: DeviceEnv = { setIrq() {}, requestStop: (s) => stops.push(s) };
  const specs = defaultDeviceSpecs({ serialOut: "none", debugExitPort: 0xf4 });
  const counter = new CounterDevice(new SharedArrayBuffer(4));
  const bus = new DeviceBus([...createDevices(specs, env), counter], DeviceBus.createLock());
  assert.deepEqual(bus.devices.map((d) => d.name), [
    "com1",
    "i8042",
    "rtc",
    "debug-exit",
    "counter",
  ]);
  assert.equal(bus.pioWrite(0x3ff, 1, 0xa5), true);
  assert.equal(bus.pioRead(0x3ff, 1), 0xa5);
  assert.equal(bus.pioRead(0x64, 1), 0x10);
  assert.equal(bus.pioWrite(COUNTER_PORT + 3, 4, 0x1_0000_0003), true);
  assert.equal(bus.pioRead(COUNTER_PORT, 4), 3);
  assert.equal(bus.mmioRead(0xd000_0010, 4), 0x8000_0010);
  assert.equal(bus.mmioWrite(0xd000_0ffc, 4, 2), true);
  assert.equal(bus.pioRead(COUNTER_PORT, 2), 5);
  assert.equal(bus.pioWrite(0xf4, 1, 0x10), true);
  assert.deepEqual(stops, [0x21]);
  assert.equal(bus.device("rtc")?.name, "rtc");
  assert.equal(bus.device("nope"), undefined);
});

Deno.test("device bus reports unclaimed ports and addresses", () => {
  const bus = new DeviceBus(
    createDevices(defaultDeviceSpecs({ serialOut: "none" }), quietEnv),
    DeviceBus.createLock(),
  );
  assert.equal(bus.pioRead(0x80, 1), undefined);
  assert.equal(bus.pioWrite(0x80, 1, 0), false);
  assert.equal(bus.pioRead(0x2f8, 1), undefined);
  assert.equal(bus.pioRead(0x10000, 1), undefined);
  assert.equal(bus.pioRead(-1, 1), undefined);
  assert.equal(bus.mmioRead(0xfee0_0000, 4), undefined);
  assert.equal(bus.mmioWrite(0, 4, 0), false);
});

Deno.test("device bus rejects devices that claim the same port", () => {
  const a = new CounterDevice(new SharedArrayBuffer(4));
  const specs = defaultDeviceSpecs({ serialOut: "none", debugExitPort: COUNTER_PORT + 2 });
  assert.throws(
    () => new DeviceBus([a, ...createDevices(specs, quietEnv)], DeviceBus.createLock()),
    (err: unknown) =>
      err instanceof DeviceBusError && /port 0x512 is claimed by both/.test(err.message),
  );
});

Deno.test("device factory rejects an unknown kind and a wrong state size", () => {
  const state = new SharedArrayBuffer(4);
  assert.throws(
    () => createDevices([{ kind: "floppy", name: "fd0", config: {}, state }], quietEnv),
    (err: unknown) => err instanceof DeviceSpecError && /unknown kind 'floppy'/.test(err.message),
  );
  assert.throws(
    () => createDevices([{ kind: "serial16550", name: "com1", config: {}, state }], quietEnv),
    /state must be a SharedArrayBuffer/,
  );
  assert.throws(() => defaultDeviceSpecs({ debugExitPort: 0x10000 }), /outside 0..0xffff/);
});

Deno.test("device bus lock serialises writes from a Worker and the main thread", async () => {
  const count = 50_000;
  const lock = DeviceBus.createLock();
  const state = new SharedArrayBuffer(4);
  const ready = new SharedArrayBuffer(4);
  const bus = new DeviceBus([new CounterDevice(state)], lock);
  const worker = new Worker(new URL("./devices_bus_worker.ts", import.meta.url), {
    type: "module",
  });
  try {
    const done = new Promise<void>((resolve, reject) => {
      worker.onmessage = () => resolve();
      worker.onerror = (e) => reject(new Error(e.message));
    });
    worker.postMessage({ lock, state, ready, count });
    const flag = new Int32Array(ready);
    while (Atomics.load(flag, 0) !== 1) await new Promise((r) => setTimeout(r, 1));
    Atomics.store(flag, 0, 2);
    Atomics.notify(flag, 0);
    for (let i = 0; i < count; i++) bus.pioWrite(COUNTER_PORT, 1, 1);
    await done;
  } finally {
    worker.terminate();
  }
  assert.equal(new Uint32Array(state)[0], 2 * count);
});

Deno.test("shared mutex blocks a second holder until release", async () => {
  const buf = new SharedArrayBuffer(4);
  const m = new SharedMutex(buf);
  m.lock();
  assert.equal(m.tryLock(), false);
  m.unlock();
  assert.equal(m.tryLock(), true);
  m.unlock();
  assert.throws(() => new SharedMutex(buf, 2), /4-aligned/);
  await Promise.resolve();
});
