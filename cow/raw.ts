/**
 * Raw disk images: the file's bytes are the disk's bytes.
 *
 * A raw image whose format was probed (no format given, no backing-format
 * extension naming it) refuses, as QEMU's raw driver does, any write that
 * would make its first sector probe as another format: otherwise a guest
 * could write a qcow2 header naming a host file as its backing file into
 * its own disk, and the next probe would open that host file for it.
 *
 * @module
 */

import type { AllocationKind, BlockStatus, DiskImage } from "./disk_image.ts";
import { checkRange, EXTENT_DATA, type ReadExtent, SyncDiskImage } from "./disk_image.ts";
import { BlockRangeError, CowError } from "./errors.ts";
import { type FaultInjector, type FileIdentity, ImageFile } from "./file_io.ts";
import type { LockMode } from "./image_lock.ts";
import { PROBE_BYTES, probeBytes } from "./probe.ts";

/** Options for {@link RawImage.open}. */
export interface RawOpenOptions {
  /** Open read-only (default false). */
  readOnly?: boolean;
  /** Fault injection for crash tests. */
  faults?: FaultInjector;
  /** The format was probed, not given: guard the first sector (default false). */
  probed?: boolean;
  /** How to lock the file (default: "write", or "read" when read-only). */
  lock?: LockMode;
}

/** A raw image file as a {@link DiskImage}. */
export class RawImage extends SyncDiskImage {
  /** Always "raw". */
  readonly format: "raw" = "raw";
  /** The path the image was opened with. */
  readonly path: string;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  /** Raw images have no backing file. */
  readonly backing: DiskImage | null = null;
  /** Whether the format was probed (the first sector is guarded). */
  readonly probed: boolean;
  #file: ImageFile;
  #size: number;
  #zeros: Uint8Array | null = null;
  #sector0: Uint8Array | null = null;

  private constructor(file: ImageFile, probed: boolean) {
    super();
    this.path = file.path;
    this.#file = file;
    this.readOnly = file.readOnly;
    this.probed = probed;
    this.#size = file.length();
  }

  /** Opens an existing raw file. */
  static open(path: string, options: RawOpenOptions = {}): RawImage {
    const readOnly = options.readOnly ?? false;
    const file = ImageFile.open(path, {
      readOnly,
      ...(options.faults ? { faults: options.faults } : {}),
      ...(options.lock ? { lock: options.lock } : {}),
    });
    return new RawImage(file, options.probed ?? false);
  }

  /** Wraps an open file; the image owns it from here on. */
  static fromFile(file: ImageFile, probed: boolean): RawImage {
    return new RawImage(file, probed);
  }

  /** Changes how the file is locked (see `image_lock.ts`). */
  relock(mode: LockMode): void {
    this.#file.relock(mode);
  }

  /** Device and inode of the file. */
  get identity(): FileIdentity {
    return this.#file.identity;
  }

