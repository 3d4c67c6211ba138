/**
 * QEMU's `isa-debug-exit` device, opt-in: a guest write of `v` to its port
 * ends the run with status `(v << 1) | 1`, so test guests can report
 * pass/fail without a serial console. Reads return 0.
 *
 * @module
 */

import type { AddressRange, Device, DeviceEnv } from "./device.ts";
import { checkStateSize, configInt, type DeviceSpec, DeviceSpecError } from "./spec.ts";
import { decodeDeviceState, encodeDeviceState } from "./state.ts";

/** Device kind of the debug-exit port. */
export const DEBUG_EXIT_KIND = "debug_exit";
const STATE_VERSION = 1;
/** The debug-exit device has no mutable state; its buffer is a placeholder. */
export const DEBUG_EXIT_STATE_BYTES = 4;

/** Creates the spec of a debug-exit port at `port` claiming `size` (1, 2 or 4) ports. */
export function debugExitSpec(port: number, size = 1, name = "debug-exit"): DeviceSpec {
  return {
    kind: DEBUG_EXIT_KIND,
    name,
    config: { port, size },
    state: new SharedArrayBuffer(DEBUG_EXIT_STATE_BYTES),
  };
}

/** The run status a debug-exit write of `value` produces. */
export function debugExitStatus(value: number): number {
  return (value >>> 0) * 2 + 1;
}

/** The debug-exit port. */
export class DebugExit implements Device {
  /** Stable name. */
  readonly name: string;
  /** The configured port range. */
  readonly ports: readonly AddressRange[];
  /** None. */
  readonly mmio: readonly AddressRange[] = [];
  readonly #env: DeviceEnv;

  /**
   * Builds the device from its spec.
   *
   * @example
   * ```ts
   * import { DebugExit, debugExitSpec } from "./debug_exit.ts";
   * const dev = new DebugExit(debugExitSpec(0xf4), {
   *   setIrq() {},
   *   requestStop: (status) => console.log(status),
   * });
   * dev.write(0xf4, 1, 0x10); // 33
   * ```
   */
  constructor(spec: DeviceSpec, env: DeviceEnv) {
    if (spec.kind !== DEBUG_EXIT_KIND) {
      throw new DeviceSpecError(spec.name, `kind '${spec.kind}' is not '${DEBUG_EXIT_KIND}'`);
    }
    checkStateSize(spec, DEBUG_EXIT_STATE_BYTES);
    this.name = spec.name;
    const port = configInt(spec, "port", 0x501, 0, 0xffff);
    const size = configInt(spec, "size", 1, 1, 4);
    if (size === 3) throw new DeviceSpecError(spec.name, "config 'size' must be 1, 2 or 4");
    if (port + size > 0x10000) {
      throw new DeviceSpecError(spec.name, `ports 0x${port.toString(16)}+${size} pass 0xffff`);
    }
    this.ports = [{ base: port, length: size }];
    this.#env = env;
  }

  /** Reads return 0. */
  read(_addr: number, _size: number): number {
    return 0;
  }

  /** A write of `size` bytes ends the run with status `(value << 1) | 1`. */
  write(_addr: number, size: number, value: number): void {
    const v = size >= 4 ? value >>> 0 : value & (size === 2 ? 0xffff : 0xff);
    this.#env.requestStop(debugExitStatus(v), `debug-exit 0x${v.toString(16)}`);
  }

  /** Nothing to save but the envelope. */
  save(): Uint8Array {
    return encodeDeviceState(DEBUG_EXIT_KIND, STATE_VERSION, new Uint8Array(0));
  }

  /** Validates the envelope. */
  restore(state: Uint8Array): void {
    decodeDeviceState(DEBUG_EXIT_KIND, STATE_VERSION, 0, state);
  }
}
