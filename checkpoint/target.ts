/**
 * What a checkpoint needs of a machine: the small interface `checkpoint/`
 * drives, which `vmm/` implements for its `Machine` (see
 * `vmm/checkpoint_target.ts`). Any VMM that can pause, save its CPU and device
 * state and show its guest RAM as host ranges can be checkpointed.
 *
 * @module
 */

import type { MachineCpuState } from "../native/kvm_state.ts";

export type { MachineCpuState };

/** One region of guest RAM as the host maps it. */
export interface TargetRegion {
  /** Guest-physical start. */
  readonly guestAddr: number;
  /** Bytes (a multiple of 4 KiB). */
  readonly size: number;
  /** Host address of its mapping. */
  readonly hostAddr: bigint;
}

/** A machine that can be checkpointed. */
export interface CheckpointTarget {
  /** Guest RAM regions, sorted by guest address. */
  readonly regions: readonly TargetRegion[];
  /** Whether the machine is paused now (a paused machine stays paused after a checkpoint). */
  readonly paused: boolean;
  /**
   * A JSON description of the machine (vCPUs, memory, devices, back ends)
   * that a restore rebuilds it from; written to the `config` section.
   */
  describe(): Record<string, unknown>;
  /**
   * Stops every vCPU. The checkpoint calls {@link quiesceDevices} first, so
   * no device writes guest memory while it is paused.
   */
  pause(): Promise<void>;
  /** Lets the vCPUs run again. */
  resume(): Promise<void>;
  /** Finishes or holds in-flight device I/O (before {@link pause}). */
  quiesceDevices(): Promise<void>;
  /** Lets device I/O go on (after {@link resume}). */
  resumeDevices(): Promise<void>;
  /** Every vCPU's and the VM's state (paused). */
  saveCpuState(): MachineCpuState;
  /** Device states by name (paused). */
  saveDevices(): Record<string, Uint8Array>;
  /**
   * Runs inside the pause after memory and state are saved, e.g. to switch
   * disks to their overlays; returns a JSON record for the `disks` section.
   */
  switchDisks?(): Record<string, unknown> | undefined;
}
