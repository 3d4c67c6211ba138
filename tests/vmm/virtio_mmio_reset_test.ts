import assert from "node:assert/strict";
import { loadShim } from "../../native/ffi.ts";
import { EventFd } from "../../native/io_ffi.ts";
import {
  RESET_WAIT_MS,
  resetTransportState,
  virtioMmioSpec,
  VirtioMmioTransport,
} from "../../vmm/devices/virtio/mmio.ts";
import { Reg, Status, W } from "../../vmm/devices/virtio/layout.ts";

const BASE = 0xd000_0000;

await loadShim();

/** A block device's transport whose back end is reached through `ctrlFd` (-1: none), and its words. */
function transport(ctrlFd: number): { t: VirtioMmioTransport; w: Int32Array } {
  const spec = virtioMmioSpec({
    name: "vda",
    base: BASE,
    deviceId: 2,
    features: [],
    queueSizes: [16],
    configBytes: 8,
    ctrlFd,
    notifyFds: [-1],
  });
  return { t: new VirtioMmioTransport(spec), w: new Int32Array(spec.state) };
}

Deno.test("a driver that reads status 0 after a back-end reset has its next writes taken (no window where they are dropped)", () => {
  const { t, w } = transport(-1);
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

Deno.test("a reset written while status is already 0 is done at once, so a slow back end cannot drop the driver's next writes (§2.4.1)", () => {
  // A back end that never answers: its control eventfd is signalled but nothing reads it.
  using ctrl = EventFd.create();
  const { t, w } = transport(ctrl.fd);
  // A driver starting up resets the device first (status is 0 already), sees 0, goes on.
  const t0 = performance.now();
  t.write(BASE + Reg.STATUS, 4, 0);
  const waited = performance.now() - t0;
  assert.equal(t.read(BASE + Reg.STATUS, 4), 0);
  assert.equal(Atomics.load(w, W.RESET_PENDING), 0, "the reset is still pending");
  assert.ok(waited < RESET_WAIT_MS, `the vCPU waited ${waited.toFixed(1)} ms for the back end`);
  t.write(BASE + Reg.STATUS, 4, Status.ACKNOWLEDGE);
  t.write(BASE + Reg.DEVICE_FEATURES_SEL, 4, 1);
  assert.equal(t.read(BASE + Reg.STATUS, 4), Status.ACKNOWLEDGE, "ACKNOWLEDGE was dropped");
  assert.equal(t.read(BASE + Reg.DEVICE_FEATURES, 4) & 1, 1, "FEATURES_SEL 1 was dropped");
  // With the driver's status set, a reset is the back end's: status reads non-zero until it is done.
  t.write(BASE + Reg.STATUS, 4, 0);
  assert.equal(Atomics.load(w, W.RESET_PENDING), 1);
  assert.equal(
    t.read(BASE + Reg.STATUS, 4),
    Status.ACKNOWLEDGE,
    "status read 0 before the reset was done",
  );
});
