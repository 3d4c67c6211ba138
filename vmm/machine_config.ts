/**
 * What a machine is built from: {@link MachineConfig} and the records the
 * machine reports (state, exit, saved CPU state), with the checks and the
 * constants of the VM layout.
 *
 * @module
 */

import type { Regs, Sregs } from "../native/kvm_types.ts";
import type { MachineCpuState } from "../native/kvm_state.ts";
import type { BootOptions, BootPlan } from "./boot/types.ts";
import type { DeviceSpec } from "./devices/spec.ts";
import type { VirtioDeviceConfig } from "./devices/virtio/host.ts";
import type { GuestMemory } from "./guest_memory.ts";
import type { DriveConfig, NetConfig, StorageIdentityConfig } from "./io_config.ts";
import type { HostMemory, MemoryBacking } from "./memory.ts";

/** Where KVM's TSS goes (three pages just below the BIOS area, inside the MMIO gap). */
export const TSS_ADDR = 0xfffb_d000;
/** Where KVM's identity-map page table goes (the page below the TSS). */
export const IDENTITY_MAP_ADDR = 0xfffb_c000;
/** Most vCPUs a machine may have. */
export const MAX_VCPUS = 64;

/** Loads a kernel image into guest memory (the shape of `vmm/boot/mod.ts`'s `loadKernel`). */
export type KernelLoader = (memory: GuestMemory, image: Uint8Array, opts: BootOptions) => BootPlan;

/** What to build. */
export interface MachineConfig {
  /** Guest RAM in MiB (1..65536). */
  memMiB: number;
  /** vCPU count (1..64). */
  vcpus: number;
  /**
   * Kernel image bytes (the CLI reads the file). Absent only when
   * {@link MachineConfig.memory} is given: the machine is then not booted but
   * restored (its caller sets CPU and device state before `start()`).
   */
  kernel?: Uint8Array;
  /** Initial ramdisk. */
  initrd?: Uint8Array;
  /** Kernel command line. */
  cmdline?: string;
  /** Devices, e.g. from `defaultDeviceSpecs(...)` of `vmm/devices/mod.ts`. */
  devices: DeviceSpec[];
  /** Loader for {@link MachineConfig.kernel}; default `loadKernel` of `vmm/boot/mod.ts`. */
  loader?: KernelLoader;
  /**
   * Module (URL) exporting `createDevices(specs, env): Device[]`, imported on
   * every thread; default `vmm/devices/mod.ts`. For devices outside the tree.
   */
  deviceModule?: string;
  /** Backing of guest RAM (default anonymous private mappings). */
  memoryBacking?: MemoryBacking;
  /**
   * Guest RAM already mapped (a checkpoint restore fills it lazily); it must
   * hold `memMiB`. The machine owns it from then on.
   */
  memory?: HostMemory;
  /**
   * virtio-blk drives (Firecracker's `drives`), each on its own I/O Worker;
   * a root drive becomes `/dev/vda`.
   */
  drives?: DriveConfig[];
  /** The VM's storage identity: iSCSI drives log in under its SUI from the registry. */
  identity?: StorageIdentityConfig;
  /**
   * virtio-net interfaces (Firecracker's `network-interfaces`), each over a
   * host TAP on its own I/O Worker.
   */
  nets?: NetConfig[];
  /** Further virtio-mmio devices (devices from outside the tree). */
  virtioDevices?: VirtioDeviceConfig[];
  /**
   * ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) and the VM generation id
   * page, handed to the kernel by the boot loader (default true).
   */
  acpi?: boolean;
  /**
   * Whether the kernel command line gets a `virtio_mmio.device=` entry per
   * I/O device (and `root=` for a root drive) appended (default true; false
   * when the caller's command line is final).
   */
  announceOnCmdline?: boolean;
}

/** Every vCPU's KVM state and the VM-wide state, from `Machine.saveCpuState`. */
export type { MachineCpuState };

/** Lifecycle state. */
export type MachineState = "Created" | "Running" | "Paused" | "Stopped";

/** How a run ended. */
export interface MachineExit {
  /** 0 for a clean stop or power-off; non-zero for failures or as a device reports it. */
  status: number;
  /** Human-readable cause. */
  reason: string;
}

/** Raised for bad configuration or an operation in the wrong state. */
export class MachineError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(`machine: ${message}`);
    this.name = "MachineError";
  }
}

/** Throws {@link MachineError} for an out-of-range size or count. */
export function validate(config: Pick<MachineConfig, "memMiB" | "vcpus">): void {
  if (!Number.isInteger(config.memMiB) || config.memMiB < 1 || config.memMiB > 65536) {
    throw new MachineError(`memMiB ${config.memMiB} must be an integer in 1..65536`);
  }
  if (!Number.isInteger(config.vcpus) || config.vcpus < 1 || config.vcpus > MAX_VCPUS) {
    throw new MachineError(`vcpus ${config.vcpus} must be an integer in 1..${MAX_VCPUS}`);
  }
}

/** KVM's reset register file (all zero, rflags bit 1 set). */
export function resetRegs(): Regs {
  return {
    rax: 0n,
    rbx: 0n,
    rcx: 0n,
    rdx: 0n,
    rsi: 0n,
    rdi: 0n,
    rsp: 0n,
    rbp: 0n,
    r8: 0n,
    r9: 0n,
    r10: 0n,
    r11: 0n,
    r12: 0n,
    r13: 0n,
    r14: 0n,
    r15: 0n,
    rip: 0n,
    rflags: 2n,
  };
}

/** Overlays a boot plan's sregs on the vCPU's current ones (whole segments and tables). */
export function mergeSregs(base: Sregs, plan: Partial<Sregs>): Sregs {
  const out: Sregs = { ...base };
  for (const [k, v] of Object.entries(plan)) {
    if (v !== undefined) (out as unknown as Record<string, unknown>)[k] = v;
  }
  return out;
}
