/**
 * The one block-device contract shared by `cow/` (raw and qcow2 images),
 * `san/` (iSCSI LUNs), `vmm/` and `checkpoint/`. No dependencies on purpose:
 * any primitive may implement it without importing the rest of `cow/`.
 *
 * @module
 */

/**
 * A random-access block device. Offsets and lengths are byte counts (plain
 * numbers, safe integers). Every method is asynchronous; implementations
 * reject with a typed error on bad input or I/O failure.
 *
 * Semantics every implementation keeps:
 * - `read` fills all of `buf`; bytes never written read as zeros (or as the
 *   parent's bytes for a copy-on-write image).
 * - `write` is durable only after a later `flush` resolves.
 * - after `discard(offset, length)` the range reads as zeros.
 */
export interface BlockDevice {
  /** Size of the device in bytes. */
  readonly size: number;
  /** Reads `buf.length` bytes at `offset` into `buf`. */
  read(offset: number, buf: Uint8Array): Promise<void>;
  /** Writes all of `data` at `offset`. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Makes every write that resolved before this call durable. */
  flush(): Promise<void>;
  /** Deallocates `[offset, offset + length)`; the range then reads as zeros. */
  discard(offset: number, length: number): Promise<void>;
  /** Flushes (when writable) and releases the device's resources. */
  close(): Promise<void>;
}
