/**
 * iSCSI PDU layout (RFC 7143 §11): the 48-byte Basic Header Segment, opcodes
 * and field offsets, described once and shared by the encoder and decoder.
 * All multi-byte fields are big-endian.
 *
 * @module
 */

/** Length of the Basic Header Segment. */
export const BHS_LEN = 48;

/** Initiator opcodes. */
export const OP_NOP_OUT = 0x00;
/** SCSI Command. */
export const OP_SCSI_CMD = 0x01;
/** Login Request. */
export const OP_LOGIN_REQ = 0x03;
/** Text Request. */
export const OP_TEXT_REQ = 0x04;
/** SCSI Data-Out. */
export const OP_DATA_OUT = 0x05;
/** Logout Request. */
export const OP_LOGOUT_REQ = 0x06;
/** NOP-In. */
export const OP_NOP_IN = 0x20;
/** SCSI Response. */
export const OP_SCSI_RSP = 0x21;
/** Task Management Function Response. */
export const OP_TMF_RSP = 0x22;
/** Login Response. */
export const OP_LOGIN_RSP = 0x23;
/** Text Response. */
export const OP_TEXT_RSP = 0x24;
/** SCSI Data-In. */
export const OP_DATA_IN = 0x25;
/** Logout Response. */
export const OP_LOGOUT_RSP = 0x26;
/** Ready To Transfer. */
export const OP_R2T = 0x31;
/** Asynchronous Message. */
export const OP_ASYNC = 0x32;
/** Reject. */
export const OP_REJECT = 0x3f;

/** Byte 0: the Immediate delivery bit. */
export const FLAG_IMMEDIATE = 0x40;
/** Byte 0: opcode mask. */
export const OPCODE_MASK = 0x3f;
/** Byte 1: Final bit. */
export const FLAG_FINAL = 0x80;
/** SCSI Command byte 1: Read bit. */
export const FLAG_READ = 0x40;
/** SCSI Command byte 1: Write bit. */
export const FLAG_WRITE = 0x20;
/** SCSI Command byte 1: task attribute SIMPLE. */
export const ATTR_SIMPLE = 0x01;
/** Login byte 1: Transit bit. */
export const FLAG_TRANSIT = 0x80;
/** Login/Text byte 1: Continue bit. */
export const FLAG_CONTINUE = 0x40;
/** Data-In byte 1: Status present. */
export const FLAG_STATUS = 0x01;
/** Data-In / Response byte 1: residual Underflow. */
export const FLAG_UNDERFLOW = 0x02;
/** Data-In / Response byte 1: residual Overflow. */
export const FLAG_OVERFLOW = 0x04;

/** Reserved tag value ("no tag"). */
export const RESERVED_TAG = 0xffffffff;

/** Offsets of fields in the BHS. */
export const OFF_OPCODE = 0;
/** Flags byte. */
export const OFF_FLAGS = 1;
/** Response (SCSI Response, Logout Response) / Version-max (Login). */
export const OFF_BYTE2 = 2;
/** Status (SCSI Response, Data-In) / Version-min (Login). */
export const OFF_BYTE3 = 3;
/** TotalAHSLength, in 4-byte words. */
export const OFF_AHS_LEN = 4;
/** DataSegmentLength, 24-bit. */
export const OFF_DATA_LEN = 5;
/** LUN (8 bytes) or ISID+TSIH in login PDUs. */
export const OFF_LUN = 8;
/** Login: ISID (6 bytes). */
export const OFF_ISID = 8;
/** Login: TSIH (2 bytes). */
export const OFF_TSIH = 14;
/** Initiator Task Tag. */
export const OFF_ITT = 16;
/** Target Transfer Tag / Expected Data Transfer Length (SCSI Command) / CID (login, logout). */
export const OFF_TTT = 20;
/** Expected Data Transfer Length (SCSI Command). */
export const OFF_EDTL = 20;
/** CmdSN (requests) / StatSN (responses). */
export const OFF_CMDSN = 24;
/** StatSN in responses. */
export const OFF_STATSN = 24;
/** ExpStatSN (requests) / ExpCmdSN (responses). */
export const OFF_EXPSTATSN = 28;
/** ExpCmdSN in responses. */
export const OFF_EXPCMDSN = 28;
/** MaxCmdSN in responses. */
export const OFF_MAXCMDSN = 32;
/** CDB (16 bytes) in SCSI Command. */
export const OFF_CDB = 32;
/** DataSN / R2TSN / ExpDataSN. */
export const OFF_DATASN = 36;
/** Login response: Status-Class. */
export const OFF_STATUS_CLASS = 36;
/** Login response: Status-Detail. */
export const OFF_STATUS_DETAIL = 37;
/** Buffer Offset (Data-In, Data-Out, R2T). */
export const OFF_BUFFER_OFFSET = 40;
/** Desired Data Transfer Length (R2T) / Residual Count (Data-In, Response). */
export const OFF_DESIRED_LEN = 44;
/** Residual count. */
export const OFF_RESIDUAL = 44;

/** Login stages (CSG/NSG). */
export const STAGE_SECURITY = 0;
/** Operational negotiation stage. */
export const STAGE_OPERATIONAL = 1;
/** Full feature phase. */
export const STAGE_FULL_FEATURE = 3;

/** Rounds a data-segment length up to the 4-byte padding boundary. */
export function padded(len: number): number {
  return (len + 3) & ~3;
}

/** Reads the 24-bit DataSegmentLength of a BHS at `off` in `view`. */
export function dataSegmentLength(view: DataView, off: number): number {
  return (view.getUint8(off + OFF_DATA_LEN) << 16) | view.getUint16(off + OFF_DATA_LEN + 1);
}

/** Writes the 24-bit DataSegmentLength. */
export function setDataSegmentLength(view: DataView, off: number, len: number): void {
  view.setUint8(off + OFF_DATA_LEN, (len >>> 16) & 0xff);
  view.setUint16(off + OFF_DATA_LEN + 1, len & 0xffff);
}

/** Writes an 8-byte LUN field in the flat single-level format (SAM, peripheral addressing). */
export function setLun(view: DataView, off: number, lun: number): void {
  if (lun < 256) {
    view.setUint16(off + OFF_LUN, lun);
  } else {
    view.setUint16(off + OFF_LUN, 0x4000 | (lun & 0x3fff));
  }
  view.setUint16(off + OFF_LUN + 2, 0);
  view.setUint32(off + OFF_LUN + 4, 0);
}

/** Serial number arithmetic (RFC 1982, 32-bit): a < b. */
export function snLess(a: number, b: number): boolean {
  return a !== b && ((b - a) >>> 0) < 0x80000000;
}

/** Serial number arithmetic: a <= b. */
export function snLessEq(a: number, b: number): boolean {
  return a === b || snLess(a, b);
}
