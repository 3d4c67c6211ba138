/**
 * An iSCSI initiator session over TCP (RFC 7143), written in TypeScript.
 *
 * One connection per session, ErrorRecoveryLevel 0, no digests. Login
 * (`iscsi_login.ts`) goes through the security stage (AuthMethod None or
 * CHAP, optionally mutual) and operational negotiation. In full feature phase
 * many SCSI commands are in flight at once, each with its own Initiator Task
 * Tag, bounded by the target's CmdSN window; writes send immediate and
 * unsolicited data as negotiated and answer R2Ts with Data-Out. A NOP-Out
 * keepalive detects dead connections. When the connection drops or the
 * target restarts, the session logs in again (same ISID, so the target
 * reinstates it) and re-issues every command that had not completed, so no
 * acknowledged write is lost and none is issued twice after its
 * acknowledgement.
 *
 * The session holds the connection's life: login, loss, reconnect and
 * keepalive, and the requests that are not SCSI tasks (NOP, SendTargets,
 * Logout). Its parts live beside it: login negotiation in `iscsi_login.ts`
 * (no socket), the socket with its read loop and output buffer in
 * `iscsi_connection.ts`, the tasks and CmdSN window in `iscsi_tasks.ts`, and
 * every PDU is built in one place, `iscsi_pdu_build.ts`.
 *
 * @module
 */

import { IscsiConnectionError, IscsiProtocolError, IscsiSessionClosedError } from "./errors.ts";
import type { ChapCredentials } from "./chap.ts";
import { decodeText, encodeText } from "./iscsi_text.ts";
import { parseIscsiName } from "./iscsi_name.ts";
import { IscsiConnection, type PduSink } from "./iscsi_connection.ts";
import { type CommandData, IscsiTasks, type ScsiResult } from "./iscsi_tasks.ts";
import {
  DEFAULT_MRDSL,
  type NegotiatedParams,
  negotiateLogin,
  type RawPdu,
} from "./iscsi_login.ts";
import {
  BHS_LEN,
  FLAG_FINAL,
  OFF_BYTE2,
  OFF_DATASN,
  OFF_FLAGS,
  OFF_ITT,
  OFF_LUN,
  OFF_OPCODE,
  OFF_STATSN,
  OFF_TTT,
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
  RESERVED_TAG,
} from "./iscsi_pdu.ts";
import { pduLength, putLogoutRequest, putNopOut, putTextRequest } from "./iscsi_pdu_build.ts";
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
  STATUS_BUSY,
  STATUS_CHECK_CONDITION,
  STATUS_GOOD,
  STATUS_TASK_SET_FULL,
  unmapParameters,
} from "./scsi.ts";

export type { NegotiatedParams } from "./iscsi_login.ts";
export type { CommandData, ScsiResult } from "./iscsi_tasks.ts";

/** Default iSCSI port. */
export const ISCSI_PORT = 3260;

/** How to reach and log in to a target. */
export interface IscsiSessionOptions {
  /** Target portal host (an IP literal or name; vmkit's tests use 127.0.0.1). */
  readonly host: string;
  /** Target portal port (default 3260). */
  readonly port?: number;
  /** The initiator name to log in with: the VM's SUI. */
  readonly initiatorName: string;
  /** Target IQN; omit for a discovery session. */
  readonly targetName?: string;
  /** CHAP credentials; without them AuthMethod=None is offered. */
  readonly chap?: ChapCredentials;
  /** Log in again and re-issue pending commands after a connection loss (default true). */
  readonly reconnect?: boolean;
  /** Give up reconnecting after this long, refused logins included (default 60 s). */
  readonly reconnectTimeoutMs?: number;
  /** Send a NOP-Out ping after this long without traffic; 0 disables (default 5 s). */
  readonly keepaliveMs?: number;
  /** Declare the connection dead when a ping is unanswered this long (default 10 s). */
  readonly nopTimeoutMs?: number;
  /** Login must finish within this long (default 10 s). */
  readonly loginTimeoutMs?: number;
  /** MaxRecvDataSegmentLength to declare (default 262144). */
  readonly maxRecvDataSegmentLength?: number;
  /** Offered MaxBurstLength (default 1 MiB). */
  readonly maxBurstLength?: number;
  /** Offered FirstBurstLength (default 256 KiB). */
  readonly firstBurstLength?: number;
  /** Retries of commands failing with UNIT ATTENTION, BUSY or TASK SET FULL (default 5). */
  readonly retries?: number;
}

