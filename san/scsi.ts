/**
 * SCSI commands the initiator issues (SPC-4/SBC-3): CDB builders, parsers of
 * their data, and decoding of sense data into typed errors.
 *
 * @module
 */

import { SanError } from "./errors.ts";

/** SCSI status GOOD. */
export const STATUS_GOOD = 0x00;
/** SCSI status CHECK CONDITION. */
export const STATUS_CHECK_CONDITION = 0x02;
/** SCSI status BUSY. */
export const STATUS_BUSY = 0x08;
/** SCSI status RESERVATION CONFLICT. */
export const STATUS_RESERVATION_CONFLICT = 0x18;
/** SCSI status TASK SET FULL. */
export const STATUS_TASK_SET_FULL = 0x28;

/** Opcodes. */
export const OPC_TEST_UNIT_READY = 0x00;
/** INQUIRY. */
export const OPC_INQUIRY = 0x12;
/** SYNCHRONIZE CACHE(16). */
export const OPC_SYNCHRONIZE_CACHE_16 = 0x91;
/** READ(16). */
export const OPC_READ_16 = 0x88;
/** WRITE(16). */
export const OPC_WRITE_16 = 0x8a;
/** SERVICE ACTION IN(16) (READ CAPACITY(16) is service action 0x10). */
export const OPC_SERVICE_ACTION_IN_16 = 0x9e;
/** READ CAPACITY(16) service action. */
export const SA_READ_CAPACITY_16 = 0x10;
/** REPORT LUNS. */
export const OPC_REPORT_LUNS = 0xa0;
/** UNMAP. */
export const OPC_UNMAP = 0x42;

/** Sense keys by number. */
export const SENSE_KEYS: readonly string[] = [
  "NO SENSE",
  "RECOVERED ERROR",
  "NOT READY",
  "MEDIUM ERROR",
  "HARDWARE ERROR",
  "ILLEGAL REQUEST",
  "UNIT ATTENTION",
  "DATA PROTECT",
  "BLANK CHECK",
  "VENDOR SPECIFIC",
  "COPY ABORTED",
  "ABORTED COMMAND",
  "RESERVED",
  "VOLUME OVERFLOW",
  "MISCOMPARE",
  "COMPLETED",
];

/** Sense key ILLEGAL REQUEST. */
export const SENSE_ILLEGAL_REQUEST = 0x5;
/** Sense key UNIT ATTENTION. */
export const SENSE_UNIT_ATTENTION = 0x6;

const ASC_TEXT: Readonly<Record<number, string>> = {
  0x0400: "logical unit not ready, cause not reportable",
  0x1a00: "parameter list length error",
  0x2000: "invalid command operation code",
  0x2100: "logical block address out of range",
  0x2400: "invalid field in CDB",
  0x2500: "logical unit not supported",
  0x2600: "invalid field in parameter list",
  0x2700: "write protected",
  0x2900: "power on, reset, or bus device reset occurred",
  0x2a01: "mode parameters changed",
  0x3f0e: "reported LUNs data has changed",
  0x3a00: "medium not present",
  0x4700: "SCSI parity error",
  0x4b00: "data phase error",
  0x0c00: "write error",
  0x1100: "unrecovered read error",
};

/** Decoded sense data (fixed or descriptor format). */
export interface SenseData {
  /** Response code (0x70/0x71 fixed, 0x72/0x73 descriptor). */
  readonly responseCode: number;
  /** Sense key (0..15). */
  readonly key: number;
  /** Additional sense code. */
  readonly asc: number;
  /** Additional sense code qualifier. */
  readonly ascq: number;
  /** Human-readable summary, e.g. "ILLEGAL REQUEST: logical block address out of range". */
  readonly text: string;
}

