/**
 * What a boot loader hands the machine: the initial state of the boot vCPU
 * after it has written the kernel, its parameters and page tables to memory.
 *
 * @module
 */

import type { Regs, Sregs } from "../../native/kvm_types.ts";

/** Which entry protocol the kernel was loaded for. */
export type BootProtocol = "linux64" | "bzimage64" | "pvh";

/** The result of loading a kernel into guest memory. */
export interface BootPlan {
  /** Protocol used. */
  readonly protocol: BootProtocol;
  /** Registers the boot vCPU starts with (unset fields are 0). */
  readonly regs: Partial<Regs>;
  /** Segment/control registers the boot vCPU starts with; merged over KVM's reset sregs. */
  readonly sregs: Partial<Sregs>;
  /** Guest-physical range the kernel image occupies, for diagnostics. */
  readonly kernel: { readonly start: number; readonly end: number };
}

/** What the loaders are given besides memory. */
export interface BootOptions {
  /** Kernel command line (NUL-terminated by the loader). */
  readonly cmdline: string;
  /** Optional initial ramdisk contents. */
  readonly initrd?: Uint8Array;
  /**
   * Guest-physical address of the ACPI RSDP, already in memory: handed to
   * the kernel as `hvm_start_info.rsdp_paddr` (PVH) or
   * `boot_params.acpi_rsdp_addr` (Linux boot protocol 2.14+).
   */
  readonly acpiRsdp?: number;
}
