/**
 * vmkit `vmm`: the machine, vCPUs, devices and boot loaders.
 *
 * @module
 */

export type { Device, DeviceEnv, Suspendable } from "./devices/device.ts";
export type { GuestMemory, MemoryRegion } from "./guest_memory.ts";
export { GuestMemoryError, MMIO_GAP_END, MMIO_GAP_START, x86Layout } from "./guest_memory.ts";
export type { BootOptions, BootPlan, BootProtocol } from "./boot/types.ts";