/** Decodes sense data; tolerates short buffers (missing fields read as 0). */
export function decodeSense(buf: Uint8Array): SenseData | undefined {
  if (buf.length < 1) return undefined;
  const rc = (buf[0] ?? 0) & 0x7f;
  let key = 0, asc = 0, ascq = 0;
  if (rc === 0x70 || rc === 0x71) {
    key = (buf[2] ?? 0) & 0x0f;
    asc = buf[12] ?? 0;
    ascq = buf[13] ?? 0;
  } else if (rc === 0x72 || rc === 0x73) {
    key = (buf[1] ?? 0) & 0x0f;
    asc = buf[2] ?? 0;
    ascq = buf[3] ?? 0;
  } else {
    return undefined;
  }
  const code = (asc << 8) | ascq;
  const ascText = ASC_TEXT[code] ??
    `ASC 0x${asc.toString(16).padStart(2, "0")} ASCQ 0x${ascq.toString(16).padStart(2, "0")}`;
  return { responseCode: rc, key, asc, ascq, text: `${SENSE_KEYS[key] ?? "?"}: ${ascText}` };
}

/** A SCSI command completed with a status other than GOOD. */
export class ScsiStatusError extends SanError {
  /** The SCSI status byte. */
  readonly status: number;
  /** Decoded sense data, for CHECK CONDITION. */
  readonly sense: SenseData | undefined;
  /** Opcode of the failed command. */
  readonly opcode: number;
  /** Creates a status error. */
  constructor(opcode: number, status: number, sense: SenseData | undefined) {
    const what = status === STATUS_CHECK_CONDITION
      ? `CHECK CONDITION (${sense?.text ?? "no sense data"})`
      : `status 0x${status.toString(16).padStart(2, "0")}`;
    super(`SCSI command 0x${opcode.toString(16).padStart(2, "0")} failed: ${what}`);
    this.name = "ScsiStatusError";
    this.status = status;
    this.sense = sense;
    this.opcode = opcode;
  }
}

/** The target answered a SCSI command with an iSCSI service response other than "completed". */
export class ScsiResponseError extends SanError {
  /** The iSCSI Response byte. */
  readonly response: number;
  /** Creates a response error. */
  constructor(opcode: number, response: number) {
    super(
      `SCSI command 0x${opcode.toString(16)} got iSCSI response 0x${response.toString(16)} ` +
        `(target failure); retry or check the target's logs`,
    );
    this.name = "ScsiResponseError";
    this.response = response;
  }
}

/** Standard INQUIRY data. */
export interface InquiryData {
  /** Peripheral qualifier (0 = connected). */
  readonly qualifier: number;
  /** Peripheral device type (0 = direct access block device). */
  readonly deviceType: number;
  /** Removable medium. */
  readonly removable: boolean;
  /** SPC version byte. */
  readonly version: number;
  /** Command queueing supported. */
  readonly cmdQue: boolean;
  /** T10 vendor identification (trimmed). */
  readonly vendor: string;
  /** Product identification (trimmed). */
  readonly product: string;
  /** Product revision level (trimmed). */
  readonly revision: string;
}

const ascii = new TextDecoder("latin1");

/** Parses standard INQUIRY data (at least 36 bytes). */
export function parseInquiry(buf: Uint8Array): InquiryData {
  if (buf.length < 36) throw new SanError(`INQUIRY data is ${buf.length} bytes; need at least 36`);
  const b0 = buf[0] ?? 0;
  return {
    qualifier: b0 >> 5,
    deviceType: b0 & 0x1f,
    removable: ((buf[1] ?? 0) & 0x80) !== 0,
    version: buf[2] ?? 0,
    cmdQue: ((buf[7] ?? 0) & 0x02) !== 0,
    vendor: ascii.decode(buf.subarray(8, 16)).trim(),
    product: ascii.decode(buf.subarray(16, 32)).trim(),
    revision: ascii.decode(buf.subarray(32, 36)).trim(),
  };
}

/** VPD page: Unit Serial Number (SPC-4 7.8.16). */
export const VPD_UNIT_SERIAL = 0x80;
/** VPD page: Device Identification (SPC-4 7.8.6). */
export const VPD_DEVICE_ID = 0x83;

