/**
 * vmkit `checkpoint`: live checkpoints of a running VM with a pause that does
 * not grow with memory (userfaultfd write-protect: the guest's RAM is made
 * copy-on-write, state saved, and the pages written in the background),
 * diffs chained to a parent, and lazy restore. It drives any machine through
 * {@link CheckpointTarget}; `vmm/checkpoint.ts` implements it for vmkit's
 * `Machine`. The file format is documented in `checkpoint/FORMAT.md`.
 *
 * @example
 * ```ts ignore
 * import { Checkpointer, openCheckpoint } from "@vmkit/vmkit/checkpoint";
 * import type { CheckpointTarget } from "@vmkit/vmkit/checkpoint";
 * declare const machine: CheckpointTarget; // a running machine: not available to a doc test
 * using cp = await Checkpointer.create(machine);
 * const save = await cp.checkpoint({ path: "vm.ckpt" });
 * console.log(`paused ${save.pauseUs} µs`, await save.done);
 * using chain = await openCheckpoint("vm.ckpt");
 * console.log(chain.header.memBytes);
 * ```
 *
 * @module
 */

export { CheckpointError } from "./errors.ts";
export type {
  CheckpointDisk,
  CheckpointTarget,
  DiskInfo,
  DiskLayerInfo,
  MachineCpuState,
  TargetRegion,
} from "./target.ts";
export {
  Checkpointer,
  type CheckpointerOptions,
  type CheckpointOptions,
  type LiveSave,
  type PausePhases,
  type SaveProgress,
  type SaveSummary,
} from "./live.ts";
export {
  CheckpointChain,
  type CheckpointConfig,
  CheckpointFile,
  openCheckpoint,
  type OpenOptions,
} from "./reader.ts";
export { MemorySource } from "./restore.ts";
export { DEFAULT_PAGE_STORE_DIR, PageStore } from "./page_store.ts";
export {
  checkLayer,
  checkLunLayer,
  type DiskIdentity,
  diskIdentity,
  type DiskPolicy,
  type DisksRecord,
  parseDisksRecord,
  type RecordedDisk,
  type RecordedLayer,
  type RecordedLun,
} from "./disks.ts";
export {
  type CheckpointInfo,
  describeCheckpoint,
  mergeCheckpoint,
  type MergeResult,
  verifyCheckpoint,
  type VerifyResult,
} from "./tools.ts";
export type { WpCounters } from "../native/uffd_ffi.ts";
export { Kind as PageKind, type PageRun, type RegionPages } from "./pagemap.ts";
export { FORMAT_VERSION, type Header, Section, type SectionEntry } from "./format.ts";
