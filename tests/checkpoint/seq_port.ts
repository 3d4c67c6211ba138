/**
 * A test device for checkpoints: a port that expects the guest to write
 * 1, 2, 3, … (mode=outseq) and counts every write that is not the last
 * value plus one, and answers reads with 1, 2, 3, … (mode=inseq). A
 * restored vCPU that repeats an OUT or an IN KVM had not completed when it
 * was saved shows up as a count, or as a skipped value the guest sees. The device module of a
 * test machine (`MachineConfig.deviceModule`): the built-in devices plus
 * this one.
 *
 * @module
 */

import type { AddressRange, Device, DeviceEnv } from "../../vmm/devices/device.ts";
import { createDevices as builtins } from "../../vmm/devices/factory.ts";
import type { DeviceSpec } from "../../vmm/devices/spec.ts";
import { decodeDeviceState, encodeDeviceState } from "../../vmm/devices/state.ts";

/** Device kind. */
export const SEQ_PORT_KIND = "test_seq_port";
/** Its port (the guest's mode=outseq writes 32-bit values there). */
export const SEQ_PORT = 0x510;
const STATE_BYTES = 12;

/** The spec of the device. */
export function seqPortSpec(): DeviceSpec {
  return {
    kind: SEQ_PORT_KIND,
    name: "seq",
    config: {},
    state: new SharedArrayBuffer(STATE_BYTES),
  };
}

/** The port: state [last value written, bad writes, reads answered]. */
export class SeqPort implements Device {
  /** Name. */
  readonly name = "seq";
  /** The port. */
  readonly ports: readonly AddressRange[] = [{ base: SEQ_PORT, length: 4 }];
  /** None. */
  readonly mmio: readonly AddressRange[] = [];
  readonly #s: Uint32Array;

  /** Over `spec`'s shared state. */
  constructor(spec: DeviceSpec) {
    this.#s = new Uint32Array(spec.state);
  }

  /** Writes that were not the last plus one. */
  get bad(): number {
    return Atomics.load(this.#s, 1);
  }

  /** The last value written. */
  get last(): number {
    return Atomics.load(this.#s, 0);
  }

  /** Reads answered so far (the last value a read returned). */
  get reads(): number {
    return Atomics.load(this.#s, 2);
  }

  /** A read returns the count of reads, this one included. */
  read(): number {
    return Atomics.add(this.#s, 2, 1) + 1;
  }

  /** A write of v: counted bad unless it follows the last value. */
  write(_addr: number, _size: number, value: number): void {
    const last = Atomics.load(this.#s, 0);
    if (last !== 0 && value >>> 0 !== ((last + 1) >>> 0)) Atomics.add(this.#s, 1, 1);
    Atomics.store(this.#s, 0, value >>> 0);
  }

  /** The state bytes. */
  save(): Uint8Array {
    return encodeDeviceState(SEQ_PORT_KIND, 1, new Uint8Array(this.#s.buffer).slice());
  }

  /** Restores them. */
  restore(state: Uint8Array): void {
    new Uint8Array(this.#s.buffer).set(decodeDeviceState(SEQ_PORT_KIND, 1, STATE_BYTES, state));
  }
}

/** The built-in devices plus {@link SeqPort}. */
export function createDevices(specs: DeviceSpec[], env: DeviceEnv): Device[] {
  const mine = specs.filter((s) => s.kind === SEQ_PORT_KIND);
  return [
    ...builtins(specs.filter((s) => s.kind !== SEQ_PORT_KIND), env),
    ...mine.map((s) => new SeqPort(s)),
  ];
}
