/**
 * A backing "file" that is not a local file: a {@link BlockDevice} (an
 * iSCSI LUN, say) as the read-only bottom layer of a qcow2 chain. The
 * overlay above it names it in QEMU's terms (backing file
 * `iscsi://HOST[:PORT]/TARGET/LUN`, backing format `raw`), and it is opened
 * only through a hook the caller gives `openImageAsync` (cow/ knows no
 * network protocol; the VMM logs in to a LUN with the VM's own SUI).
 *
 * Such a device is asynchronous: its synchronous {@link DiskImage} methods
 * refuse, and the qcow2 images above it read unallocated clusters and copy
 * on write through their promise methods instead (`qcow2.ts`), so
 * {@link DiskImage.synchronous} is false for the whole chain.
 *
 * @module
 */

import type { BlockDevice } from "./block_device.ts";
import type { BlockStatus, DiskImage } from "./disk_image.ts";
import { checkRange } from "./disk_image.ts";
import { BlockRangeError, CowError } from "./errors.ts";
import type { FileIdentity } from "./file_io.ts";

/**
 * Whether a backing name is a protocol URL rather than a file name, by
 * QEMU's rule (`path_has_protocol`): a `:` before any `/` (`iscsi://…`,
 * `nbd:…`). Such names are never resolved as paths.
 */
export function isRemoteName(name: string): boolean {
  const colon = name.indexOf(":");
  if (colon <= 0) return false;
  const slash = name.indexOf("/");
  return slash < 0 || colon < slash;
}

/** An identity no file has (inodes and devices are never negative). */
const NO_FILE: FileIdentity = Object.freeze({ dev: -1, ino: -1 });

/** A {@link BlockDevice} as the read-only, asynchronous bottom of a chain. */
export class RemoteLayer implements DiskImage {
  /** Always "raw": vmkit reads no image format over a network device. */
  readonly format: "raw" = "raw";
  /** The backing name (the URL as the overlay stores it). */
  readonly path: string;
  /** Always true: a chain never writes its backing. */
  readonly readOnly = true;
  /** Always null: the bottom of the chain. */
  readonly backing: null = null;
  /** No file: matches no path (`chainLayerAt`). */
  readonly identity: FileIdentity = NO_FILE;
  /** Always false: reads go through the device's promises. */
  readonly synchronous = false;
  /** The device. */
  readonly device: BlockDevice;
  readonly #owns: boolean;
  #closed = false;

  /**
   * Wraps `device` under the backing name `name`; closing the layer closes
   * the device when `owns` (default true).
   */
  constructor(name: string, device: BlockDevice, owns = true) {
    this.path = name;
    this.device = device;
    this.#owns = owns;
  }

  /** The device's size in bytes. */
  get size(): number {
    return this.device.size;
  }

  #sync(what: string): never {
    throw new CowError(
      `cannot ${what} '${this.path}' synchronously: it is a network device, read through ` +
        "promises; copy, commit and stream need a chain of local files",
    );
  }

  /** Reads from the device. */
  read(offset: number, buf: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(new CowError(`'${this.path}' is closed`));
    try {
      checkRange("read", this.path, offset, buf.length, this.size, BlockRangeError);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.device.read(offset, buf);
  }
  /** Refused: a backing layer is read-only. */
  write(_offset: number, _data: Uint8Array): Promise<void> {
    return Promise.reject(new CowError(`'${this.path}' is a read-only backing device`));
  }
  /** Nothing to flush: the layer writes nothing. */
  flush(): Promise<void> {
    return Promise.resolve();
  }
  /** Refused: a backing layer is read-only. */
  discard(_offset: number, _length: number): Promise<void> {
    return Promise.reject(new CowError(`'${this.path}' is a read-only backing device`));
  }
  /** Closes the device (when owned). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#owns) await this.device.close();
  }
  /** Refused (see the module doc). */
  readSync(_offset: number, _buf: Uint8Array): void {
    this.#sync("read");
  }
  /** Refused (see the module doc). */
  writeSync(_offset: number, _data: Uint8Array): void {
    this.#sync("write");
  }
  /** Nothing to flush. */
  flushSync(): void {}
  /** Refused (see the module doc). */
  discardSync(_offset: number, _length: number): void {
    this.#sync("discard");
  }
  /** Refused: a backing device is not resized through its overlay. */
  grow(_newSize: number): void {
    this.#sync("resize");
  }
  /** Every byte is the device's data (a LUN has no allocation map here). */
  blockStatus(offset: number, length: number): BlockStatus {
    checkRange("block status", this.path, offset, length, this.size, BlockRangeError);
    return { kind: "data", length };
  }
  /** Refused unless already closed: the device closes asynchronously (use `close`). */
  closeSync(): void {
    if (this.#closed || !this.#owns) {
      this.#closed = true;
      return;
    }
    this.#sync("close");
  }
  /** No file, no lock: a no-op (a LUN's exclusion is the SAN's: masking, reservations). */
  relock(): void {}
}
