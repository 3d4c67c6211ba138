/**
 * The initiator's PDUs (RFC 7143 §11), each built in one place.
 *
 * Every builder writes one whole PDU at `off` of `buf` (seen through `v`):
 * the 48-byte header, every field the PDU owns (the rest of the header
 * zeroed), the data segment and its padding. So a builder may write into a
 * fresh array or straight into a connection's output buffer, reused and not
 * cleared, with no allocation per PDU. {@link pduLength} is the size to
 * reserve.
 *
 * @module
 */

import {
  BHS_LEN,
  FLAG_FINAL,
  FLAG_IMMEDIATE,
  FLAG_TRANSIT,
  OFF_BUFFER_OFFSET,
  OFF_CDB,
  OFF_CMDSN,
  OFF_DATASN,
  OFF_EDTL,
  OFF_EXPSTATSN,
  OFF_FLAGS,
  OFF_ISID,
  OFF_ITT,
  OFF_LUN,
  OFF_OPCODE,
  OFF_TSIH,
  OFF_TTT,
  OP_DATA_OUT,
  OP_LOGIN_REQ,
  OP_LOGOUT_REQ,
  OP_NOP_OUT,
  OP_SCSI_CMD,
  OP_TEXT_REQ,
  padded,
  setDataSegmentLength,
  setLun,
} from "./iscsi_pdu.ts";

/** Bytes a PDU with a `dataLen`-byte data segment takes on the wire (no AHS, no digests). */
export function pduLength(dataLen: number): number {
  return BHS_LEN + padded(dataLen);
}

/** Zeroes the header and the data segment's padding of a PDU about to be written at `off`. */
function clear(buf: Uint8Array, off: number, dataLen: number): void {
  buf.fill(0, off, off + BHS_LEN);
  const end = off + BHS_LEN + dataLen;
  buf.fill(0, end, off + pduLength(dataLen));
}

/** A PDU in a fresh array of its own size. */
export function newPdu(
  dataLen: number,
  build: (buf: Uint8Array, v: DataView) => void,
): Uint8Array {
  const buf = new Uint8Array(pduLength(dataLen));
  build(buf, new DataView(buf.buffer));
  return buf;
}

/**
 * NOP-Out (§11.18), immediate, final. A ping of ours carries our `itt` and the
 * reserved TTT; an answer to the target's NOP-In carries the reserved ITT and
 * the target's `ttt` and `lun` (the 8 raw LUN bytes of its NOP-In).
 */
export function putNopOut(
  buf: Uint8Array,
  v: DataView,
  off: number,
  itt: number,
  ttt: number,
  cmdSN: number,
  expStatSN: number,
  lun: bigint = 0n,
): void {
  clear(buf, off, 0);
  v.setUint8(off + OFF_OPCODE, OP_NOP_OUT | FLAG_IMMEDIATE);
  v.setUint8(off + OFF_FLAGS, FLAG_FINAL);
  v.setBigUint64(off + OFF_LUN, lun);
  v.setUint32(off + OFF_ITT, itt);
  v.setUint32(off + OFF_TTT, ttt);
  v.setUint32(off + OFF_CMDSN, cmdSN);
  v.setUint32(off + OFF_EXPSTATSN, expStatSN);
}

/**
 * Login Request (§11.12), immediate, version 0, CID 0. `transit` asks to move
 * from stage `csg` to `nsg`; `data` is the login text.
 */
export function putLoginRequest(
  buf: Uint8Array,
  v: DataView,
  off: number,
  isid: Uint8Array,
  tsih: number,
  itt: number,
  csg: number,
  nsg: number,
  transit: boolean,
  cmdSN: number,
  expStatSN: number,
  data: Uint8Array,
): void {
  clear(buf, off, data.length);
  v.setUint8(off + OFF_OPCODE, OP_LOGIN_REQ | FLAG_IMMEDIATE);
  v.setUint8(off + OFF_FLAGS, (transit ? FLAG_TRANSIT | nsg : 0) | (csg << 2));
  setDataSegmentLength(v, off, data.length);
  buf.set(isid, off + OFF_ISID);
  v.setUint16(off + OFF_TSIH, tsih);
  v.setUint32(off + OFF_ITT, itt);
  v.setUint32(off + OFF_CMDSN, cmdSN);
  v.setUint32(off + OFF_EXPSTATSN, expStatSN);
  buf.set(data, off + BHS_LEN);
}

