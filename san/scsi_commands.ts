/**
 * The SCSI commands vmkit issues to a LUN (SPC-4/SBC-3), over any transport
 * that can run one command: each builds its CDB (`scsi.ts`), runs it, retries
 * UNIT ATTENTION, BUSY and TASK SET FULL, and decodes the answer.
 * `IscsiSession` is the transport: it implements {@link ScsiCommands.submit}.
 *
 * @module
 */

import { IscsiProtocolError } from "./errors.ts";
import {
  type Capacity,
  cdbInquiry,
  cdbReadCapacity16,
  cdbReadWrite16,
  cdbReportLuns,
  cdbSynchronizeCache16,
  cdbTestUnitReady,
  cdbUnmap,
  type InquiryData,
  OPC_READ_16,
  OPC_WRITE_16,
  parseCapacity16,
  parseInquiry,
  parseReportLuns,
  ScsiStatusError,
  SENSE_ILLEGAL_REQUEST,
  SENSE_UNIT_ATTENTION,
  type SenseData,
  STATUS_BUSY,
  STATUS_CHECK_CONDITION,
  STATUS_GOOD,
  STATUS_TASK_SET_FULL,
  unmapParameters,
} from "./scsi.ts";

/** The outcome of one SCSI command. */
export interface ScsiResult {
  /** SCSI status byte. */
  readonly status: number;
  /** Residual count (bytes not transferred, or overflow). */
  readonly residual: number;
  /** Set when fewer bytes than expected were transferred. */
  readonly underflow: boolean;
  /** Set when the target had more data than the buffer held. */
  readonly overflow: boolean;
  /** Decoded sense data, if the target sent any. */
  readonly sense: SenseData | undefined;
}

/** Data for a SCSI command (`IscsiSession.command`). */
export interface CommandData {
  /** Buffer the target's data goes to (READ-type commands). */
  readonly dataIn?: Uint8Array;
  /** Data sent to the target (WRITE-type commands). */
  readonly dataOut?: Uint8Array;
  /** Return CHECK CONDITION and other statuses instead of throwing. */
  readonly allowStatus?: boolean;
}

