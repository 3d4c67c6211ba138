/**
 * The synchronous image contract that raw and qcow2 files implement beneath
 * the async {@link BlockDevice} surface. Live operations and chains use the
 * synchronous methods so that each step is atomic with respect to other JS
 * code on the same thread (a writer cannot slip in between a read and a
 * write of one cluster).
 *
 * @module
 */

import type { BlockDevice } from "./block_device.ts";
import type { FileIdentity } from "./file_io.ts";
import type { LockMode } from "./image_lock.ts";

/** Allocation state of a run of bytes in one image layer. */
export type AllocationKind = "data" | "zero" | "unallocated";

/** One run of {@link DiskImage.blockStatus}. */
export interface BlockStatus {
  /** Where this layer's answer for the range comes from. */
  kind: AllocationKind;
  /** Length of the run in bytes (at least 1). */
  length: number;
}

/** {@link ReadExtent.kind}: the bytes are in a file, at `fd` / `hostOffset`. */
export const EXTENT_DATA: number = 0;
/** {@link ReadExtent.kind}: the bytes read as zeros. */
export const EXTENT_ZERO: number = 1;
/** {@link ReadExtent.kind}: this layer does not have them; its backing image answers. */
export const EXTENT_BACKING: number = 2;
/** {@link ReadExtent.kind}: only `readSync` can produce them (e.g. a compressed cluster). */
export const EXTENT_OTHER: number = 3;

/**
 * Where a run of guest bytes is, as one image layer answers it: what a
 * caller doing its own I/O on the image's file (io_uring) needs. Reused
 * between calls, so the hot path allocates nothing.
 */
export class ReadExtent {
  /** EXTENT_DATA, EXTENT_ZERO, EXTENT_BACKING or EXTENT_OTHER. */
  kind: number = EXTENT_OTHER;
  /** Bytes of the run from the asked offset (1 up to the asked length). */
  length = 0;
  /** EXTENT_DATA: the file descriptor the bytes are read from (valid while the image is open). */
  fd: number = -1;
  /** EXTENT_DATA: the offset in that file. */
  hostOffset = 0;
}

/** A disk image file: raw or qcow2, with synchronous methods. */
export interface DiskImage extends BlockDevice {
  /** The image format. */
  readonly format: "raw" | "qcow2";
  /** The path the image was opened with. */
  readonly path: string;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  /** The image this one reads unallocated ranges from, or null. */
  readonly backing: DiskImage | null;
  /** Device and inode of the image file (what it is, whatever name it was opened by). */
  readonly identity: FileIdentity;
  /**
   * Whether the synchronous methods serve every range: false when the chain
   * ends in an asynchronous device (a `RemoteLayer`, e.g. an iSCSI LUN); then
   * only the promise methods read unallocated ranges and copy on write.
   */
  readonly synchronous: boolean;
  /** Synchronous {@link BlockDevice.read}. */
  readSync(offset: number, buf: Uint8Array): void;
  /** Synchronous {@link BlockDevice.write}. */
  writeSync(offset: number, data: Uint8Array): void;
  /** Synchronous {@link BlockDevice.flush}. */
  flushSync(): void;
  /** Synchronous {@link BlockDevice.discard}. */
  discardSync(offset: number, length: number): void;
  /** Grows the image to `newSize` bytes (never shrinks). */
  grow(newSize: number): void;
  /** Allocation of this layer at `offset` (one run, up to `length` bytes). */
  blockStatus(offset: number, length: number): BlockStatus;
  /** Synchronous {@link BlockDevice.close}; also closes an owned backing image. */
  closeSync(): void;
  /** Changes how the image file is locked (see `image_lock.ts`); throws `ImageLockError`. */
  relock(mode: LockMode): void;
}

/** Runs a synchronous image call as the async {@link BlockDevice} method. */
export function settle(call: () => void): Promise<void> {
  try {
    call();
    return Promise.resolve();
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Base of the image classes: the async {@link BlockDevice} surface derived
 * once from the synchronous {@link DiskImage} methods.
 */
export abstract class SyncDiskImage implements DiskImage {
  abstract readonly format: "raw" | "qcow2";
  abstract readonly path: string;
  abstract readonly readOnly: boolean;
  abstract readonly backing: DiskImage | null;
  abstract readonly identity: FileIdentity;
  abstract readonly size: number;
  abstract readSync(offset: number, buf: Uint8Array): void;
  abstract writeSync(offset: number, data: Uint8Array): void;
  abstract flushSync(): void;
  abstract discardSync(offset: number, length: number): void;
  abstract grow(newSize: number): void;
  abstract blockStatus(offset: number, length: number): BlockStatus;
  abstract closeSync(): void;
  abstract relock(mode: LockMode): void;

  /** True: a file image; a qcow2 image answers for its chain. */
  get synchronous(): boolean {
    return true;
  }

  /** Async {@link DiskImage.readSync}. */
  read(offset: number, buf: Uint8Array): Promise<void> {
    return settle(() => this.readSync(offset, buf));
  }
  /** Async {@link DiskImage.writeSync}. */
  write(offset: number, data: Uint8Array): Promise<void> {
    return settle(() => this.writeSync(offset, data));
  }
  /** Async {@link DiskImage.flushSync}. */
  flush(): Promise<void> {
    return settle(() => this.flushSync());
  }
  /** Async {@link DiskImage.discardSync}. */
  discard(offset: number, length: number): Promise<void> {
    return settle(() => this.discardSync(offset, length));
  }
  /** Async {@link DiskImage.closeSync}. */
  close(): Promise<void> {
    return settle(() => this.closeSync());
  }
}

/** Throws when `[offset, offset + length)` is not inside a device of `size` bytes. */
export function checkRange(
  what: string,
  path: string,
  offset: number,
  length: number,
  size: number,
  errorClass: new (message: string) => Error,
): void {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
    offset + length > size
  ) {
    throw new errorClass(
      `${what} of ${length} bytes at offset ${offset} is outside '${path}' (size ${size} bytes)`,
    );
  }
}