/** Text Request (§11.10), immediate, final; `ttt` continues a target's multi-PDU answer. */
export function putTextRequest(
  buf: Uint8Array,
  v: DataView,
  off: number,
  itt: number,
  ttt: number,
  cmdSN: number,
  expStatSN: number,
  data: Uint8Array,
): void {
  clear(buf, off, data.length);
  v.setUint8(off + OFF_OPCODE, OP_TEXT_REQ | FLAG_IMMEDIATE);
  v.setUint8(off + OFF_FLAGS, FLAG_FINAL);
  setDataSegmentLength(v, off, data.length);
  v.setUint32(off + OFF_ITT, itt);
  v.setUint32(off + OFF_TTT, ttt);
  v.setUint32(off + OFF_CMDSN, cmdSN);
  v.setUint32(off + OFF_EXPSTATSN, expStatSN);
  buf.set(data, off + BHS_LEN);
}

/** Logout Request (§11.14), immediate, reason 0: close the session. */
export function putLogoutRequest(
  buf: Uint8Array,
  v: DataView,
  off: number,
  itt: number,
  cmdSN: number,
  expStatSN: number,
): void {
  clear(buf, off, 0);
  v.setUint8(off + OFF_OPCODE, OP_LOGOUT_REQ | FLAG_IMMEDIATE);
  v.setUint8(off + OFF_FLAGS, FLAG_FINAL); // reason code 0 in the low bits
  v.setUint32(off + OFF_ITT, itt);
  v.setUint32(off + OFF_CMDSN, cmdSN);
  v.setUint32(off + OFF_EXPSTATSN, expStatSN);
}

/**
 * SCSI Command (§11.3) with `flags` (FLAG_FINAL, FLAG_READ, FLAG_WRITE, task
 * attribute), a 16-byte `cdb` and the first `immediate` bytes of `data` as
 * immediate data.
 */
export function putScsiCommand(
  buf: Uint8Array,
  v: DataView,
  off: number,
  flags: number,
  lun: number,
  itt: number,
  edtl: number,
  cmdSN: number,
  expStatSN: number,
  cdb: Uint8Array,
  data: Uint8Array | undefined,
  immediate: number,
): void {
  clear(buf, off, immediate);
  v.setUint8(off + OFF_OPCODE, OP_SCSI_CMD);
  v.setUint8(off + OFF_FLAGS, flags);
  setDataSegmentLength(v, off, immediate);
  setLun(v, off, lun);
  v.setUint32(off + OFF_ITT, itt);
  v.setUint32(off + OFF_EDTL, edtl);
  v.setUint32(off + OFF_CMDSN, cmdSN);
  v.setUint32(off + OFF_EXPSTATSN, expStatSN);
  buf.set(cdb, off + OFF_CDB);
  if (immediate > 0 && data !== undefined) buf.set(data.subarray(0, immediate), off + BHS_LEN);
}

/**
 * SCSI Data-Out (§11.8): bytes [`from`, `from` + `len`) of `data`, the
 * `dataSN`th PDU of its sequence; `final` on the sequence's last PDU; `ttt`
 * the R2T's tag, or the reserved tag for unsolicited data.
 */
export function putDataOut(
  buf: Uint8Array,
  v: DataView,
  off: number,
  final: boolean,
  lun: number,
  itt: number,
  ttt: number,
  expStatSN: number,
  dataSN: number,
  data: Uint8Array,
  from: number,
  len: number,
): void {
  clear(buf, off, len);
  v.setUint8(off + OFF_OPCODE, OP_DATA_OUT);
  v.setUint8(off + OFF_FLAGS, final ? FLAG_FINAL : 0);
  setDataSegmentLength(v, off, len);
  setLun(v, off, lun);
  v.setUint32(off + OFF_ITT, itt);
  v.setUint32(off + OFF_TTT, ttt);
  v.setUint32(off + OFF_EXPSTATSN, expStatSN);
  v.setUint32(off + OFF_DATASN, dataSN);
  v.setUint32(off + OFF_BUFFER_OFFSET, from);
  buf.set(data.subarray(from, from + len), off + BHS_LEN);
}
