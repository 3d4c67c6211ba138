/**
 * The default legacy device set of a vmkit microVM and the factory that
 * builds a thread's device instances from specs.
 *
 * @module
 */

import { DEBUG_EXIT_KIND, DebugExit, debugExitSpec } from "./debug_exit.ts";
import type { Device, DeviceEnv } from "./device.ts";
import { I8042, I8042_KIND, i8042Spec } from "./i8042.ts";
import { CmosRtc, RTC_KIND, rtcSpec } from "./rtc.ts";
import { Serial16550, SERIAL_KIND, type SerialOutput, serialSpec } from "./serial.ts";
import { type DeviceSpec, DeviceSpecError } from "./spec.ts";

/** Options of {@link defaultDeviceSpecs}. */
export interface DefaultDeviceOptions {
  /** Where COM1 output goes (default `"stdout"`). */
  readonly serialOut?: SerialOutput;
  /** Whether COM1 accepts host input through `pushInput` (default true). */
  readonly serialIn?: boolean;
  /** Port of the opt-in debug-exit device (absent: no device). */
  readonly debugExitPort?: number;
  /** Guest RAM in MiB, for the CMOS memory-size fields (default 256). */
  readonly memMiB?: number;
}

/**
 * The legacy devices every vmkit VM has: COM1 (`"com1"`), the i8042
 * (`"i8042"`), the CMOS RTC (`"rtc"`) and, when asked, debug-exit
 * (`"debug-exit"`). Each spec carries fresh shared state.
 *
 * @example
 * ```ts
 * import { createDevices, defaultDeviceSpecs } from "./factory.ts";
 * const specs = defaultDeviceSpecs({ serialOut: "none", debugExitPort: 0xf4 });
 * const devices = createDevices(specs, { setIrq() {}, requestStop() {} });
 * console.log(devices.map((d) => d.name)); // ["com1", "i8042", "rtc", "debug-exit"]
 * ```
 */
export function defaultDeviceSpecs(opts: DefaultDeviceOptions = {}): DeviceSpec[] {
  const memMiB = opts.memMiB ?? 256;
  const specs: DeviceSpec[] = [
    serialSpec("com1", { output: opts.serialOut ?? "stdout", input: opts.serialIn ?? true }),
    i8042Spec(),
    rtcSpec(memMiB * 1024 * 1024),
  ];
  if (opts.debugExitPort !== undefined) {
    const port = opts.debugExitPort;
    if (!Number.isInteger(port) || port < 0 || port > 0xffff) {
      throw new DeviceSpecError("debug-exit", `port ${port} is outside 0..0xffff`);
    }
    specs.push(debugExitSpec(port));
  }
  return specs;
}

/** Builds one thread's instances of `specs` (on the main thread or in a vCPU Worker). */
export function createDevices(specs: DeviceSpec[], env: DeviceEnv): Device[] {
  return specs.map((spec): Device => {
    switch (spec.kind) {
      case SERIAL_KIND:
        return new Serial16550(spec, env);
      case I8042_KIND:
        return new I8042(spec, env);
      case RTC_KIND:
        return new CmosRtc(spec, env);
      case DEBUG_EXIT_KIND:
        return new DebugExit(spec, env);
      default:
        throw new DeviceSpecError(
          spec.name,
          `unknown kind '${spec.kind}' (known: ${
            [SERIAL_KIND, I8042_KIND, RTC_KIND, DEBUG_EXIT_KIND].join(", ")
          })`,
        );
    }
  });
}