/** The result of every whole transfer that ended GOOD: one shared, read-only object. */
export const GOOD: ScsiResult = Object.freeze({
  status: STATUS_GOOD,
  residual: 0,
  underflow: false,
  overflow: false,
  sense: undefined,
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The SCSI command set over a transport that runs one command at a time per call. */
export abstract class ScsiCommands {
  /** Retries of commands failing with UNIT ATTENTION, BUSY or TASK SET FULL. */
  readonly #retries: number;

  /** A command set whose retryable failures are retried `retries` times. */
  protected constructor(retries: number) {
    this.#retries = retries;
  }

  /**
   * Runs one command with a 16-byte `cdb16` the transport may keep (no
   * copy) and resolves with its status, whatever it is.
   */
  protected abstract submit(lun: number, cdb16: Uint8Array, d: CommandData): Promise<ScsiResult>;

  /**
   * Issues one SCSI command (`cdb` up to 16 bytes) and resolves when it
   * completes. A status other than GOOD throws {@link ScsiStatusError} (after
   * retrying UNIT ATTENTION, BUSY and TASK SET FULL) unless `allowStatus`.
   */
  async command(lun: number, cdb: Uint8Array, d: CommandData = {}): Promise<ScsiResult> {
    if (cdb.length === 0 || cdb.length > 16) throw new RangeError(`CDB of ${cdb.length} bytes`);
    const cdb16 = new Uint8Array(16);
    cdb16.set(cdb);
    return await this.#command(lun, cdb16, d);
  }

  /** {@link command} on a 16-byte CDB the transport may keep. */
  async #command(lun: number, cdb16: Uint8Array, d: CommandData): Promise<ScsiResult> {
    const r = await this.submit(lun, cdb16, d);
    if (r.status === STATUS_GOOD || d.allowStatus === true) return r;
    return await this.#retry(lun, cdb16, d, r);
  }

  /** Retries a command that ended with a retryable status, or throws its status. */
  async #retry(
    lun: number,
    cdb16: Uint8Array,
    d: CommandData,
    first: ScsiResult,
  ): Promise<ScsiResult> {
    for (let attempt = 0;; attempt++) {
      const r = attempt === 0 ? first : await this.submit(lun, cdb16, d);
      if (r.status === STATUS_GOOD || d.allowStatus === true) return r;
      const retryable = r.status === STATUS_BUSY || r.status === STATUS_TASK_SET_FULL ||
        (r.status === STATUS_CHECK_CONDITION && r.sense?.key === SENSE_UNIT_ATTENTION);
      if (!retryable || attempt >= this.#retries) {
        throw new ScsiStatusError(cdb16[0] ?? 0, r.status, r.sense);
      }
      if (r.status !== STATUS_CHECK_CONDITION) await sleep(10 * (attempt + 1));
    }
  }

  /** INQUIRY (standard data). */
  async inquiry(lun: number): Promise<InquiryData> {
    const cdb = new Uint8Array(16);
    const buf = new Uint8Array(96);
    cdbInquiry(cdb, buf.length);
    const r = await this.#command(lun, cdb, { dataIn: buf });
    return parseInquiry(buf.subarray(0, buf.length - (r.underflow ? r.residual : 0)));
  }

  /**
   * INQUIRY of vital product data page `page` (e.g. {@link VPD_DEVICE_ID});
   * null when the unit does not support the page (CHECK CONDITION).
   */
  async inquiryVpd(lun: number, page: number): Promise<Uint8Array | null> {
    const cdb = new Uint8Array(16);
    const buf = new Uint8Array(1024);
    cdbInquiry(cdb, buf.length, true, page);
    let r: ScsiResult;
    try {
      r = await this.#command(lun, cdb, { dataIn: buf });
    } catch (err) {
      if (err instanceof ScsiStatusError && err.sense?.key === SENSE_ILLEGAL_REQUEST) return null;
      throw err;
    }
    return buf.subarray(0, buf.length - (r.underflow ? r.residual : 0));
  }

  /** READ CAPACITY(16). */
  async readCapacity16(lun: number): Promise<Capacity> {
    const cdb = new Uint8Array(16);
    const buf = new Uint8Array(32);
    cdbReadCapacity16(cdb, buf.length);
    await this.#command(lun, cdb, { dataIn: buf });
    return parseCapacity16(buf);
  }

  /** READ(16) of `blocks` blocks at `lba` into `buf` (exactly blocks × block size bytes). */
  async read16(lun: number, lba: number, blocks: number, buf: Uint8Array): Promise<void> {
    const cdb = new Uint8Array(16);
    cdbReadWrite16(cdb, OPC_READ_16, lba, blocks);
    // The common case (GOOD) in one await: fewer microtask hops before the next command.
    const d = { dataIn: buf };
    let r = await this.submit(lun, cdb, d);
    if (r.status !== STATUS_GOOD) r = await this.#retry(lun, cdb, d, r);
    if (r.underflow && r.residual > 0) {
      throw new IscsiProtocolError(`READ(16) at LBA ${lba} returned ${r.residual} bytes short`);
    }
  }

  /** WRITE(16) of `data` (blocks × block size bytes) at `lba`; `fua` forces it to media. */
  async write16(
    lun: number,
    lba: number,
    blocks: number,
    data: Uint8Array,
    fua = false,
  ): Promise<void> {
    const cdb = new Uint8Array(16);
    cdbReadWrite16(cdb, OPC_WRITE_16, lba, blocks, fua);
    await this.#command(lun, cdb, { dataOut: data });
  }

  /** SYNCHRONIZE CACHE(16) over the whole LUN. */
  async synchronizeCache(lun: number): Promise<void> {
    const cdb = new Uint8Array(16);
    cdbSynchronizeCache16(cdb);
    await this.#command(lun, cdb, {});
  }

  /** TEST UNIT READY; resolves if the unit is ready, throws {@link ScsiStatusError} otherwise. */
  async testUnitReady(lun: number): Promise<void> {
    const cdb = new Uint8Array(16);
    cdbTestUnitReady(cdb);
    await this.#command(lun, cdb, {});
  }

  /** REPORT LUNS (sent to LUN 0). */
  async reportLuns(): Promise<number[]> {
    const cdb = new Uint8Array(16);
    const buf = new Uint8Array(8 + 8 * 256);
    cdbReportLuns(cdb, buf.length);
    await this.#command(0, cdb, { dataIn: buf });
    return parseReportLuns(buf);
  }

  /** UNMAP one range (thin-provisioned LUNs). */
  async unmap(lun: number, lba: number, blocks: number): Promise<void> {
    const params = unmapParameters(lba, blocks);
    const cdb = new Uint8Array(16);
    cdbUnmap(cdb, params.length);
    await this.#command(lun, cdb, { dataOut: params });
  }
}
