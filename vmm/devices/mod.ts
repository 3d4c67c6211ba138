/**
 * vmkit devices: the legacy PC devices of a microVM (16550A UART, i8042,
 * CMOS RTC, debug-exit) and the bus that routes vCPU exits to them.
 *
 * Every thread (each vCPU Worker and the main thread) builds its own
 * instances from the same {@link DeviceSpec}s; the instances share their state
 * through each spec's `SharedArrayBuffer`, and every thread's
 * {@link DeviceBus} shares one lock.
 *
 * @example
 * ```ts
 * import { createDevices, defaultDeviceSpecs, DeviceBus } from "./mod.ts";
 *
 * const specs = defaultDeviceSpecs({ serialOut: "stdout", debugExitPort: 0xf4 });
 * const lock = DeviceBus.createLock();
 * // In each vCPU Worker, after receiving `specs` and `lock` by postMessage:
 * const env = { setIrq(_gsi: number, _level: boolean) {}, requestStop(_s: number, _r: string) {} };
 * const bus = new DeviceBus(createDevices(specs, env), lock);
 * for (const b of new TextEncoder().encode("hi\n")) bus.pioWrite(0x3f8, 1, b); // prints "hi"
 * ```
 *
 * @module
 */

export type { AddressRange, Device, DeviceEnv, Suspendable } from "./device.ts";
export {
  checkStateSize,
  configBool,
  configInt,
  configString,
  type DeviceSpec,
  DeviceSpecError,
} from "./spec.ts";
export { DeviceBus, DeviceBusError } from "./bus.ts";
export { LOCK_BYTES, SharedMutex } from "./lock.ts";
export {
  decodeDeviceState,
  DeviceStateError,
  encodeDeviceState,
  STATE_HEADER_BYTES,
} from "./state.ts";
export { createDevices, type DefaultDeviceOptions, defaultDeviceSpecs } from "./factory.ts";
export {
  RX_FIFO_BYTES,
  RX_RING_BYTES,
  Serial16550,
  SERIAL_KIND,
  SERIAL_STATE_BYTES,
  type SerialOptions,
  type SerialOutput,
  serialSpec,
  TX_BUFFER_BYTES,
} from "./serial.ts";
export {
  I8042,
  I8042_COMMAND_PORT,
  I8042_DATA_PORT,
  I8042_KIND,
  I8042_STATE_BYTES,
  i8042Spec,
} from "./i8042.ts";
export {
  CMOS_BYTES,
  CmosRtc,
  RTC_DATA_PORT,
  RTC_INDEX_PORT,
  RTC_KIND,
  RTC_STATE_BYTES,
  type RtcOptions,
  rtcSpec,
} from "./rtc.ts";
export {
  DEBUG_EXIT_KIND,
  DEBUG_EXIT_STATE_BYTES,
  DebugExit,
  debugExitSpec,
  debugExitStatus,
} from "./debug_exit.ts";
