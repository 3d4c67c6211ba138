/**
 * The SCSI tasks of an iSCSI session and the CmdSN window they go out under
 * (RFC 7143 §3.2.2.1, §4.2.2).
 *
 * A task is one SCSI command from submission to completion, under its own
 * Initiator Task Tag. Commands wait while the target's window (MaxCmdSN) is
 * closed and go out in order when it opens; writes send immediate and
 * unsolicited data as negotiated and answer R2Ts with Data-Out; Data-In lands
 * in the read buffer at its offset, checked against the buffer's length. After
 * a reconnect every task not yet complete is issued again, in CmdSN order.
 * The session (`iscsi_session.ts`) owns the connection and hands this table
 * the PDUs that concern tasks.
 *
 * @module
 */

import { IscsiProtocolError } from "./errors.ts";
import type { IscsiConnection } from "./iscsi_connection.ts";
import type { NegotiatedParams } from "./iscsi_login.ts";
import {
  ATTR_SIMPLE,
  FLAG_FINAL,
  FLAG_OVERFLOW,
  FLAG_READ,
  FLAG_STATUS,
  FLAG_UNDERFLOW,
  FLAG_WRITE,
  OFF_BUFFER_OFFSET,
  OFF_BYTE2,
  OFF_BYTE3,
  OFF_DESIRED_LEN,
  OFF_EXPCMDSN,
  OFF_FLAGS,
  OFF_ITT,
  OFF_MAXCMDSN,
  OFF_RESIDUAL,
  OFF_STATSN,
  OFF_TTT,
  RESERVED_TAG,
  snLess,
  snLessEq,
} from "./iscsi_pdu.ts";
import { pduLength, putDataOut, putScsiCommand } from "./iscsi_pdu_build.ts";
import { decodeSense, ScsiResponseError, type SenseData, STATUS_GOOD } from "./scsi.ts";
import { type CommandData, GOOD, type ScsiResult } from "./scsi_commands.ts";

/** One SCSI command from submission to completion. */
interface Task {
  itt: number;
  lun: number;
  cdb: Uint8Array;
  dataIn: Uint8Array | undefined;
  dataOut: Uint8Array | undefined;
  cmdSN: number;
  issued: boolean;
  resolve: (r: ScsiResult) => void;
  reject: (e: unknown) => void;
}

/** The tasks of one session and its command numbering. */
export class IscsiTasks {
  /** CmdSN of the next non-immediate command. */
  cmdSN = 0;
  /** The target's ExpCmdSN. */
  expCmdSN = 0;
  /** The target's MaxCmdSN: commands up to it may go out. */
  maxCmdSN = 0;
  /** StatSN of the last status seen + 1. */
  expStatSN = 0;
  /** The connection commands go out on while the session is in full feature phase. */
  #out: IscsiConnection | null = null;
  /** The parameters that connection's login negotiated. */
  #params: NegotiatedParams | null = null;
  readonly #tasks = new Map<number, Task>();
  readonly #waiting: Task[] = [];
  /** Commands issued and not completed (queued, on the wire or at the target). */
  #inFlight = 0;

  /** The session is in full feature phase on `conn`, with `params`: commands may go out. */
  online(conn: IscsiConnection, params: NegotiatedParams): void {
    this.#out = conn;
    this.#params = params;
  }

  /** The session left full feature phase: commands wait. */
  offline(): void {
    this.#out = null;
  }

  /** Tasks submitted and not complete (waiting or issued). */
  get size(): number {
    return this.#tasks.size;
  }

  /** Commands issued and not completed (queued, on the wire or at the target). */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Whether a task uses ITT `itt`. */
  has(itt: number): boolean {
    return this.#tasks.has(itt);
  }

  /** Starts numbering from a login's final response. */
  loggedIn(expStatSN: number, expCmdSN: number, maxCmdSN: number): void {
    this.expStatSN = expStatSN;
    this.expCmdSN = expCmdSN;
    this.maxCmdSN = maxCmdSN;
    this.cmdSN = expCmdSN;
  }

  /** Ends task `itt` with `err` if there is one (a Reject of its command); says whether there was. */
  reject(itt: number, err: unknown): boolean {
    const task = this.#tasks.get(itt);
    if (task === undefined) return false;
    this.#finish(task, undefined, err);
    return true;
  }

