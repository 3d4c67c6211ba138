import assert from "node:assert/strict";
import {
  resetTransportState,
  virtioMmioSpec,
  VirtioMmioTransport,
} from "../../vmm/devices/virtio/mmio.ts";
import { Reg, Status, W } from "../../vmm/devices/virtio/layout.ts";

const BASE = 0xd000_0000;

Deno.test("a driver that reads status 0 after a back-end reset has its next writes taken (no window where they are dropped)", () => {
  const spec = virtioMmioSpec({
    name: "vda",
    base: BASE,
    deviceId: 2,
    features: [],
    queueSizes: [16],
    configBytes: 8,
    ctrlFd: -1,
    notifyFds: [-1],
  });
  const t = new VirtioMmioTransport(spec);
  const w = new Int32Array(spec.state);
  // A reset handed to the back end: the vCPU stored RESET_PENDING and went on.
  t.write(BASE + Reg.STATUS, 4, Status.ACKNOWLEDGE);
  Atomics.store(w, W.RESET_PENDING, 1);
  // The back end finishes it; the driver sees 0 and starts again at once.
  resetTransportState(w);
  assert.equal(t.read(BASE + Reg.STATUS, 4), 0);
  t.write(BASE + Reg.STATUS, 4, Status.ACKNOWLEDGE);
  t.write(BASE + Reg.DEVICE_FEATURES_SEL, 4, 1);
  assert.equal(t.read(BASE + Reg.STATUS, 4), Status.ACKNOWLEDGE, "ACKNOWLEDGE was dropped");
  assert.equal(t.read(BASE + Reg.DEVICE_FEATURES, 4) & 1, 1, "VERSION_1 (bit 32) is not offered");
});
