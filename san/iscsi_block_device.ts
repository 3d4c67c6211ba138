/**
 * A block device on an iSCSI LUN, implementing `cow/`'s {@link BlockDevice}
 * contract so a VM's disk, or an overlay's parent, can live on the SAN.
 *
 * Aligned requests go straight to READ(16)/WRITE(16), split into chunks that
 * are issued concurrently; unaligned edges are read-modify-written under a
 * lock. `flush` is SYNCHRONIZE CACHE; `discard` uses UNMAP when the LUN is
 * thin-provisioned and reads unmapped blocks as zeros, and writes zeros
 * otherwise, so the range always reads back as zeros.
 *
 * @module
 */

import type { BlockDevice } from "../cow/block_device.ts";
import { SanDeviceError } from "./errors.ts";
import { IscsiSession, type IscsiSessionOptions } from "./iscsi_session.ts";
import type { Capacity } from "./scsi.ts";

/** Largest single READ(16)/WRITE(16) the device issues. */
export const MAX_TRANSFER_BYTES = 512 * 1024;
const ZERO_CHUNK = 1 << 20;

/** Options to open a LUN as a block device. */
export interface IscsiBlockDeviceOptions extends IscsiSessionOptions {
  /** Target IQN (required for a block device). */
  readonly targetName: string;
  /** Logical unit number. */
  readonly lun: number;
  /** Refuse writes and discards. */
  readonly readOnly?: boolean;
}

/**
 * An iSCSI LUN as a {@link BlockDevice}.
 *
 * @example
 * ```ts ignore
 * // ignore: needs an iSCSI target on 127.0.0.1:3260.
 * const dev = await IscsiBlockDevice.open({
 *   host: "127.0.0.1", port: 3260, lun: 1,
 *   initiatorName: "iqn.2024-01.dev.vmkit:vm-1",
 *   targetName: "iqn.2024-01.example:disk1",
 * });
 * await dev.write(0, new Uint8Array(4096).fill(1));
 * await dev.flush();
 * await dev.close();
 * ```
 */