/** One designation descriptor of the Device Identification VPD page. */
export interface Designator {
  /** Designator type (SPC-4 table 459: 1 T10 vendor id, 2 EUI-64, 3 NAA, 8 SCSI name, …). */
  readonly type: number;
  /** Association: 0 the logical unit, 1 the target port, 2 the target device. */
  readonly association: number;
  /** Code set: 1 binary, 2 ASCII, 3 UTF-8. */
  readonly codeSet: number;
  /** The designator's bytes as lowercase hex. */
  readonly value: string;
}

function vpdPayload(buf: Uint8Array, page: number, what: string): Uint8Array {
  if (buf.length < 4 || buf[1] !== page) {
    throw new SanError(`${what} VPD page (0x${page.toString(16)}) is malformed`);
  }
  const len = ((buf[2] ?? 0) << 8) | (buf[3] ?? 0);
  return buf.subarray(4, Math.min(buf.length, 4 + len));
}

const hex = (b: Uint8Array): string =>
  Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** Parses the Device Identification VPD page (0x83) into its designators. */
export function parseDeviceIdentification(buf: Uint8Array): Designator[] {
  const body = vpdPayload(buf, VPD_DEVICE_ID, "Device Identification");
  const out: Designator[] = [];
  for (let off = 0; off + 4 <= body.length;) {
    const len = body[off + 3] ?? 0;
    if (off + 4 + len > body.length) {
      throw new SanError("Device Identification VPD page: a designator runs past the page");
    }
    out.push({
      codeSet: (body[off] ?? 0) & 0x0f,
      association: ((body[off + 1] ?? 0) >> 4) & 0x3,
      type: (body[off + 1] ?? 0) & 0x0f,
      value: hex(body.subarray(off + 4, off + 4 + len)),
    });
    off += 4 + len;
  }
  return out;
}

/** Parses the Unit Serial Number VPD page (0x80): the serial, trimmed. */
export function parseUnitSerial(buf: Uint8Array): string {
  return ascii.decode(vpdPayload(buf, VPD_UNIT_SERIAL, "Unit Serial Number")).replace(/\0+$/, "")
    .trim();
}

/** READ CAPACITY(16) data. */
export interface Capacity {
  /** Number of logical blocks. */
  readonly blocks: bigint;
  /** Logical block length in bytes. */
  readonly blockSize: number;
  /** Total size in bytes. */
  readonly bytes: bigint;
  /** Logical block provisioning management enabled (thin provisioning, UNMAP). */
  readonly thinProvisioned: boolean;
  /** Unmapped blocks read as zeros (LBPRZ). */
  readonly unmappedReadsZero: boolean;
}

/** Parses READ CAPACITY(16) data (at least 32 bytes). */
export function parseCapacity16(buf: Uint8Array): Capacity {
  if (buf.length < 14) throw new SanError(`READ CAPACITY(16) data is ${buf.length} bytes`);
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const blocks = v.getBigUint64(0) + 1n;
  const blockSize = v.getUint32(8);
  if (blockSize === 0 || blockSize > 1 << 20 || (blockSize & (blockSize - 1)) !== 0) {
    throw new SanError(`target reported an invalid block size ${blockSize}`);
  }
  return {
    blocks,
    blockSize,
    bytes: blocks * BigInt(blockSize),
    thinProvisioned: ((buf[14] ?? 0) & 0x80) !== 0,
    unmappedReadsZero: ((buf[14] ?? 0) & 0x40) !== 0,
  };
}

/** Parses REPORT LUNS data into LUN numbers (peripheral and flat addressing). */
export function parseReportLuns(buf: Uint8Array): number[] {
  if (buf.length < 8) throw new SanError(`REPORT LUNS data is ${buf.length} bytes`);
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const listLen = v.getUint32(0);
  const luns: number[] = [];
  for (let off = 8; off + 8 <= buf.length && off < 8 + listLen; off += 8) {
    const w = v.getUint16(off);
    const method = w >> 14;
    luns.push(method === 1 ? w & 0x3fff : w & 0xff);
  }
  return luns;
}

