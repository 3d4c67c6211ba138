/**
 * What each PDU from the target means to an initiator session (RFC 7143
 * §11): Data-In, SCSI Responses and R2Ts go to the tasks; Login, Text and
 * Logout Responses to the request waiting under their ITT; NOP-Ins to the
 * keepalive; a Reject to what it rejected; every response's ExpCmdSN and
 * MaxCmdSN to the CmdSN window.
 *
 * @module
 */

import { IscsiConnectionError, IscsiProtocolError } from "./errors.ts";
import type { IscsiNop } from "./iscsi_nop.ts";
import type { IscsiRequests } from "./iscsi_requests.ts";
import type { IscsiTasks } from "./iscsi_tasks.ts";
import {
  BHS_LEN,
  OFF_BYTE2,
  OFF_DATASN,
  OFF_ITT,
  OFF_OPCODE,
  OFF_STATSN,
  OP_ASYNC,
  OP_DATA_IN,
  OP_LOGIN_RSP,
  OP_LOGOUT_RSP,
  OP_NOP_IN,
  OP_R2T,
  OP_REJECT,
  OP_SCSI_RSP,
  OP_TEXT_RSP,
  OP_TMF_RSP,
  OPCODE_MASK,
} from "./iscsi_pdu.ts";

/** The parts of a session the target's PDUs go to. */
export interface SessionParts {
  /** The SCSI tasks and the CmdSN window. */
  readonly tasks: IscsiTasks;
  /** The requests that are not tasks. */
  readonly requests: IscsiRequests;
  /** Pings, ours and the target's. */
  readonly nop: IscsiNop;
}

/**
 * Hands the PDU whose header is at `off` of `buf` (its data segment of
 * `dlen` bytes at `dataOff`) to the part of session `s` it concerns; throws
 * (ending the connection) on a PDU no part expects.
 */
export function dispatchPdu(
  s: SessionParts,
  buf: Uint8Array,
  v: DataView,
  off: number,
  dataOff: number,
  dlen: number,
): void {
  const op = v.getUint8(off + OFF_OPCODE) & OPCODE_MASK;
  switch (op) {
    case OP_DATA_IN:
      s.tasks.onDataIn(buf, v, off, dataOff, dlen);
      return;
    case OP_SCSI_RSP:
      s.tasks.onResponse(buf, v, off, dataOff, dlen);
      return;
    case OP_R2T:
      s.tasks.updateWindow(v, off);
      s.tasks.onR2T(v, off);
      return;
    case OP_NOP_IN:
      s.nop.onNopIn(v, off);
      return;
    case OP_LOGIN_RSP:
    case OP_TEXT_RSP:
    case OP_LOGOUT_RSP: {
      if (op !== OP_LOGIN_RSP) {
        s.tasks.expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
        s.tasks.updateWindow(v, off);
      }
      const itt = v.getUint32(off + OFF_ITT);
      const rsp = {
        header: buf.slice(off, off + BHS_LEN),
        data: buf.slice(dataOff, dataOff + dlen),
      };
      if (!s.requests.answer(itt, rsp)) {
        throw new IscsiProtocolError(
          `unexpected response opcode 0x${op.toString(16)} for ITT ${itt}`,
        );
      }
      return;
    }
    case OP_REJECT:
      onReject(s, buf, v, off, dataOff, dlen);
      return;
    case OP_ASYNC: {
      s.tasks.updateWindow(v, off);
      const event = v.getUint8(off + OFF_DATASN);
      // 1: logout requested, 2/3: connection/session dropped; log in afresh.
      if (event >= 1 && event <= 3) {
        throw new IscsiConnectionError(`target sent asynchronous event ${event}; reconnecting`);
      }
      return;
    }
    case OP_TMF_RSP:
      s.tasks.updateWindow(v, off);
      return;
    default:
      throw new IscsiProtocolError(`target sent unknown opcode 0x${op.toString(16)}`);
  }
}

/** A Reject: fails the task or request whose PDU the target refused (§11.17). */
function onReject(
  s: SessionParts,
  buf: Uint8Array,
  v: DataView,
  off: number,
  dataOff: number,
  dlen: number,
): void {
  s.tasks.updateWindow(v, off);
  const reason = v.getUint8(off + OFF_BYTE2);
  if (dlen < BHS_LEN) {
    throw new IscsiProtocolError(`target sent Reject (reason 0x${reason.toString(16)})`);
  }
  const rejected = new DataView(buf.buffer, buf.byteOffset + dataOff, BHS_LEN);
  const itt = rejected.getUint32(OFF_ITT);
  const err = new IscsiProtocolError(
    `target rejected a PDU (opcode 0x${(rejected.getUint8(0) & OPCODE_MASK).toString(16)}, ` +
      `reason 0x${reason.toString(16)})`,
  );
  if (s.tasks.reject(itt, err)) return;
  const answer = { header: buf.slice(dataOff, dataOff + BHS_LEN), data: new Uint8Array(0) };
  if (!s.requests.answer(itt, answer)) throw err;
}
