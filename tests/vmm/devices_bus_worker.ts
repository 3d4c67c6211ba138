/**
 * Worker for the bus contention test: builds its own bus over the shared
 * lock and counter state, then writes the counter `count` times.
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import { DeviceBus } from "../../vmm/devices/mod.ts";
import { COUNTER_PORT, CounterDevice } from "./devices_counter_device.ts";

interface Job {
  lock: SharedArrayBuffer;
  state: SharedArrayBuffer;
  ready: SharedArrayBuffer;
  count: number;
}

self.onmessage = (e: MessageEvent<Job>) => {
  const { lock, state, ready, count } = e.data;
  const bus = new DeviceBus([new CounterDevice(state)], lock);
  // Start together with the main thread so the two loops overlap.
  const flag = new Int32Array(ready);
  Atomics.store(flag, 0, 1);
  while (Atomics.load(flag, 0) !== 2) Atomics.wait(flag, 0, 1, 5);
  for (let i = 0; i < count; i++) bus.pioWrite(COUNTER_PORT, 1, 1);
  self.postMessage("done");
};