/** A target found by SendTargets discovery. */
export interface DiscoveredTarget {
  /** Target IQN. */
  readonly name: string;
  /** Portals as "host:port,tpgt". */
  readonly addresses: string[];
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function randomIsid(): Uint8Array {
  const isid = crypto.getRandomValues(new Uint8Array(6));
  // Type 0b10 "random": T=2 in the top two bits, the rest random.
  isid[0] = 0x80 | ((isid[0] ?? 0) & 0x3f);
  return isid;
}

/** A response that stands for "the connection went away" in {@link IscsiSession}'s waiters. */
const LOST: RawPdu = { header: new Uint8Array(0), data: new Uint8Array(0) };

/**
 * A logged-in iSCSI session.
 *
 * @example
 * ```ts ignore
 * // ignore: needs an iSCSI target on 127.0.0.1:3260.
 * const s = await IscsiSession.connect({
 *   host: "127.0.0.1", port: 3260,
 *   initiatorName: "iqn.2024-01.dev.vmkit:vm-1",
 *   targetName: "iqn.2024-01.example:disk1",
 * });
 * const cap = await s.readCapacity16(1);
 * const buf = new Uint8Array(cap.blockSize);
 * await s.read16(1, 0, 1, buf);
 * await s.logout();
 * ```
 */
export class IscsiSession {
  /** The options the session was opened with. */
  readonly options: IscsiSessionOptions;
  /** The normalised initiator name (the VM's SUI). */
  readonly initiatorName: string;
  /** Number of times the session logged in again after a connection loss. */
  reconnects = 0;
  /** Number of keepalive NOP-Out pings the target answered. */
  keepalivesAnswered = 0;
  /** Number of target NOP-In pings this session answered. */
  targetPingsAnswered = 0;
  #params: NegotiatedParams | undefined;
  readonly #isid: Uint8Array = randomIsid();
  #nextItt = 1;
  readonly #tasks: IscsiTasks = new IscsiTasks();
  readonly #waiters = new Map<number, (pdu: RawPdu) => void>();
  #connection: IscsiConnection | undefined;
  #state: "login" | "ready" | "reconnecting" | "closed" = "login";
  #pingItt = -1;
  #pingSent = 0;
  #keepalive: ReturnType<typeof setInterval> | undefined;
  #reconnecting: Promise<void> | undefined;
  #loginError: unknown;
  /** The session's side of its connections. */
  readonly #sink: PduSink = {
    pdu: (buf, v, off, dataOff, dlen) => this.#handlePdu(buf, v, off, dataOff, dlen),
    directTarget: (itt, bufOff, dlen) => this.#tasks.directTarget(itt, bufOff, dlen),
    placedDataIn: (buf, v, off, dlen) =>
      this.#tasks.onDataIn(buf, v, off, off + BHS_LEN, dlen, true),
    inFlight: () => this.#tasks.inFlight,
    lost: (c, cause) => this.#connectionLost(c, cause),
  };

  private constructor(options: IscsiSessionOptions) {
    this.options = options;
    this.initiatorName = parseIscsiName(options.initiatorName).name;
    if (options.targetName !== undefined) parseIscsiName(options.targetName);
  }

  /** Connects to the portal and logs in; throws {@link IscsiLoginError} if refused. */
  static async connect(options: IscsiSessionOptions): Promise<IscsiSession> {
    const s = new IscsiSession(options);
    await s.#open();
    s.#setState("ready");
    s.#startKeepalive();
    return s;
  }