  /** After a new login: every issued task not complete goes out again, in CmdSN order, first. */
  reissue(): void {
    const pending = [...this.#tasks.values()].filter((t) => t.issued);
    pending.sort((a, b) => (snLess(a.cmdSN, b.cmdSN) ? -1 : 1));
    for (const t of pending) t.issued = false;
    this.#inFlight = 0;
    this.#waiting.unshift(...pending);
    this.dispatch();
  }

  /** Fails every task with `err`. */
  failAll(err: unknown): void {
    const tasks = [...this.#tasks.values()];
    this.#tasks.clear();
    this.#waiting.length = 0;
    for (const t of tasks) t.reject(err);
  }

  /** Takes the target's ExpCmdSN/MaxCmdSN from a response at `off`; waiting commands go out if the window opened. */
  updateWindow(v: DataView, off: number): void {
    const exp = v.getUint32(off + OFF_EXPCMDSN);
    const max = v.getUint32(off + OFF_MAXCMDSN);
    // RFC 7143 §4.2.2.1: ignore the pair if MaxCmdSN < ExpCmdSN - 1.
    if (snLess(max, (exp - 1) >>> 0)) return;
    if (snLess(this.expCmdSN, exp)) this.expCmdSN = exp;
    if (snLess(this.maxCmdSN, max)) {
      this.maxCmdSN = max;
      if (this.#waiting.length > 0) this.dispatch();
    }
  }

  /**
   * The slice of task `itt`'s read buffer that a Data-In payload of `dlen`
   * bytes at `bufOff` belongs in, or undefined to take the ordinary path
   * (unknown task or out of bounds: the ordinary path reports those).
   */
  directTarget(itt: number, bufOff: number, dlen: number): Uint8Array | undefined {
    const task = this.#tasks.get(itt);
    const dst = task?.dataIn;
    if (task === undefined || !task.issued || dst === undefined) return undefined;
    if (bufOff + dlen > dst.length) return undefined;
    return dst.subarray(bufOff, bufOff + dlen);
  }

  /** A Data-In PDU (its payload already in place when `placed`). */
  onDataIn(
    buf: Uint8Array,
    v: DataView,
    off: number,
    dataOff: number,
    dlen: number,
    placed = false,
  ): void {
    const itt = v.getUint32(off + OFF_ITT);
    const task = this.#tasks.get(itt);
    const flags = v.getUint8(off + OFF_FLAGS);
    this.updateWindow(v, off);
    if (task === undefined || !task.issued) {
      throw new IscsiProtocolError(`Data-In for unknown task ${itt}`);
    }
    const bufOff = v.getUint32(off + OFF_BUFFER_OFFSET);
    const dst = task.dataIn;
    if (dlen > 0 && !placed) {
      if (dst === undefined || bufOff + dlen > dst.length) {
        this.#finish(
          task,
          undefined,
          new IscsiProtocolError(
            `target sent Data-In [${bufOff}, +${dlen}) beyond the ${dst?.length ?? 0}-byte buffer`,
          ),
        );
        return;
      }
      dst.set(buf.subarray(dataOff, dataOff + dlen), bufOff);
    }
    if ((flags & FLAG_STATUS) !== 0) {
      this.expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
      const status = v.getUint8(off + OFF_BYTE3);
      const residual = v.getUint32(off + OFF_RESIDUAL);
      // The common case, a whole transfer with GOOD status, shares one result: no allocation.
      const whole = status === STATUS_GOOD && residual === 0 &&
        (flags & (FLAG_UNDERFLOW | FLAG_OVERFLOW)) === 0;
      this.#finish(
        task,
        whole ? GOOD : {
          status,
          residual,
          underflow: (flags & FLAG_UNDERFLOW) !== 0,
          overflow: (flags & FLAG_OVERFLOW) !== 0,
          sense: undefined,
        },
      );
    }
  }

  /** A SCSI Response PDU. */
  onResponse(buf: Uint8Array, v: DataView, off: number, dataOff: number, dlen: number): void {
    const itt = v.getUint32(off + OFF_ITT);
    this.expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
    this.updateWindow(v, off);
    const task = this.#tasks.get(itt);
    if (task === undefined || !task.issued) {
      throw new IscsiProtocolError(`SCSI Response for unknown task ${itt}`);
    }
    const response = v.getUint8(off + OFF_BYTE2);
    if (response !== 0) {
      this.#finish(task, undefined, new ScsiResponseError(task.cdb[0] ?? 0, response));
      return;
    }
    let sense: SenseData | undefined;
    if (dlen >= 2) {
      const senseLen = v.getUint16(dataOff);
      const end = Math.min(dataOff + 2 + senseLen, dataOff + dlen);
      sense = decodeSense(buf.subarray(dataOff + 2, end));
    }
    const flags = v.getUint8(off + OFF_FLAGS);
    this.#finish(task, {
      status: v.getUint8(off + OFF_BYTE3),
      residual: v.getUint32(off + OFF_RESIDUAL),
      underflow: (flags & FLAG_UNDERFLOW) !== 0,
      overflow: (flags & FLAG_OVERFLOW) !== 0,
      sense,
    });
  }

  /** An R2T: sends the Data-Out it asks for. */
  onR2T(v: DataView, off: number): void {
    const itt = v.getUint32(off + OFF_ITT);
    const task = this.#tasks.get(itt);
    if (task === undefined || !task.issued) {
      throw new IscsiProtocolError(`R2T for unknown task ${itt}`);
    }
    const ttt = v.getUint32(off + OFF_TTT);
    const bufOff = v.getUint32(off + OFF_BUFFER_OFFSET);
    const want = v.getUint32(off + OFF_DESIRED_LEN);
    const data = task.dataOut;
    if (data === undefined || want === 0 || bufOff + want > data.length) {
      this.#finish(
        task,
        undefined,
        new IscsiProtocolError(
          `target asked (R2T) for [${bufOff}, +${want}) of a ${data?.length ?? 0}-byte write`,
        ),
      );
      return;
    }
    this.#sendDataOut(task, data, bufOff, want, ttt);
  }

  #sendDataOut(
    task: Task,
    data: Uint8Array,
    from: number,
    len: number,
    ttt: number,
    hold = false,
  ): void {
    const c = this.#out;
    const p = this.#params;
    if (c === null || p === null) return;
    const seg = p.targetMaxRecvDataSegmentLength;
    let dataSN = 0;
    for (let o = from; o < from + len; o += seg) {
      const n = Math.min(seg, from + len - o);
      const at = c.reserve(pduLength(n));
      putDataOut(
        c.out,
        c.outView,
        at,
        o + n >= from + len,
        task.lun,
        task.itt,
        ttt,
        this.expStatSN,
        dataSN++,
        data,
        o,
        n,
      );
      c.queued(hold);
    }
  }

  #finish(task: Task, result: ScsiResult | undefined, err?: unknown): void {
    this.#tasks.delete(task.itt);
    if (task.issued) {
      task.issued = false;
      this.#inFlight--;
      // Held commands go out once the target's queue runs low.
      this.#out?.release();
    }
    if (err !== undefined || result === undefined) task.reject(err);
    else task.resolve(result);
  }

  // ---------------------------------------------------------------- commands

  /** Issues waiting commands while the CmdSN window is open (in full feature phase only). */
  dispatch(): void {
    if (this.#out === null) return;
    while (this.#waiting.length > 0 && snLessEq(this.cmdSN, this.maxCmdSN)) {
      const task = this.#waiting.shift();
      if (task === undefined) break;
      if (!this.#tasks.has(task.itt)) continue;
      this.#issue(task);
    }
  }

  #issue(task: Task): void {
    const c = this.#out;
    const p = this.#params;
    if (c === null || p === null) return;
    const data = task.dataOut;
    let immediate = 0;
    if (data !== undefined && p.immediateData) {
      immediate = Math.min(data.length, p.firstBurstLength, p.targetMaxRecvDataSegmentLength);
    }
    task.cmdSN = this.cmdSN;
    this.cmdSN = (this.cmdSN + 1) >>> 0;
    task.issued = true;
    this.#inFlight++;
    let flags = FLAG_FINAL | ATTR_SIMPLE;
    if (task.dataIn !== undefined) flags |= FLAG_READ;
    if (data !== undefined) flags |= FLAG_WRITE;
    const unsolicited = data !== undefined && !p.initialR2T
      ? Math.min(data.length, p.firstBurstLength)
      : immediate;
    if (unsolicited > immediate) flags &= ~FLAG_FINAL;
    // Encoded straight into the output buffer: no per-command allocation.
    const off = c.reserve(pduLength(immediate));
    putScsiCommand(
      c.out,
      c.outView,
      off,
      flags,
      task.lun,
      task.itt,
      data?.length ?? task.dataIn?.length ?? 0,
      task.cmdSN,
      this.expStatSN,
      task.cdb,
      data,
      immediate,
    );
    c.queued(true);
    if (data !== undefined && unsolicited > immediate) {
      this.#sendDataOut(task, data, immediate, unsolicited - immediate, RESERVED_TAG, true);
    }
  }

  /**
   * Submits a command as task `itt` (an ITT no task or request uses): it goes
   * out at once when the window is open and nothing waits before it.
   */
  submit(itt: number, lun: number, cdb: Uint8Array, d: CommandData): Promise<ScsiResult> {
    return new Promise<ScsiResult>((resolve, reject) => {
      const task: Task = {
        itt,
        lun,
        cdb,
        dataIn: d.dataIn,
        dataOut: d.dataOut,
        cmdSN: 0,
        issued: false,
        resolve,
        reject,
      };
      this.#tasks.set(task.itt, task);
      if (
        this.#out !== null && this.#waiting.length === 0 &&
        snLessEq(this.cmdSN, this.maxCmdSN)
      ) {
        this.#issue(task);
      } else {
        this.#waiting.push(task);
      }
    });
  }
}
