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
 * The session holds the connection's life: login, loss, reconnect, and the
 * requests that are not SCSI tasks (SendTargets, Logout). Its parts live
 * beside it, one idea each: login negotiation in `iscsi_login.ts` (no
 * socket); the socket with its read loop and output buffer in
 * `iscsi_connection.ts`; every PDU built in one place, `iscsi_pdu_build.ts`;
 * the tasks and CmdSN window in `iscsi_tasks.ts`; the requests waiting for
 * answers in `iscsi_requests.ts`; NOP-Out/NOP-In (keepalive, the target's
 * pings) in `iscsi_nop.ts`; what each target PDU means in
 * `iscsi_dispatch.ts`; and the SCSI command set (READ(16), INQUIRY, …) the
 * session inherits in `scsi_commands.ts`.
 *
 * @module
 */

import { IscsiConnectionError, IscsiProtocolError, IscsiSessionClosedError } from "./errors.ts";
import { encodeText } from "./iscsi_text.ts";
import { parseIscsiName } from "./iscsi_name.ts";
import { IscsiConnection, type PduSink } from "./iscsi_connection.ts";
import { IscsiTasks } from "./iscsi_tasks.ts";
import {
  DEFAULT_MRDSL,
  type NegotiatedParams,
  negotiateLogin,
  type RawPdu,
} from "./iscsi_login.ts";
import { ISCSI_PORT, type IscsiSessionOptions } from "./iscsi_options.ts";
import { type DiscoveredTarget, IscsiRequests, parseSendTargets } from "./iscsi_requests.ts";
import { type CommandData, ScsiCommands, type ScsiResult } from "./scsi_commands.ts";
import {
  BHS_LEN,
  FLAG_FINAL,
  OFF_FLAGS,
  OFF_TTT,
  OP_TEXT_RSP,
  OPCODE_MASK,
  RESERVED_TAG,
} from "./iscsi_pdu.ts";
import { pduLength, putLogoutRequest, putTextRequest } from "./iscsi_pdu_build.ts";
import { IscsiNop } from "./iscsi_nop.ts";
import { dispatchPdu, type SessionParts } from "./iscsi_dispatch.ts";

