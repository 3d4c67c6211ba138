/**
 * A test device module for machine tests: the usual devices plus a "probe"
 * that records guest OUTs to port 0x500 in shared memory (count at word 0,
 * values after) and ends the run with the value written to port 0x501.
 * Loaded on every thread through `MachineConfig.deviceModule`.
 *
 * @module
 */

import { createDevices as createDefault } from "../../vmm/devices/mod.ts";
import type { Device, DeviceEnv } from "../../vmm/devices/device.ts";
import type { DeviceSpec } from "../../vmm/devices/spec.ts";

/** Port whose writes the probe records. */
export const PROBE_PORT = 0x500;
/** Port whose write ends the run with the written value as status. */
export const PROBE_STOP_PORT = 0x501;
/** Most values the probe keeps. */
export const PROBE_CAPACITY = 1024;

/** A spec for the probe device with fresh shared state. */
export function probeSpec(): DeviceSpec {
  return {
    kind: "probe",
    name: "probe",
    config: {},
    state: new SharedArrayBuffer(4 * (1 + PROBE_CAPACITY)),
  };
}

/** The values recorded in a probe's state. */
export function probeValues(spec: DeviceSpec): number[] {
  const words = new Uint32Array(spec.state);
  const n = Math.min(Atomics.load(words, 0), PROBE_CAPACITY);
  return Array.from(words.subarray(1, 1 + n));
}

class Probe implements Device {
  readonly name: string;
  readonly ports = [{ base: PROBE_PORT, length: 2 }];
  readonly mmio = [];
  readonly #words: Uint32Array;
  readonly #env: DeviceEnv;

  constructor(spec: DeviceSpec, env: DeviceEnv) {
    this.name = spec.name;
    this.#words = new Uint32Array(spec.state);
    this.#env = env;
  }

  read(_addr: number, _size: number): number {
    return Atomics.load(this.#words, 0);
  }

  write(addr: number, _size: number, value: number): void {
    if (addr === PROBE_STOP_PORT) {
      this.#env.requestStop(value, `probe stop ${value}`);
      return;
    }
    const n = Atomics.load(this.#words, 0);
    if (n < PROBE_CAPACITY) Atomics.store(this.#words, 1 + n, value);
    Atomics.store(this.#words, 0, n + 1);
  }

  save(): Uint8Array {
    return new Uint8Array(this.#words.buffer.slice(0));
  }

  restore(state: Uint8Array): void {
    new Uint8Array(this.#words.buffer).set(state);
  }
}

/** `createDevices` with the probe kind added. */
export function createDevices(specs: DeviceSpec[], env: DeviceEnv): Device[] {
  const probes = specs.filter((s) => s.kind === "probe").map((s) => new Probe(s, env));
  return [...createDefault(specs.filter((s) => s.kind !== "probe"), env), ...probes];
}