  /** Moves to `state`; commands go out only while it is "ready". */
  #setState(state: "login" | "ready" | "reconnecting" | "closed"): void {
    this.#state = state;
    const c = this.#connection;
    const p = this.#params;
    if (state === "ready" && c !== undefined && p !== undefined) this.#tasks.online(c, p);
    else this.#tasks.offline();
  }

  /** Negotiated parameters (after login). */
  get params(): NegotiatedParams {
    if (this.#params === undefined) throw new IscsiProtocolError("session is not logged in");
    return this.#params;
  }

  /** Whether this is a discovery session. */
  get isDiscovery(): boolean {
    return this.options.targetName === undefined;
  }

  /** Number of commands issued or queued and not yet completed. */
  get pending(): number {
    return this.#tasks.size;
  }

  // ------------------------------------------------------- connection, login

  async #open(): Promise<void> {
    const port = this.options.port ?? ISCSI_PORT;
    const c = await IscsiConnection.open(this.options.host, port, this.#sink);
    this.#connection = c;
    const timeout = this.options.loginTimeoutMs ?? 10_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        this.#login(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new IscsiConnectionError(
                  `login to ${this.options.host}:${port} timed out after ${timeout} ms`,
                ),
              ),
            timeout,
          );
        }),
      ]);
    } catch (err) {
      this.#dropConnection(c);
      this.#failWaiters();
      await c.reader;
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  async #login(): Promise<void> {
    this.#loginError = undefined;
    const itt = this.#allocItt();
    const r = await negotiateLogin((pdu) => this.#exchange(itt, () => this.#send(pdu)), {
      isid: this.#isid,
      itt,
      cmdSN: this.#tasks.cmdSN,
      initiatorName: this.initiatorName,
      targetName: this.options.targetName,
      chap: this.options.chap,
      maxRecvDataSegmentLength: this.options.maxRecvDataSegmentLength ?? DEFAULT_MRDSL,
      maxBurstLength: this.options.maxBurstLength ?? 1 << 20,
      firstBurstLength: this.options.firstBurstLength ?? 256 << 10,
    });
    const { expStatSN, expCmdSN, maxCmdSN, ...params } = r;
    this.#params = params;
    this.#tasks.loggedIn(expStatSN, expCmdSN, maxCmdSN);
  }

  #dropConnection(c: IscsiConnection): void {
    if (this.#connection === c) this.#connection = undefined;
    c.drop();
  }

  /** Answers every request waiting for a response with "the connection went away". */
  #failWaiters(): void {
    for (const [, w] of this.#waiters) w(LOST);
    this.#waiters.clear();
  }

  /** Sends a whole PDU now (nothing is sent while there is no connection). */
  #send(pdu: Uint8Array): void {
    this.#connection?.send(pdu);
  }

  /** Calls `send` (which sends a request with this ITT) and waits for the response with the same ITT. */
  #exchange(itt: number, send: () => void): Promise<RawPdu> {
    return new Promise<RawPdu>((resolve, reject) => {
      this.#waiters.set(itt, (r) => {
        if (r.header.length === 0) {
          reject(
            this.#loginError ??
              new IscsiConnectionError(`connection to ${this.options.host} lost during a request`),
          );
        } else {
          resolve(r);
        }
      });
      send();
    });
  }

  #allocItt(): number {
    for (;;) {
      const itt = this.#nextItt;
      this.#nextItt = (this.#nextItt + 1) >>> 0;
      if (this.#nextItt === RESERVED_TAG) this.#nextItt = 1;
      if (!this.#tasks.has(itt) && !this.#waiters.has(itt) && itt !== RESERVED_TAG) return itt;
    }
  }

  // ------------------------------------------------------ loss and reconnect

  #connectionLost(c: IscsiConnection, cause: unknown): void {
    if (this.#connection !== c || this.#state === "closed") return;
    this.#dropConnection(c);
    this.#pingItt = -1;
    if (this.#state === "login") {
      this.#loginError = new IscsiConnectionError(
        `connection to ${this.options.host}:${this.options.port ?? ISCSI_PORT} failed during ` +
          `login: ${(cause as Error)?.message ?? cause}`,
        { cause },
      );
    }
    this.#failWaiters();
    if (this.#state !== "ready") return;
    if (this.options.reconnect === false || this.isDiscovery) {
      this.#tasks.failAll(
        new IscsiConnectionError(
          `connection to ${this.options.host} lost: ${(cause as Error)?.message ?? cause}`,
          { cause },
        ),
      );
      this.#setState("closed");
      this.#stopKeepalive();
      return;
    }
    this.#setState("reconnecting");
    this.#reconnecting = this.#reconnectLoop(cause);
  }

  async #reconnectLoop(cause: unknown): Promise<void> {
    const deadline = Date.now() + (this.options.reconnectTimeoutMs ?? 60_000);
    let delay = 20;
    let last: unknown = cause;
    while ((this.#state as string) !== "closed") {
      if (Date.now() > deadline) {
        this.#setState("closed");
        this.#stopKeepalive();
        this.#tasks.failAll(
          new IscsiConnectionError(
            `lost the connection to ${this.options.host}:${this.options.port ?? ISCSI_PORT} and ` +
              `could not log in again within ${this.options.reconnectTimeoutMs ?? 60_000} ms: ` +
              `${(last as Error)?.message ?? last}`,
            { cause: last },
          ),
        );
        return;
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 500);
      if ((this.#state as string) === "closed") return;
      this.#setState("login");
      try {
        await this.#open();
      } catch (err) {
        if ((this.#state as string) === "closed") return;
        this.#setState("reconnecting");
        last = err;
        // A restarting target listens before its targets and ACLs are configured again,
        // so even a refused login may heal: keep trying until the reconnect deadline.
        continue;
      }
      if ((this.#state as string) === "closed") return;
      this.reconnects++;
      this.#setState("ready");
      // Re-issue every command that has not completed, in their original order.
      this.#tasks.reissue();
      return;
    }
  }

  // --------------------------------------------------------------- keepalive

  #startKeepalive(): void {
    const every = this.options.keepaliveMs ?? 5000;
    if (every <= 0 || this.#keepalive !== undefined) return;
    const timeout = this.options.nopTimeoutMs ?? 10_000;
    const timer = setInterval(() => {
      const c = this.#connection;
      if (this.#state !== "ready" || c === undefined) return;
      const now = Date.now();
      if (this.#pingItt >= 0) {
        if (now - this.#pingSent > timeout) {
          this.#connectionLost(
            c,
            new IscsiConnectionError(`NOP-Out ping unanswered for ${timeout} ms`),
          );
        }
        return;
      }
      if (now - c.lastRx >= every) this.#sendPing(c);
    }, Math.max(50, Math.min(every, timeout) / 2));
    Deno.unrefTimer(timer);
    this.#keepalive = timer;
  }

  #stopKeepalive(): void {
    if (this.#keepalive !== undefined) clearInterval(this.#keepalive);
    this.#keepalive = undefined;
  }

  /** Queues a NOP-Out at once: a ping of ours (`itt`), or an answer to a target's ping (`ttt`, `lun`). */
  #putNopOut(c: IscsiConnection, itt: number, ttt: number, lun?: bigint): void {
    const off = c.reserve(pduLength(0));
    putNopOut(c.out, c.outView, off, itt, ttt, this.#tasks.cmdSN, this.#tasks.expStatSN, lun);
    c.queued(false);
  }

  #sendPing(c: IscsiConnection): void {
    const itt = this.#allocItt();
    this.#pingItt = itt;
    this.#pingSent = Date.now();
    this.#putNopOut(c, itt, RESERVED_TAG);
  }

  // ------------------------------------------------------------ PDU dispatch

  #handlePdu(buf: Uint8Array, v: DataView, off: number, dataOff: number, dlen: number): void {
    const op = v.getUint8(off + OFF_OPCODE) & OPCODE_MASK;
    switch (op) {
      case OP_DATA_IN:
        this.#tasks.onDataIn(buf, v, off, dataOff, dlen);
        return;
      case OP_SCSI_RSP:
        this.#tasks.onResponse(buf, v, off, dataOff, dlen);
        return;
      case OP_R2T:
        this.#tasks.updateWindow(v, off);
        this.#tasks.onR2T(v, off);
        return;
      case OP_NOP_IN:
        this.#onNopIn(v, off);
        return;
      case OP_LOGIN_RSP:
      case OP_TEXT_RSP:
      case OP_LOGOUT_RSP: {
        if (op !== OP_LOGIN_RSP) {
          this.#tasks.expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
          this.#tasks.updateWindow(v, off);
        }
        const itt = v.getUint32(off + OFF_ITT);
        const w = this.#waiters.get(itt);
        if (w === undefined) {
          throw new IscsiProtocolError(
            `unexpected response opcode 0x${op.toString(16)} for ITT ${itt}`,
          );
        }
        this.#waiters.delete(itt);
        w({
          header: buf.slice(off, off + BHS_LEN),
          data: buf.slice(dataOff, dataOff + dlen),
        });
        return;
      }
      case OP_REJECT:
        this.#onReject(buf, v, off, dataOff, dlen);
        return;
      case OP_ASYNC: {
        this.#tasks.updateWindow(v, off);
        const event = v.getUint8(off + OFF_DATASN);
        // 1: logout requested, 2/3: connection/session dropped; log in afresh.
        if (event >= 1 && event <= 3) {
          throw new IscsiConnectionError(`target sent asynchronous event ${event}; reconnecting`);
        }
        return;
      }
      case OP_TMF_RSP:
        this.#tasks.updateWindow(v, off);
        return;
      default:
        throw new IscsiProtocolError(`target sent unknown opcode 0x${op.toString(16)}`);
    }
  }

  #onNopIn(v: DataView, off: number): void {
    const itt = v.getUint32(off + OFF_ITT);
    const ttt = v.getUint32(off + OFF_TTT);
    if (itt !== RESERVED_TAG) {
      this.#tasks.expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
      if (itt === this.#pingItt) {
        this.#pingItt = -1;
        this.keepalivesAnswered++;
      }
      const w = this.#waiters.get(itt);
      if (w !== undefined) {
        this.#waiters.delete(itt);
        w({ header: new Uint8Array(BHS_LEN), data: new Uint8Array(0) });
      }
    }
    this.#tasks.updateWindow(v, off);
    if (ttt !== RESERVED_TAG) {
      // The target pings us: answer with the same TTT and LUN, immediate, no CmdSN advance.
      this.targetPingsAnswered++;
      const c = this.#connection;
      if (c !== undefined) this.#putNopOut(c, RESERVED_TAG, ttt, v.getBigUint64(off + OFF_LUN));
    }
  }

  #onReject(buf: Uint8Array, v: DataView, off: number, dataOff: number, dlen: number): void {
    this.#tasks.updateWindow(v, off);
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
    if (this.#tasks.reject(itt, err)) return;
    const w = this.#waiters.get(itt);
    if (w !== undefined) {
      this.#waiters.delete(itt);
      w({ header: buf.slice(dataOff, dataOff + BHS_LEN), data: new Uint8Array(0) });
      return;
    }
    throw err;
  }

  #submit(lun: number, cdb: Uint8Array, d: CommandData): Promise<ScsiResult> {
    if (this.#state === "closed") {
      return Promise.reject(new IscsiSessionClosedError("the iSCSI session is closed"));
    }
    if (!Number.isInteger(lun) || lun < 0 || lun > 0x3fff) {
      return Promise.reject(new RangeError(`LUN ${lun} is out of range 0..16383`));
    }
    if (d.dataIn !== undefined && d.dataOut !== undefined) {
      return Promise.reject(new RangeError("bidirectional commands are not supported"));
    }
    return this.#tasks.submit(this.#allocItt(), lun, cdb, d);
  }

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

  /** {@link command} on a 16-byte CDB the session may keep (no copy). */
  async #command(lun: number, cdb16: Uint8Array, d: CommandData): Promise<ScsiResult> {
    const r = await this.#submit(lun, cdb16, d);
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
    const retries = this.options.retries ?? 5;
    for (let attempt = 0;; attempt++) {
      const r = attempt === 0 ? first : await this.#submit(lun, cdb16, d);
      if (r.status === STATUS_GOOD || d.allowStatus === true) return r;
      const retryable = r.status === STATUS_BUSY || r.status === STATUS_TASK_SET_FULL ||
        (r.status === STATUS_CHECK_CONDITION && r.sense?.key === SENSE_UNIT_ATTENTION);
      if (!retryable || attempt >= retries) {
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
    let r = await this.#submit(lun, cdb, d);
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

  /** Sends a NOP-Out ping and waits for the target's NOP-In. */
  async nop(): Promise<void> {
    this.#requireReady();
    const itt = this.#allocItt();
    await this.#exchange(itt, () => {
      const c = this.#connection;
      if (c !== undefined) this.#putNopOut(c, itt, RESERVED_TAG);
    });
  }

  #requireReady(): void {
    if (this.#state !== "ready" || this.#connection === undefined) {
      throw new IscsiSessionClosedError(`the iSCSI session is ${this.#state}`);
    }
  }

  /** SendTargets=All on a discovery (or normal) session. */
  async sendTargets(): Promise<DiscoveredTarget[]> {
    this.#requireReady();
    const itt = this.#allocItt();
    let ttt = RESERVED_TAG;
    let payload = encodeText([["SendTargets", "All"]]);
    const chunks: Uint8Array[] = [];
    for (let guard = 0; guard < 64; guard++) {
      const data = payload;
      const rsp = await this.#exchange(itt, () => {
        const c = this.#connection;
        if (c === undefined) return;
        const off = c.reserve(pduLength(data.length));
        putTextRequest(
          c.out,
          c.outView,
          off,
          itt,
          ttt,
          this.#tasks.cmdSN,
          this.#tasks.expStatSN,
          data,
        );
        c.queued(false);
      });
      const rv = new DataView(rsp.header.buffer, rsp.header.byteOffset, BHS_LEN);
      if ((rv.getUint8(0) & OPCODE_MASK) !== OP_TEXT_RSP) {
        throw new IscsiProtocolError("target rejected the SendTargets request");
      }
      chunks.push(rsp.data);
      if ((rv.getUint8(OFF_FLAGS) & FLAG_FINAL) !== 0) break;
      ttt = rv.getUint32(OFF_TTT);
      payload = new Uint8Array(0);
    }
    let total = 0;
    for (const c of chunks) total += c.length;
    const all = new Uint8Array(total);
    let o = 0;
    for (const c of chunks) {
      all.set(c, o);
      o += c.length;
    }
    const out: DiscoveredTarget[] = [];
    for (const [k, val] of decodeText(all)) {
      if (k === "TargetName") out.push({ name: val, addresses: [] });
      else if (k === "TargetAddress") out[out.length - 1]?.addresses.push(val);
    }
    return out;
  }

  /** Waits for in-flight commands, logs out (closing the session) and closes the connection. */
  async logout(): Promise<void> {
    if (this.#state === "closed") return;
    if (this.#reconnecting !== undefined) await this.#reconnecting;
    const deadline = Date.now() + 30_000;
    while (this.#tasks.size > 0 && (this.#state as string) !== "closed" && Date.now() < deadline) {
      await sleep(1);
    }
    if (this.#state === "ready" && this.#connection !== undefined) {
      const itt = this.#allocItt();
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          this.#exchange(itt, () => {
            const c = this.#connection;
            if (c === undefined) return;
            const off = c.reserve(pduLength(0));
            putLogoutRequest(c.out, c.outView, off, itt, this.#tasks.cmdSN, this.#tasks.expStatSN);
            c.queued(false);
          }),
          new Promise<void>((r) => {
            timer = setTimeout(r, 5000);
          }),
        ]);
      } catch (err) {
        if (!(err instanceof IscsiConnectionError)) throw err;
      } finally {
        clearTimeout(timer);
      }
    }
    await this.close();
  }

  /** Closes the connection at once; pending commands fail with {@link IscsiSessionClosedError}. */
  async close(): Promise<void> {
    const wasClosed = this.#state === "closed";
    this.#setState("closed");
    this.#stopKeepalive();
    const c = this.#connection;
    if (c !== undefined) {
      this.#dropConnection(c);
      await c.reader;
    }
    if (this.#reconnecting !== undefined) await this.#reconnecting;
    if (!wasClosed || this.#tasks.size > 0) {
      this.#tasks.failAll(new IscsiSessionClosedError("the iSCSI session was closed"));
    }
    this.#failWaiters();
  }
}