  /** Creates (or replaces) a sparse raw file of `size` bytes. */
  static create(path: string, size: number): RawImage {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new CowError(`raw image size must be a non-negative integer, got ${size}`);
    }
    const file = ImageFile.open(path, { create: true, truncate: true });
    try {
      file.truncate(size);
    } catch (err) {
      file.close();
      throw err;
    }
    return new RawImage(file, false);
  }

  /** Size in bytes (the file length). */
  get size(): number {
    return this.#size;
  }

  #writable(what: string): void {
    if (this.readOnly) throw new CowError(`cannot ${what} '${this.path}': opened read-only`);
  }

  /** Reads into `buf` at `offset`. */
  readSync(offset: number, buf: Uint8Array): void {
    checkRange("read", this.path, offset, buf.length, this.#size, BlockRangeError);
    this.#file.readZeroFilled(buf, offset);
  }

  /** Where `[offset, offset + length)` is: all of it in the file at the same offset. */
  readExtent(offset: number, length: number, out: ReadExtent): void {
    checkRange("read", this.path, offset, length, this.#size, BlockRangeError);
    out.kind = EXTENT_DATA;
    out.length = length;
    out.fd = this.#file.fd;
    out.hostOffset = offset;
  }

  /** Writes `data` at `offset`. */
  writeSync(offset: number, data: Uint8Array): void {
    this.#writable("write");
    checkRange("write", this.path, offset, data.length, this.#size, BlockRangeError);
    if (offset < PROBE_BYTES && this.probed && data.length > 0) this.#guardSector0(offset, data);
    this.#file.pwrite(data, offset);
  }

  /** Refuses a write that would make the first sector probe as another format. */
  #guardSector0(offset: number, data: Uint8Array): void {
    const s0 = this.#sector0 ??= new Uint8Array(PROBE_BYTES);
    this.#file.readZeroFilled(s0, 0);
    const n = Math.min(data.length, PROBE_BYTES - offset);
    s0.set(n === data.length ? data : data.subarray(0, n), offset);
    const fmt = probeBytes(s0.subarray(0, Math.min(PROBE_BYTES, this.#size)));
    if (fmt !== "raw") {
      throw new CowError(
        `refusing to write sector 0 of '${this.path}': its format was probed as raw, and the ` +
          `write would make it probe as ${fmt}; name the format explicitly (for a backing ` +
          `file: qemu-img rebase -u -b <backing> -F raw <overlay>)`,
      );
    }
  }

  /** fdatasync. */
  flushSync(): void {
    if (!this.readOnly) this.#file.sync();
  }

  /** Punches a hole (or writes zeros where holes are unsupported). */
  discardSync(offset: number, length: number): void {
    this.#writable("discard");
    checkRange("discard", this.path, offset, length, this.#size, BlockRangeError);
    if (length === 0) return;
    if (offset < PROBE_BYTES && this.probed) {
      this.#guardSector0(offset, new Uint8Array(Math.min(length, PROBE_BYTES - offset)));
    }
    if (this.#file.punchHole(offset, length)) return;
    this.#zeros ??= new Uint8Array(1 << 20);
    for (let done = 0; done < length; done += this.#zeros.length) {
      const n = Math.min(this.#zeros.length, length - done);
      this.#file.pwrite(this.#zeros.subarray(0, n), offset + done);
    }
  }

  /** Grows the file to `newSize` bytes. */
  grow(newSize: number): void {
    this.#writable("grow");
    if (!Number.isSafeInteger(newSize) || newSize < this.#size) {
      throw new CowError(
        `cannot resize '${this.path}' from ${this.#size} to ${newSize} bytes: only growing is supported`,
      );
    }
    this.#file.truncate(newSize);
    this.#size = newSize;
  }

  /** Every byte of a raw image is data. */
  blockStatus(offset: number, length: number): BlockStatus {
    checkRange("block status", this.path, offset, length, this.#size, BlockRangeError);
    const kind: AllocationKind = "data";
    return { kind, length };
  }

  /** Closes the file (throws while asynchronous requests are in flight). */
  closeSync(): void {
    this.#file.close();
  }

  // ---- the promise methods: off the JS thread, many in flight (file_ring.ts) ----

  /** Reads into `buf` at `offset` through the thread's io_uring. */
  override read(offset: number, buf: Uint8Array): Promise<void> {
    try {
      checkRange("read", this.path, offset, buf.length, this.#size, BlockRangeError);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#file.readAsync(buf, offset);
  }

  /** Writes `data` at `offset` through the thread's io_uring. */
  override write(offset: number, data: Uint8Array): Promise<void> {
    try {
      this.#writable("write");
      checkRange("write", this.path, offset, data.length, this.#size, BlockRangeError);
      if (offset < PROBE_BYTES && this.probed && data.length > 0) this.#guardSector0(offset, data);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#file.writeAsync(data, offset);
  }

  /** fdatasync through the thread's io_uring: every write settled before the call is durable. */
  override flush(): Promise<void> {
    return this.readOnly ? Promise.resolve() : this.#file.syncAsync();
  }

  /** Waits for the requests in flight, then closes the file. */
  override async close(): Promise<void> {
    await this.#file.drain();
    this.closeSync();
  }
}
