import assert from "node:assert/strict";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { realModeLoader, realModeOutLoop } from "./machine_guest.ts";
import { PROBE_PORT, PROBE_STOP_PORT, probeSpec } from "./machine_probe_devices.ts";

Deno.test("a guest doing 100 000 port writes on /dev/kvm has every write reach its device on the vCPU thread", async () => {
  const probe = probeSpec();
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 1,
    kernel: new Uint8Array(0),
    devices: [...defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }), probe],
    deviceModule: new URL("./machine_probe_devices.ts", import.meta.url).href,
    loader: realModeLoader(realModeOutLoop(PROBE_PORT, PROBE_STOP_PORT, 10, 10_000)),
  });
  const t0 = performance.now();
  await m.start();
  const exit = await m.wait();
  const secs = (performance.now() - t0) / 1000;
  assert.deepEqual(exit, { status: 0, reason: "probe stop 0" });
  const writes = Atomics.load(new Uint32Array(probe.state), 0);
  assert.equal(writes, 100_000);
  console.log(
    `exits/s: ${(writes / secs).toFixed(0)} (${writes} port writes in ${secs.toFixed(3)} s)`,
  );
});