export type { NegotiatedParams } from "./iscsi_login.ts";
export type { CommandData, ScsiResult } from "./scsi_commands.ts";
export { ISCSI_PORT, type IscsiSessionOptions } from "./iscsi_options.ts";
export type { DiscoveredTarget } from "./iscsi_requests.ts";
export { ScsiCommands } from "./scsi_commands.ts";

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function randomIsid(): Uint8Array {
  const isid = crypto.getRandomValues(new Uint8Array(6));
  // Type 0b10 "random": T=2 in the top two bits, the rest random.
  isid[0] = 0x80 | ((isid[0] ?? 0) & 0x3f);
  return isid;
}

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
export class IscsiSession extends ScsiCommands {
  /** The options the session was opened with. */
  readonly options: IscsiSessionOptions;
  /** The normalised initiator name (the VM's SUI). */
  readonly initiatorName: string;
  /** Number of times the session logged in again after a connection loss. */
  reconnects = 0;
  #params: NegotiatedParams | undefined;
  readonly #isid: Uint8Array = randomIsid();
  #nextItt = 1;
  readonly #tasks: IscsiTasks = new IscsiTasks();
  readonly #requests = new IscsiRequests();
  readonly #nop = new IscsiNop({
    tasks: this.#tasks,
    requests: this.#requests,
    ready: () => (this.#state === "ready" ? this.#connection : undefined),
    allocItt: () => this.#allocItt(),
    lost: (c, cause) => this.#connectionLost(c, cause),
  });
  /** Where the target's PDUs go. */
  readonly #parts: SessionParts = { tasks: this.#tasks, requests: this.#requests, nop: this.#nop };
  #connection: IscsiConnection | undefined;
  #state: "login" | "ready" | "reconnecting" | "closed" = "login";
  #reconnecting: Promise<void> | undefined;
  #loginError: unknown;
  /** The session's side of its connections. */
  readonly #sink: PduSink = {
    pdu: (buf, v, off, dataOff, dlen) => dispatchPdu(this.#parts, buf, v, off, dataOff, dlen),
    directTarget: (itt, bufOff, dlen) => this.#tasks.directTarget(itt, bufOff, dlen),
    placedDataIn: (buf, v, off, dlen) =>
      this.#tasks.onDataIn(buf, v, off, off + BHS_LEN, dlen, true),
    inFlight: () => this.#tasks.inFlight,
    lost: (c, cause) => this.#connectionLost(c, cause),
  };

  private constructor(options: IscsiSessionOptions) {
    super(options.retries ?? 5);
    this.options = options;
    this.initiatorName = parseIscsiName(options.initiatorName).name;
    if (options.targetName !== undefined) parseIscsiName(options.targetName);
  }

  /** Connects to the portal and logs in; throws {@link IscsiLoginError} if refused. */
  static async connect(options: IscsiSessionOptions): Promise<IscsiSession> {
    const s = new IscsiSession(options);
    await s.#open();
    s.#setState("ready");
    s.#nop.start(options.keepaliveMs ?? 5000, options.nopTimeoutMs ?? 10_000);
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

  /** Number of keepalive NOP-Out pings the target answered. */
  get keepalivesAnswered(): number {
    return this.#nop.keepalivesAnswered;
  }

  /** Number of target NOP-In pings this session answered. */
  get targetPingsAnswered(): number {
    return this.#nop.targetPingsAnswered;
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
      this.#requests.failAll();
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

  /** Sends a whole PDU now (nothing is sent while there is no connection). */
  #send(pdu: Uint8Array): void {
    this.#connection?.send(pdu);
  }

  /** Calls `send` (which sends a request with this ITT) and waits for the response with the same ITT. */
  #exchange(itt: number, send: () => void): Promise<RawPdu> {
    return this.#requests.exchange(
      itt,
      send,
      () =>
        this.#loginError ??
          new IscsiConnectionError(`connection to ${this.options.host} lost during a request`),
    );
  }

  #allocItt(): number {
    for (;;) {
      const itt = this.#nextItt;
      this.#nextItt = (this.#nextItt + 1) >>> 0;
      if (this.#nextItt === RESERVED_TAG) this.#nextItt = 1;
      if (!this.#tasks.has(itt) && !this.#requests.has(itt) && itt !== RESERVED_TAG) return itt;
    }
  }

  // ------------------------------------------------------ loss and reconnect

  #connectionLost(c: IscsiConnection, cause: unknown): void {
    if (this.#connection !== c || this.#state === "closed") return;
    this.#dropConnection(c);
    this.#nop.reset();
    if (this.#state === "login") {
      this.#loginError = new IscsiConnectionError(
        `connection to ${this.options.host}:${this.options.port ?? ISCSI_PORT} failed during ` +
          `login: ${(cause as Error)?.message ?? cause}`,
        { cause },
      );
    }
    this.#requests.failAll();
    if (this.#state !== "ready") return;
    if (this.options.reconnect === false || this.isDiscovery) {
      this.#tasks.failAll(
        new IscsiConnectionError(
          `connection to ${this.options.host} lost: ${(cause as Error)?.message ?? cause}`,
          { cause },
        ),
      );
      this.#setState("closed");
      this.#nop.stop();
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
        this.#nop.stop();
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

  /** Runs one SCSI command as a task of this session (see {@link ScsiCommands}). */
  protected override submit(lun: number, cdb: Uint8Array, d: CommandData): Promise<ScsiResult> {
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

  /** Sends a NOP-Out ping and waits for the target's NOP-In. */
  async nop(): Promise<void> {
    this.#requireReady();
    const itt = this.#allocItt();
    await this.#exchange(itt, () => {
      const c = this.#connection;
      if (c !== undefined) this.#nop.ping(c, itt);
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
    return parseSendTargets(chunks);
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
    this.#nop.stop();
    const c = this.#connection;
    if (c !== undefined) {
      this.#dropConnection(c);
      await c.reader;
    }
    if (this.#reconnecting !== undefined) await this.#reconnecting;
    if (!wasClosed || this.#tasks.size > 0) {
      this.#tasks.failAll(new IscsiSessionClosedError("the iSCSI session was closed"));
    }
    this.#requests.failAll();
  }
}
