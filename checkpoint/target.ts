/**
 * What a checkpoint needs of a machine: the small interface `checkpoint/`
 * drives, which `vmm/` implements for its `Machine` (see
 * `vmm/checkpoint_target.ts`). Any VMM that can pause, save its CPU and device
 * state and show its guest RAM as host ranges can be checkpointed.
 *
 * @module
 */

import type { MachineCpuState } from "../native/kvm_state.ts";
import type { LunIdentity } from "../san/lun_identity.ts";

export type { LunIdentity, MachineCpuState };

/** One region of guest RAM as the host maps it. */
export interface TargetRegion {
  /** Guest-physical start. */
  readonly guestAddr: number;
  /** Bytes (a multiple of 4 KiB). */
  readonly size: number;
  /** Host address of its mapping. */
  readonly hostAddr: bigint;
}

/** One layer of a disk's chain as a checkpoint sees it. */
export interface DiskLayerInfo {
  /** Image path. */
  readonly path: string;
  /** Image format. */
  readonly format: "raw" | "qcow2";
  /** Virtual size in bytes. */
  readonly size: number;
  /** Set when the layer is an iSCSI LUN (`path` is its URL, `format` raw). */
  readonly lun?: {
    /** `iscsi://HOST[:PORT]/TARGET/LUN`. */
    readonly url: string;
    /** The initiator name (the VM's SUI) it is logged in under. */
    readonly initiatorName?: string;
  };
}

/** A disk as a checkpoint sees it. */
export interface DiskInfo {
  /** Drive id. */
  readonly id: string;
  /** `file` (a chain of images, maybe over a LUN) or `iscsi` (the disk is a LUN itself). */
  readonly kind: "file" | "iscsi";
  /** Whether the guest sees it read-only (then it needs no overlay). */
  readonly readOnly: boolean;
  /** Size in bytes. */
  readonly size: number;
  /** The chain, top first; a LUN is the last layer (the only one for `iscsi`). */
  readonly layers: readonly DiskLayerInfo[];
  /** iSCSI URL. */
  readonly url?: string;
}

/**
 * A disk of the machine, which the checkpoint's disk step drives: an
 * overlay is created over its top while the VM runs and armed, the machine's
 * {@link CheckpointTarget.quiesceDevices} switches to it (the parent is
 * frozen from then on), and with `copy-parent` the overlay is committed back
 * into its parent while the VM runs.
 */
export interface CheckpointDisk {
  /** Drive id. */
  readonly id: string;
  /** The chain as it is now. */
  describe(): Promise<DiskInfo>;
  /**
   * Creates a qcow2 overlay at `path` over the current top (over a LUN: one
   * whose backing file is the LUN's URL, format raw); the next quiesce
   * switches to it.
   */
  armOverlay(path: string): Promise<void>;
  /** The identity of the disk's LUN (a disk whose chain has a LUN layer). */
  lunIdentity?(): Promise<LunIdentity>;
  /** Drops an armed overlay (its file is removed). */
  disarm(): Promise<void>;
  /** Commits the top overlay into its parent while the VM runs; the disk ends on the parent. */
  commit(): Promise<void>;
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
  /** The machine's disks (none: the checkpoint holds memory and state only). */
  disks?(): readonly CheckpointDisk[];
}
