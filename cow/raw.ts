/**
 * Raw disk images: the file's bytes are the disk's bytes.
 *
 * @module
 */

import type { AllocationKind, BlockStatus, DiskImage } from "./disk_image.ts";
import { checkRange, SyncDiskImage } from "./disk_image.ts";
import { BlockRangeError, CowError } from "./errors.ts";
import { type FaultInjector, ImageFile } from "./file_io.ts";

/** Options for {@link RawImage.open}. */
export interface RawOpenOptions {
  /** Open read-only (default false). */
  readOnly?: boolean;
  /** Fault injection for crash tests. */
  faults?: FaultInjector;
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
  #file: ImageFile;
  #size: number;
  #zeros: Uint8Array | null = null;

  private constructor(file: ImageFile, readOnly: boolean) {
    super();
    this.path = file.path;
    this.#file = file;
    this.readOnly = readOnly;
    this.#size = file.length();
  }

  /** Opens an existing raw file. */
  static open(path: string, options: RawOpenOptions = {}): RawImage {
    const readOnly = options.readOnly ?? false;
    const file = ImageFile.open(path, {
      readOnly,
      ...(options.faults ? { faults: options.faults } : {}),
    });
    return new RawImage(file, readOnly);
  }

  /** Creates (or replaces) a sparse raw file of `size` bytes. */
  static create(path: string, size: number): RawImage {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new CowError(`raw image size must be a non-negative integer, got ${size}`);
    }
    const file = ImageFile.open(path, { create: true, truncate: true });
    file.truncate(size);
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

  /** Writes `data` at `offset`. */
  writeSync(offset: number, data: Uint8Array): void {
    this.#writable("write");
    checkRange("write", this.path, offset, data.length, this.#size, BlockRangeError);
    this.#file.pwrite(data, offset);
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

  /** Closes the file. */
  closeSync(): void {
    this.#file.close();
  }
}
