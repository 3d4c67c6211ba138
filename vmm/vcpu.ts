/**
 * What the machine (main thread) and its vCPU Workers share: the init
 * message, the messages a Worker posts back, and the layout of the control
 * `SharedArrayBuffer` through which pause, resume and stop travel without a
 * message round-trip.
 *
 * A Worker gets two messages: {@link VcpuInit} (its vCPU, the control
 * buffer, the state slots and the standby's own devices, which it builds
 * at once: what a standby machine has before it knows its guest) and
 * {@link VcpuLoad} (the I/O devices, and other devices when the machine's
 * are not the standby's). After the load it publishes
 * {@link VcpuRunState.LOADED} and waits on the start gate {@link CTL_GO},
 * where the machine may first ask it to set its own vCPU's state from the
 * slots (a restore) before it lets it run.
 *
 * @module
 */

import type { StateSlotsInit } from "./cpu_state_saver.ts";
import type { Device, DeviceEnv } from "./devices/device.ts";
import { createDevices } from "./devices/factory.ts";
import type { DeviceSpec } from "./devices/spec.ts";

/** Int32 index of the request word: bit {@link REQ_PAUSE} and {@link REQ_STOP}. */
export const CTL_REQ = 0;
/**
 * Int32 index of the start gate: bit {@link GO_RUN} is set by
 * `Machine.start()`; the bits above count events a waiting vCPU must look
 * at (a state to load, a stop), so that each one changes the word and no
 * wake-up is lost (add {@link GO_EVENT}).
 */
export const CTL_GO = 1;
/** Start-gate bit: run. */
export const GO_RUN = 1;
/** Start-gate increment: something to look at (state to load, stop). */
export const GO_EVENT = 2;
/** Int32 index of vCPU 0's state word; vCPU `i` is at `CTL_VCPU0 + i`. */
export const CTL_VCPU0 = 8;
/** Request bit: park every vCPU. */
export const REQ_PAUSE = 1;
/** Request bit: end every vCPU loop. */
export const REQ_STOP = 2;

/** A vCPU's state word values. */
export const VcpuRunState = {
  /** Worker setting up. */
  STARTING: 0,
  /** In (or about to enter) KVM_RUN. */
  RUNNING: 1,
  /** Parked in Atomics.wait, out of KVM_RUN. */
  PAUSED: 2,
  /** Loop ended; the Worker is about to post `exited`. */
  EXITED: 3,
  /**
   * Out of KVM_RUN for good (pending I/O completed), saving its own state
   * for a checkpoint before it parks: no guest instruction runs from here.
   */
  STOPPED: 4,
  /** Set up (vCPU, shim, slots) and waiting for its devices ({@link VcpuLoad}). */
  STANDBY: 5,
  /** Devices built; waiting at the start gate. */
  LOADED: 6,
} as const;

/** Bytes of the control buffer for `vcpus` vCPUs. */
export function controlBytes(vcpus: number): number {
  return (CTL_VCPU0 + vcpus) * 4;
}

/** First message to a vCPU Worker. */
export interface VcpuInit {
  /** Path of the built shim library. */
  readonly libPath: string;
  /** VM fd, for KVM_IRQ_LINE. */
  readonly vmFd: number;
  /** vCPU fd. */
  readonly vcpuFd: number;
  /** vCPU id. */
  readonly id: number;
  /** Host address of the vCPU's `kvm_run` mapping. */
  readonly runAddr: bigint;
  /** Bytes of the `kvm_run` mapping. */
  readonly runSize: number;
  /** XSAVE blob size of the VM. */
  readonly xsaveSize: number;
  /** The control buffer (see `CTL_*`). */
  readonly control: SharedArrayBuffer;
  /** One BigInt64 per vCPU: the Worker's pthread_t, for kicks. */
  readonly threads: SharedArrayBuffer;
  /**
   * One Float64 per vCPU: when its thread left the start gate for its first
   * `KVM_RUN` (`performance.timeOrigin + performance.now()` on that thread).
   */
  readonly entered: SharedArrayBuffer;
  /** Exit counters (`metrics/machine_metrics.ts`); this vCPU writes row `id` only. */
  readonly exitCounters: SharedArrayBuffer;
  /** The standby's devices, built on this thread at once (used unless the load brings others). */
  readonly devices: DeviceSpec[];
  /** Module exporting `createDevices(specs, env)` for them; absent: `vmm/devices/mod.ts`. */
  readonly deviceModule?: string;
  /** The device bus lock shared by every thread. */
  readonly busLock: SharedArrayBuffer;
  /** Shared slots this vCPU saves its own state into as it parks, when asked (checkpoints). */
  readonly stateSlots?: StateSlotsInit;
  /** Shared slots this vCPU loads its state from before it first runs (restores). */
  readonly loadSlots?: {
    readonly buffer: SharedArrayBuffer;
    readonly count: number;
    readonly msrs: number;
  };
}

/** Second message to a vCPU Worker: the devices of its machine. */
export interface VcpuLoad {
  /** Message tag. */
  readonly type: "load";
  /** Devices to instantiate on this thread instead of the standby's (absent: the standby's). */
  readonly devices?: DeviceSpec[];
  /** Module exporting `createDevices(specs, env)` for them; absent: `vmm/devices/mod.ts`. */
  readonly deviceModule?: string;
  /** I/O devices' transport specs (virtio-mmio register files over shared state). */
  readonly ioDevices: DeviceSpec[];
}

/** Sent to a pooled vCPU Worker before its {@link VcpuInit}: the shim to open meanwhile. */
export interface VcpuPreload {
  /** Path of the built shim library. */
  readonly preload: string;
}

/** Messages a vCPU Worker posts to the machine. */
export type VcpuMessage =
  | { readonly type: "ready"; readonly id: number }
  | { readonly type: "stop"; readonly id: number; readonly status: number; readonly reason: string }
  | { readonly type: "exited"; readonly id: number };

/** Builds one thread's device instances (the shape of `createDevices` in `vmm/devices/`). */
export type DeviceFactory = (specs: DeviceSpec[], env: DeviceEnv) => Device[];

/**
 * The `createDevices` of `module` (a URL), or of `vmm/devices/` when absent.
 * Both the main thread and every vCPU Worker call this with the same module.
 */
export async function loadDeviceFactory(module: string | undefined): Promise<DeviceFactory> {
  if (module === undefined) return createDevices;
  const mod: { createDevices?: unknown } = await import(module);
  if (typeof mod.createDevices !== "function") {
    throw new Error(`vcpu: device module ${module} does not export createDevices(specs, env)`);
  }
  return mod.createDevices as DeviceFactory;
}