/** Fills `cdb` (16 bytes) with INQUIRY. */
export function cdbInquiry(cdb: Uint8Array, allocLen: number, evpd = false, page = 0): void {
  cdb.fill(0);
  cdb[0] = OPC_INQUIRY;
  cdb[1] = evpd ? 1 : 0;
  cdb[2] = page;
  cdb[3] = (allocLen >> 8) & 0xff;
  cdb[4] = allocLen & 0xff;
}

/** Fills `cdb` with READ CAPACITY(16). */
export function cdbReadCapacity16(cdb: Uint8Array, allocLen: number): void {
  cdb.fill(0);
  cdb[0] = OPC_SERVICE_ACTION_IN_16;
  cdb[1] = SA_READ_CAPACITY_16;
  new DataView(cdb.buffer, cdb.byteOffset, 16).setUint32(10, allocLen);
}

/** Fills `cdb` with READ(16) or WRITE(16) (FUA optional). */
export function cdbReadWrite16(
  cdb: Uint8Array,
  opcode: number,
  lba: number,
  blocks: number,
  fua = false,
): void {
  if (!Number.isSafeInteger(lba) || lba < 0) {
    throw new RangeError(`LBA ${lba} is not a non-negative safe integer`);
  }
  if (!Number.isInteger(blocks) || blocks < 0 || blocks > 0xffff_ffff) {
    throw new RangeError(`transfer length ${blocks} is out of range 0..4294967295`);
  }
  cdb.fill(0);
  cdb[0] = opcode;
  cdb[1] = fua ? 0x08 : 0;
  // Big-endian LBA (bytes 2..9) and transfer length (10..13), byte by byte: no
  // DataView or BigInt, which would allocate on every I/O.
  const hi = Math.floor(lba / 0x1_0000_0000);
  const lo = lba >>> 0;
  cdb[2] = hi >>> 24;
  cdb[3] = (hi >>> 16) & 0xff;
  cdb[4] = (hi >>> 8) & 0xff;
  cdb[5] = hi & 0xff;
  cdb[6] = lo >>> 24;
  cdb[7] = (lo >>> 16) & 0xff;
  cdb[8] = (lo >>> 8) & 0xff;
  cdb[9] = lo & 0xff;
  cdb[10] = blocks >>> 24;
  cdb[11] = (blocks >>> 16) & 0xff;
  cdb[12] = (blocks >>> 8) & 0xff;
  cdb[13] = blocks & 0xff;
}

/** Fills `cdb` with SYNCHRONIZE CACHE(16) over the whole medium. */
export function cdbSynchronizeCache16(cdb: Uint8Array): void {
  cdb.fill(0);
  cdb[0] = OPC_SYNCHRONIZE_CACHE_16;
}

/** Fills `cdb` with TEST UNIT READY. */
export function cdbTestUnitReady(cdb: Uint8Array): void {
  cdb.fill(0);
  cdb[0] = OPC_TEST_UNIT_READY;
}

/** Fills `cdb` with REPORT LUNS. */
export function cdbReportLuns(cdb: Uint8Array, allocLen: number): void {
  cdb.fill(0);
  cdb[0] = OPC_REPORT_LUNS;
  new DataView(cdb.buffer, cdb.byteOffset, 16).setUint32(6, allocLen);
}

/** Fills `cdb` with UNMAP for a parameter list of `paramLen` bytes. */
export function cdbUnmap(cdb: Uint8Array, paramLen: number): void {
  cdb.fill(0);
  cdb[0] = OPC_UNMAP;
  cdb[7] = (paramLen >> 8) & 0xff;
  cdb[8] = paramLen & 0xff;
}

/** Builds the UNMAP parameter list for one LBA range. */
export function unmapParameters(lba: number, blocks: number): Uint8Array {
  const buf = new Uint8Array(24);
  const v = new DataView(buf.buffer);
  v.setUint16(0, 22);
  v.setUint16(2, 16);
  v.setBigUint64(8, BigInt(lba));
  v.setUint32(16, blocks);
  return buf;
}
