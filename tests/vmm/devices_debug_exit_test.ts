import assert from "node:assert/strict";
import {
  createDevices,
  DebugExit,
  debugExitSpec,
  defaultDeviceSpecs,
  type DeviceEnv,
} from "../../vmm/devices/mod.ts";

function rig(port: number, size = 1): { dev: DebugExit; stops: Array<[number, string]> } {
  const stops: Array<[number, string]> = [];
  const env: DeviceEnv = { setIrq() {}, requestStop: (s, r) => stops.push([s, r]) };
  return { dev: new DebugExit(debugExitSpec(port, size), env), stops };
}

Deno.test("debug-exit ends the run with status (value << 1) | 1 for 1, 2 and 4 byte writes", () => {
  const { dev, stops } = rig(0xf4, 4);
  dev.write(0xf4, 1, 0x1ff);
  dev.write(0xf4, 2, 0x1_2345);
  dev.write(0xf4, 4, 0xffff_ffff);
  dev.write(0xf4, 1, 0);
  assert.deepEqual(stops, [
    [0x1ff, "debug-exit 0xff"],
    [0x4_68b, "debug-exit 0x2345"],
    [0x1_ffff_ffff, "debug-exit 0xffffffff"],
    [1, "debug-exit 0x0"],
  ]);
  assert.equal(dev.read(0xf4, 1), 0);
  assert.deepEqual(dev.ports, [{ base: 0xf4, length: 4 }]);
});

Deno.test("debug-exit is only present when a port is configured", () => {
  const env: DeviceEnv = { setIrq() {}, requestStop() {} };
  const without = createDevices(defaultDeviceSpecs({ serialOut: "none" }), env);
  assert.equal(without.some((d) => d.name === "debug-exit"), false);
  const withIt = createDevices(
    defaultDeviceSpecs({ serialOut: "none", debugExitPort: 0x501 }),
    env,
  );
  assert.deepEqual(withIt.find((d) => d.name === "debug-exit")?.ports, [{
    base: 0x501,
    length: 1,
  }]);
  assert.throws(() => rig(0xffff, 2), /pass 0xffff/);
  assert.throws(() => rig(0xf4, 3), /1, 2 or 4/);
  const { dev } = rig(0xf4);
  dev.restore(dev.save());
});
