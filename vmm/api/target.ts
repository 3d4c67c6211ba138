/**
 * What the control socket drives: the slice of the `Machine` API it needs,
 * so the server can be tested (and embedded) without a real VM.
 *
 * @module
 */

/** One guest RAM region as the API reports it. */
export interface ApiMemoryRegion {
  /** Guest-physical start. */
  readonly guestAddr: number;
  /** Length in bytes. */
  readonly size: number;
}

/** The machine as the control socket sees it; `vmm/machine.ts`'s `Machine` satisfies it. */
export interface ApiTarget {
  /** Lifecycle state: `"Created"`, `"Running"`, `"Paused"` or `"Stopped"`. */
  readonly state: string;
  /** Number of vCPUs. */
  readonly vcpuCount: number;
  /** Guest RAM. */
  readonly memory: {
    readonly size: number;
    readonly regions: readonly ApiMemoryRegion[];
  };
  /** Pauses every vCPU. */
  pause(): Promise<void>;
  /** Resumes every vCPU. */
  resume(): Promise<void>;
  /** Stops the machine for good. */
  stop(): Promise<void>;
}
