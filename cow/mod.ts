/**
 * Copy-on-write disks in qcow2 (version 3), usable on their own: raw and
 * qcow2 images behind one {@link BlockDevice} interface, backing chains of any
 * depth, and the live operations of a checkpoint: create an overlay and
 * switch a running writer to it, copy the parent in the background, commit
 * the overlay back into the parent while it is in use, and stream parents up
 * to shorten a chain. Images interoperate with `qemu-img` and QEMU.
 *
 * @example
 * ```ts
 * import { createImage, createOverlay, openImage, SwitchableDevice, commit } from "./mod.ts";
 *
 * const base = createImage("/tmp/base.qcow2", { size: 64 << 20 });
 * const dev = new SwitchableDevice(base); // the VM writes through `dev`
 * await dev.write(0, new Uint8Array(4096).fill(1));
 *
 * const overlay = createOverlay(base, "/tmp/ckpt.qcow2");
 * await dev.switchTo(overlay); // checkpoint: base is frozen from here on
 * await dev.write(0, new Uint8Array(4096).fill(2));
 *
 * const { parent } = await commit(overlay, { switchable: dev }); // dev now targets base again
 * await dev.close();
 * ```
 *
 * Design notes:
 * - qcow2 is implemented here in TypeScript (no maintained npm package reads
 *   and writes qcow2, and QEMU's block layer is not a library). The format
 *   structs live once in `qcow2_format.ts`; `check.ts` re-derives refcounts
 *   independently of the writer.
 * - File I/O calls libc `pread64`/`pwrite64`/`fdatasync` synchronously
 *   through FFI (`file_io.ts`): Deno's FsFile has no positioned I/O and its
 *   async ops cost ~10 µs each. Every image operation is therefore atomic
 *   with respect to other JS on the same thread, which the live operations
 *   rely on; an image object belongs to one thread (worker).
 * - Metadata is cached write-back and written in QEMU's order at flush
 *   (see `qcow2.ts`), so a crash leaves at most leaked clusters.
 * - Active commit mirrors writes below its cursor into the parent (QEMU's
 *   write-blocking mode) and saves the cursor for crash resume (`commit.ts`);
 *   a resume trusts the cursor only if the overlay kept the commit's
 *   autoclear marker (no writer since).
 * - Every image file is locked as QEMU locks it (`image_lock.ts`): vmkit and
 *   QEMU keep each other off an image being written, in both directions.
 * - A backing file may be a network device (QEMU's `iscsi://…` backing
 *   names): cow/ opens it only through the caller's `openBacking` hook
 *   (`openImageAsync`), as a read-only `RemoteLayer`; the qcow2 images
 *   above it then read unallocated clusters and copy on write through
 *   promises, in order per cluster (`qcow2_async.ts`), while file chains
 *   keep the synchronous path.
 * - Every qcow2 write is checked against the image's metadata (QEMU's
 *   overlap check, `qcow2_metadata.ts`); a probed raw image refuses writes
 *   that would make it probe as another format (`raw.ts`).
 * - The formats and on-disk conventions are described in `FORMAT.md`.
 *
 * @module
 */

export type { BlockDevice } from "./block_device.ts";
export type { AllocationKind, BlockStatus, DiskImage } from "./disk_image.ts";
export {
  EXTENT_BACKING,
  EXTENT_DATA,
  EXTENT_OTHER,
  EXTENT_ZERO,
  ReadExtent,
  SyncDiskImage,
} from "./disk_image.ts";
export {
  BackingChainError,
  BlockRangeError,
  CowError,
  DiskIoError,
  InjectedFault,
  LiveOperationError,
  QcowError,
  UnsupportedFeatureError,
} from "./errors.ts";
export {
  FaultInjector,
  type FileIdentity,
  ImageFile,
  type ImageFileOptions,
  sameFile,
} from "./file_io.ts";
export {
  ImageLockError,
  LOCK_PERM_BASE,
  LOCK_SHARED_BASE,
  type LockHolder,
  lockHolders,
  type LockMode,
  lockPermissions,
  PERM,
} from "./image_lock.ts";
export { RawImage, type RawOpenOptions } from "./raw.ts";
export { Qcow2Image, type Qcow2OpenOptions } from "./qcow2.ts";
export type { Qcow2CreateOptions } from "./qcow2_create.ts";
export { AUTOCLEAR_COMMIT_MARKER, type Qcow2Features } from "./qcow2_header.ts";
export { probeBytes } from "./probe.ts";
export {
  type AsyncOpenImageOptions,
  chainLayerAt,
  chainPaths,
  createImage,
  type CreateImageOptions,
  type ImageFormat,
  MAX_CHAIN_DEPTH,
  openImage,
  openImageAsync,
  type OpenImageOptions,
  probeFormat,
  remoteBacking,
  resolveBackingPath,
  statImage,
} from "./chain.ts";
export { isRemoteName, RemoteLayer } from "./remote_layer.ts";
export { SwitchableDevice, type SwitchOptions } from "./switchable_device.ts";
export { createOverlay, type OverlayOptions, switchToOverlay } from "./overlay.ts";
export { type CopyOptions, copyParent, type CopyResult } from "./copy_parent.ts";
export { commit, CommitMirror, type CommitOptions, type CommitResult } from "./commit.ts";
export { stream, type StreamOptions, type StreamResult } from "./stream.ts";
export {
  checkImage,
  type CheckOptions,
  checkReader,
  type CheckResult,
  type PositionedReader,
} from "./check.ts";
export { type ImageInfo, imageInfo, type InfoOptions, type LayerInfo } from "./info.ts";
export { type BackgroundOptions, type Progress } from "./progress.ts";