export class IscsiBlockDevice implements BlockDevice {
  /** Size in bytes. */
  readonly size: number;
  /** Logical block size in bytes. */
  readonly blockSize: number;
  /** The LUN. */
  readonly lun: number;
  /** The session the device uses (shared if created with {@link fromSession}). */
  readonly session: IscsiSession;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  readonly #capacity: Capacity;
  readonly #ownsSession: boolean;
  #rmw: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(
    session: IscsiSession,
    lun: number,
    capacity: Capacity,
    owns: boolean,
    readOnly: boolean,
  ) {
    if (capacity.bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new SanDeviceError(`LUN ${lun} is ${capacity.bytes} bytes, beyond 2^53`);
    }
    this.session = session;
    this.lun = lun;
    this.#capacity = capacity;
    this.size = Number(capacity.bytes);
    this.blockSize = capacity.blockSize;
    this.#ownsSession = owns;
    this.readOnly = readOnly;
  }

  /** Logs in to the target and opens the LUN. */
  static async open(options: IscsiBlockDeviceOptions): Promise<IscsiBlockDevice> {
    const session = await IscsiSession.connect(options);
    try {
      const cap = await session.readCapacity16(options.lun);
      return new IscsiBlockDevice(session, options.lun, cap, true, options.readOnly ?? false);
    } catch (err) {
      await session.logout();
      throw err;
    }
  }

  /** Opens a LUN on an existing session (the session stays open on `close`). */
  static async fromSession(
    session: IscsiSession,
    lun: number,
    readOnly = false,
  ): Promise<IscsiBlockDevice> {
    const cap = await session.readCapacity16(lun);
    return new IscsiBlockDevice(session, lun, cap, false, readOnly);
  }

  #check(what: string, offset: number, length: number, write: boolean): void {
    if (this.#closed) throw new SanDeviceError(`${what} on a closed LUN device`);
    if (write && this.readOnly) {
      throw new SanDeviceError(`${what} refused: LUN ${this.lun} was opened read-only`);
    }
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > this.size
    ) {
      throw new SanDeviceError(
        `${what} [${offset}, +${length}) is outside LUN ${this.lun} of ${this.size} bytes`,
      );
    }
  }

  async #readAligned(offset: number, buf: Uint8Array): Promise<void> {
    const bs = this.blockSize;
    const jobs: Promise<void>[] = [];
    for (let o = 0; o < buf.length; o += MAX_TRANSFER_BYTES) {
      const n = Math.min(MAX_TRANSFER_BYTES, buf.length - o);
      jobs.push(this.session.read16(this.lun, (offset + o) / bs, n / bs, buf.subarray(o, o + n)));
    }
    await Promise.all(jobs);
  }

  async #writeAligned(offset: number, data: Uint8Array): Promise<void> {
    const bs = this.blockSize;
    const jobs: Promise<void>[] = [];
    for (let o = 0; o < data.length; o += MAX_TRANSFER_BYTES) {
      const n = Math.min(MAX_TRANSFER_BYTES, data.length - o);
      jobs.push(this.session.write16(this.lun, (offset + o) / bs, n / bs, data.subarray(o, o + n)));
    }
    await Promise.all(jobs);
  }

  /** Reads `buf.length` bytes at byte `offset` (any alignment) into `buf`. */
  async read(offset: number, buf: Uint8Array): Promise<void> {
    this.#check("read", offset, buf.length, false);
    if (buf.length === 0) return;
    const bs = this.blockSize;
    if (offset % bs === 0 && buf.length % bs === 0) return await this.#readAligned(offset, buf);
    const start = offset - (offset % bs);
    const end = Math.ceil((offset + buf.length) / bs) * bs;
    const tmp = new Uint8Array(end - start);
    await this.#readAligned(start, tmp);
    buf.set(tmp.subarray(offset - start, offset - start + buf.length));
  }

  /** Writes `data` at byte `offset`; unaligned edges are read-modify-written. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#check("write", offset, data.length, true);
    if (data.length === 0) return;
    const bs = this.blockSize;
    if (offset % bs === 0 && data.length % bs === 0) return await this.#writeAligned(offset, data);
    await this.#locked(async () => {
      const start = offset - (offset % bs);
      const end = Math.ceil((offset + data.length) / bs) * bs;
      const tmp = new Uint8Array(end - start);
      await this.#readAligned(start, tmp.subarray(0, bs));
      if (end - start > bs) await this.#readAligned(end - bs, tmp.subarray(tmp.length - bs));
      tmp.set(data, offset - start);
      await this.#writeAligned(start, tmp);
    });
  }

  async #locked(fn: () => Promise<void>): Promise<void> {
    const prev = this.#rmw;
    let release = (): void => {};
    this.#rmw = new Promise<void>((r) => {
      release = r;
    });
    await prev;
    try {
      await fn();
    } finally {
      release();
    }
  }

  /** Makes every write that resolved before this call durable (SYNCHRONIZE CACHE). */
  async flush(): Promise<void> {
    if (this.#closed) throw new SanDeviceError("flush on a closed LUN device");
    await this.session.synchronizeCache(this.lun);
  }

  /** Deallocates `[offset, offset + length)`; the range then reads as zeros. */
  async discard(offset: number, length: number): Promise<void> {
    this.#check("discard", offset, length, true);
    if (length === 0) return;
    const bs = this.blockSize;
    const alignedStart = Math.ceil(offset / bs) * bs;
    const alignedEnd = Math.floor((offset + length) / bs) * bs;
    if (alignedStart > offset) {
      const n = Math.min(alignedStart, offset + length) - offset;
      await this.write(offset, new Uint8Array(n));
    }
    if (alignedEnd > alignedStart && alignedEnd < offset + length) {
      await this.write(alignedEnd, new Uint8Array(offset + length - alignedEnd));
    }
    if (alignedEnd <= alignedStart) return;
    if (this.#capacity.thinProvisioned && this.#capacity.unmappedReadsZero) {
      const maxBlocks = 0xffffffff;
      for (let lba = alignedStart / bs; lba < alignedEnd / bs; lba += maxBlocks) {
        await this.session.unmap(this.lun, lba, Math.min(maxBlocks, alignedEnd / bs - lba));
      }
      return;
    }
    const zeros = new Uint8Array(Math.min(ZERO_CHUNK, alignedEnd - alignedStart));
    for (let o = alignedStart; o < alignedEnd; o += zeros.length) {
      const n = Math.min(zeros.length, alignedEnd - o);
      await this.#writeAligned(o, zeros.subarray(0, n));
    }
  }

  /** Flushes (when writable) and logs out if the device owns its session. */
  async close(): Promise<void> {
    if (this.#closed) return;
    if (!this.readOnly) await this.flush();
    this.#closed = true;
    if (this.#ownsSession) await this.session.logout();
  }
}
