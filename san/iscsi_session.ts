/**
 * An iSCSI initiator session over TCP (RFC 7143), written in TypeScript.
 *
 * One connection per session, ErrorRecoveryLevel 0, no digests. Login goes
 * through the security stage (AuthMethod None or CHAP, optionally mutual) and
 * operational negotiation. In full feature phase many SCSI commands are in
 * flight at once, each with its own Initiator Task Tag, bounded by the
 * target's CmdSN window; writes send immediate and unsolicited data as
 * negotiated and answer R2Ts with Data-Out. A NOP-Out keepalive detects dead
 * connections. When the connection drops or the target restarts, the session
 * logs in again (same ISID, so the target reinstates it) and re-issues every
 * command that had not completed, so no acknowledged write is lost and none
 * is issued twice after its acknowledgement.
 *
 * The I/O path is tuned for many commands in flight: TCP_NODELAY; PDUs are
 * encoded straight into one of two output buffers and everything queued in
 * the same microtask turn leaves in one socket write; while the target still
 * holds at least 16 commands, new commands wait until 8 can leave together
 * (fewer writes and wake-ups on both sides, and the target never runs dry);
 * the reader parses every complete PDU out of one large read, and the payload
 * of a large Data-In is read by the kernel straight into the caller's buffer.
 *
 * @module
 */

import {
  IscsiConnectionError,
  IscsiLoginError,
  IscsiProtocolError,
  IscsiSessionClosedError,
} from "./errors.ts";
import {
  CHAP_MD5,
  type ChapCredentials,
  chapResponse,
  decodeChapValue,
  encodeChapValue,
} from "./chap.ts";
import { decodeText, encodeText } from "./iscsi_text.ts";
import { parseIscsiName } from "./iscsi_name.ts";
import {
  ATTR_SIMPLE,
  BHS_LEN,
  dataSegmentLength,
  FLAG_CONTINUE,
  FLAG_FINAL,
  FLAG_IMMEDIATE,
  FLAG_OVERFLOW,
  FLAG_READ,
  FLAG_STATUS,
  FLAG_TRANSIT,
  FLAG_UNDERFLOW,
  FLAG_WRITE,
  OFF_AHS_LEN,
  OFF_BUFFER_OFFSET,
  OFF_BYTE2,
  OFF_BYTE3,
  OFF_CDB,
  OFF_CMDSN,
  OFF_DATASN,
  OFF_DESIRED_LEN,
  OFF_EDTL,
  OFF_EXPCMDSN,
  OFF_EXPSTATSN,
  OFF_FLAGS,
  OFF_ISID,
  OFF_ITT,
  OFF_LUN,
  OFF_MAXCMDSN,
  OFF_OPCODE,
  OFF_RESIDUAL,
  OFF_STATSN,
  OFF_STATUS_CLASS,
  OFF_STATUS_DETAIL,
  OFF_TSIH,
  OFF_TTT,
  OP_ASYNC,
  OP_DATA_IN,
  OP_DATA_OUT,
  OP_LOGIN_REQ,
  OP_LOGIN_RSP,
  OP_LOGOUT_REQ,
  OP_LOGOUT_RSP,
  OP_NOP_IN,
  OP_NOP_OUT,
  OP_R2T,
  OP_REJECT,
  OP_SCSI_CMD,
  OP_SCSI_RSP,
  OP_TEXT_REQ,
  OP_TEXT_RSP,
  OP_TMF_RSP,
  OPCODE_MASK,
  padded,
  RESERVED_TAG,
  setDataSegmentLength,
  setLun,
  snLess,
  snLessEq,
  STAGE_FULL_FEATURE,
  STAGE_OPERATIONAL,
  STAGE_SECURITY,
} from "./iscsi_pdu.ts";
import {
  type Capacity,
  cdbInquiry,
  cdbReadCapacity16,
  cdbReadWrite16,
  cdbReportLuns,
  cdbSynchronizeCache16,
  cdbTestUnitReady,
  cdbUnmap,
  decodeSense,
  type InquiryData,
  OPC_READ_16,
  OPC_WRITE_16,
  parseCapacity16,
  parseInquiry,
  parseReportLuns,
  ScsiResponseError,
  ScsiStatusError,
  SENSE_UNIT_ATTENTION,
  type SenseData,
  STATUS_BUSY,
  STATUS_CHECK_CONDITION,
  STATUS_GOOD,
  STATUS_TASK_SET_FULL,
  unmapParameters,
} from "./scsi.ts";

/** Default iSCSI port. */
export const ISCSI_PORT = 3260;
/** The largest data segment vmkit accepts from a target. */
const MAX_ACCEPTED_SEGMENT = 16 << 20;
/** Most login text (all Continue PDUs together) vmkit accepts. */
const MAX_LOGIN_TEXT = 1 << 20;
/** Microtask ticks the writer waits so a burst of new commands leaves in one write. */
const COALESCE_TICKS = 1;
/** Most bytes one socket read asks for; larger Data-In payloads are read in place. */
const READ_CHUNK = 64 << 10;
/** Data-In payloads at least this large are read straight into the caller's buffer. */
const DIRECT_MIN = 16 << 10;
/** New commands wait (while the target has enough work) until this many can leave in one write. */
const HOLD_BATCH = 8;
/** Commands at the target below which new commands leave at once. */
const HOLD_MIN_AT_TARGET = 16;
/** Initial size of each of the two output buffers (they grow for large writes). */
const OUT_INITIAL = 64 << 10;
/** Data segment size vmkit declares it can receive. */
const DEFAULT_MRDSL = 262144;

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

/** Parameters in force after operational negotiation. */
export interface NegotiatedParams {
  /** Largest Data-Out segment the target accepts. */
  readonly targetMaxRecvDataSegmentLength: number;
  /** Largest data segment vmkit accepts. */
  readonly maxRecvDataSegmentLength: number;
  /** Maximum solicited burst. */
  readonly maxBurstLength: number;
  /** Maximum unsolicited (immediate + Data-Out) burst. */
  readonly firstBurstLength: number;
  /** Whether every write waits for an R2T first. */
  readonly initialR2T: boolean;
  /** Whether data may ride in the command PDU. */
  readonly immediateData: boolean;
  /** Target session identifying handle. */
  readonly tsih: number;
}

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

/** Data for {@link IscsiSession.command}. */
export interface CommandData {
  /** Buffer the target's data goes to (READ-type commands). */
  readonly dataIn?: Uint8Array;
  /** Data sent to the target (WRITE-type commands). */
  readonly dataOut?: Uint8Array;
  /** Return CHECK CONDITION and other statuses instead of throwing. */
  readonly allowStatus?: boolean;
}

/** A target found by SendTargets discovery. */
export interface DiscoveredTarget {
  /** Target IQN. */
  readonly name: string;
  /** Portals as "host:port,tpgt". */
  readonly addresses: string[];
}

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

interface RawPdu {
  header: Uint8Array;
  data: Uint8Array;
}

interface Connection {
  conn: Deno.TcpConn;
  generation: number;
  reader: Promise<void>;
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
  #tsih = 0;
  #cmdSN = 0;
  #expCmdSN = 0;
  #maxCmdSN = 0;
  #expStatSN = 0;
  #nextItt = 1;
  readonly #tasks = new Map<number, Task>();
  readonly #waiting: Task[] = [];
  readonly #waiters = new Map<number, (pdu: RawPdu) => void>();
  #connection: Connection | undefined;
  #generation = 0;
  #state: "login" | "ready" | "reconnecting" | "closed" = "login";
  /** PDUs encoded and waiting for the next socket write. */
  #obuf: Uint8Array = new Uint8Array(OUT_INITIAL);
  #oview: DataView = new DataView(this.#obuf.buffer);
  #olen = 0;
  /** The other output buffer, free while no write is using it. */
  #spare: Uint8Array | undefined = new Uint8Array(OUT_INITIAL);
  #writing = false;
  /** PDUs of new commands (and their unsolicited data) in the output buffer that may wait. */
  #heldCmds = 0;
  /** Whether the output buffer holds a PDU that must not wait. */
  #urgent = false;
  /** Commands issued and not completed (queued, on the wire or at the target). */
  #sentCmds = 0;
  #lastRx = 0;
  #pingItt = -1;
  #pingSent = 0;
  #keepalive: ReturnType<typeof setInterval> | undefined;
  #reconnecting: Promise<void> | undefined;
  #loginError: unknown;

  private constructor(options: IscsiSessionOptions) {
    this.options = options;
    this.initiatorName = parseIscsiName(options.initiatorName).name;
    if (options.targetName !== undefined) parseIscsiName(options.targetName);
  }

  /** Connects to the portal and logs in; throws {@link IscsiLoginError} if refused. */
  static async connect(options: IscsiSessionOptions): Promise<IscsiSession> {
    const s = new IscsiSession(options);
    await s.#open();
    s.#state = "ready";
    s.#startKeepalive();
    return s;
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

  // ---------------------------------------------------------------- connection

  async #open(): Promise<void> {
    const port = this.options.port ?? ISCSI_PORT;
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: this.options.host, port, transport: "tcp" });
    } catch (err) {
      throw new IscsiConnectionError(
        `cannot connect to iSCSI portal ${this.options.host}:${port}: ${(err as Error).message}; ` +
          `is the target running and listening there?`,
        { cause: err },
      );
    }
    conn.setNoDelay(true);
    const generation = ++this.#generation;
    const c: Connection = { conn, generation, reader: Promise.resolve() };
    this.#connection = c;
    this.#olen = 0;
    this.#heldCmds = 0;
    this.#urgent = false;
    this.#writing = false;
    this.#lastRx = Date.now();
    c.reader = this.#readLoop(c);
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
      await c.reader;
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  #dropConnection(c: Connection): void {
    if (this.#connection === c) this.#connection = undefined;
    try {
      c.conn.close();
    } catch (err) {
      if (!(err instanceof Deno.errors.BadResource)) throw err;
    }
  }

  async #readLoop(c: Connection): Promise<void> {
    let buf = new Uint8Array(DEFAULT_MRDSL * 2 + BHS_LEN * 64);
    let view = new DataView(buf.buffer);
    let start = 0;
    let end = 0;
    let bigDataIn = false;
    let failure: unknown;
    try {
      for (;;) {
        if (end === buf.length) {
          if (start > 0) {
            buf.copyWithin(0, start, end);
            end -= start;
            start = 0;
          } else {
            const bigger = new Uint8Array(buf.length * 2);
            bigger.set(buf);
            buf = bigger;
            view = new DataView(buf.buffer);
          }
        }
        // After a large Data-In the next PDU is likely another: read just its
        // header so the payload can go straight to the caller's buffer.
        const want = end === 0 && bigDataIn ? BHS_LEN : READ_CHUNK;
        const n = await c.conn.read(buf.subarray(end, Math.min(buf.length, end + want)));
        if (n === null) throw new IscsiConnectionError("target closed the connection");
        end += n;
        this.#lastRx = Date.now();
        while (end - start >= BHS_LEN) {
          const ahs = view.getUint8(start + OFF_AHS_LEN) * 4;
          const dlen = dataSegmentLength(view, start);
          if (dlen > MAX_ACCEPTED_SEGMENT) {
            throw new IscsiProtocolError(`target sent a ${dlen}-byte data segment; refusing`);
          }
          const total = BHS_LEN + ahs + padded(dlen);
          if (end - start < total) {
            if (c.generation !== this.#generation) return;
            // A large Data-In whose payload has not all arrived: read the rest straight
            // into the caller's buffer, so the payload is copied once, by the kernel.
            const dst = ahs === 0 ? this.#directTarget(view, start, dlen) : undefined;
            bigDataIn = dst !== undefined;
            if (dst !== undefined) {
              const have = end - start - BHS_LEN;
              dst.set(buf.subarray(start + BHS_LEN, end));
              for (let got = have; got < dlen;) {
                const n = await c.conn.read(dst.subarray(got));
                if (n === null) throw new IscsiConnectionError("target closed the connection");
                got += n;
                this.#lastRx = Date.now();
              }
              if (c.generation !== this.#generation) return;
              this.#onDataIn(buf, view, start, start + BHS_LEN, dlen, true);
              start = end = 0;
              break;
            }
            if (total > buf.length - start) {
              if (total > buf.length) {
                const bigger = new Uint8Array(Math.max(total, buf.length * 2));
                bigger.set(buf.subarray(start, end));
                buf = bigger;
                view = new DataView(buf.buffer);
              } else {
                buf.copyWithin(0, start, end);
              }
              end -= start;
              start = 0;
            }
            break;
          }
          if (c.generation !== this.#generation) return;
          this.#handlePdu(buf, view, start, start + BHS_LEN + ahs, dlen);
          start += total;
        }
        if (start === end) start = end = 0;
      }
    } catch (err) {
      failure = err;
    }
    if (c.generation === this.#generation && this.#state !== "closed") {
      this.#connectionLost(c, failure);
    }
  }

  /**
   * Queues a PDU for the next socket write. `hold` marks a new command (and
   * its unsolicited data), which may wait for more commands to join it while
   * the target still has plenty of work; anything else goes out at once.
   */
  #send(pdu: Uint8Array, hold = false): void {
    const off = this.#reserve(pdu.length);
    this.#obuf.set(pdu, off);
    this.#queued(hold);
  }

  /** Records that a PDU was appended to the output buffer and starts a write if none is running. */
  #queued(hold: boolean): void {
    if (hold) this.#heldCmds++;
    else this.#urgent = true;
    if (!this.#writing) void this.#flush();
  }

  /**
   * Reserves `n` bytes at the end of the output buffer and returns their
   * offset; the first BHS_LEN bytes and the last 3 are zeroed (header fields
   * and data-segment padding), the caller fills the rest.
   */
  #reserve(n: number): number {
    const off = this.#olen;
    if (off + n > this.#obuf.length) {
      const bigger = new Uint8Array(Math.max(this.#obuf.length * 2, off + n));
      bigger.set(this.#obuf.subarray(0, off));
      this.#obuf = bigger;
      this.#oview = new DataView(bigger.buffer);
    } else {
      this.#obuf.fill(0, off, off + Math.min(n, BHS_LEN));
      if (n > BHS_LEN) this.#obuf.fill(0, Math.max(off + BHS_LEN, off + n - 3), off + n);
    }
    this.#olen = off + n;
    return off;
  }

  /** Whether the queued output may wait for more commands (the target stays busy meanwhile). */
  #mayHold(): boolean {
    return !this.#urgent && this.#heldCmds < HOLD_BATCH &&
      this.#sentCmds - this.#heldCmds >= HOLD_MIN_AT_TARGET;
  }

  async #flush(): Promise<void> {
    const c = this.#connection;
    if (c === undefined) return;
    this.#writing = true;
    try {
      // Let commands issued in the same tick coalesce into one write; waiting
      // longer made the target's pipeline burstier and was not faster here.
      for (let i = 0; i < COALESCE_TICKS; i++) await Promise.resolve();
      while (this.#olen > 0 && this.#connection === c && !this.#mayHold()) {
        // Write this buffer; new PDUs go to the other one meanwhile.
        const sent = this.#obuf;
        const len = this.#olen;
        const next = this.#spare ?? new Uint8Array(OUT_INITIAL);
        this.#spare = undefined;
        this.#obuf = next;
        this.#oview = new DataView(next.buffer);
        this.#olen = 0;
        this.#heldCmds = 0;
        this.#urgent = false;
        let done = 0;
        while (done < len) done += await c.conn.write(sent.subarray(done, len));
        this.#spare = sent;
      }
    } catch (err) {
      if (c.generation === this.#generation && this.#state !== "closed") {
        this.#connectionLost(c, err);
      }
    } finally {
      if (this.#connection === c || this.#connection === undefined) this.#writing = false;
    }
  }

  #connectionLost(c: Connection, cause: unknown): void {
    this.#dropConnection(c);
    this.#generation++;
    this.#pingItt = -1;
    if (this.#state === "login") {
      this.#loginError = new IscsiConnectionError(
        `connection to ${this.options.host}:${this.options.port ?? ISCSI_PORT} failed during ` +
          `login: ${(cause as Error)?.message ?? cause}`,
        { cause },
      );
    }
    for (const [, w] of this.#waiters) w({ header: new Uint8Array(0), data: new Uint8Array(0) });
    this.#waiters.clear();
    if (this.#state === "login") return;
    if (this.#state !== "ready") return;
    if (this.options.reconnect === false || this.isDiscovery) {
      this.#failAll(
        new IscsiConnectionError(
          `connection to ${this.options.host} lost: ${(cause as Error)?.message ?? cause}`,
          { cause },
        ),
      );
      this.#state = "closed";
      this.#stopKeepalive();
      return;
    }
    this.#state = "reconnecting";
    this.#reconnecting = this.#reconnectLoop(cause);
  }

  async #reconnectLoop(cause: unknown): Promise<void> {
    const deadline = Date.now() + (this.options.reconnectTimeoutMs ?? 60_000);
    let delay = 20;
    let last: unknown = cause;
    while ((this.#state as string) !== "closed") {
      if (Date.now() > deadline) {
        this.#state = "closed";
        this.#stopKeepalive();
        this.#failAll(
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
      this.#state = "login";
      try {
        await this.#open();
      } catch (err) {
        if ((this.#state as string) === "closed") return;
        this.#state = "reconnecting";
        last = err;
        // A restarting target listens before its targets and ACLs are configured again,
        // so even a refused login may heal: keep trying until the reconnect deadline.
        continue;
      }
      if ((this.#state as string) === "closed") return;
      this.reconnects++;
      this.#state = "ready";
      // Re-issue every command that has not completed, in their original order.
      const pending = [...this.#tasks.values()].filter((t) => t.issued);
      pending.sort((a, b) => (snLess(a.cmdSN, b.cmdSN) ? -1 : 1));
      for (const t of pending) t.issued = false;
      this.#sentCmds = 0;
      this.#waiting.unshift(...pending);
      this.#dispatch();
      return;
    }
  }

  #failAll(err: unknown): void {
    const tasks = [...this.#tasks.values()];
    this.#tasks.clear();
    this.#waiting.length = 0;
    for (const t of tasks) t.reject(err);
  }

  #startKeepalive(): void {
    const every = this.options.keepaliveMs ?? 5000;
    if (every <= 0 || this.#keepalive !== undefined) return;
    const timeout = this.options.nopTimeoutMs ?? 10_000;
    const timer = setInterval(() => {
      if (this.#state !== "ready" || this.#connection === undefined) return;
      const now = Date.now();
      if (this.#pingItt >= 0) {
        if (now - this.#pingSent > timeout) {
          this.#connectionLost(
            this.#connection,
            new IscsiConnectionError(`NOP-Out ping unanswered for ${timeout} ms`),
          );
        }
        return;
      }
      if (now - this.#lastRx >= every) this.#sendPing();
    }, Math.max(50, Math.min(every, timeout) / 2));
    Deno.unrefTimer(timer);
    this.#keepalive = timer;
  }

  #stopKeepalive(): void {
    if (this.#keepalive !== undefined) clearInterval(this.#keepalive);
    this.#keepalive = undefined;
  }

  #sendPing(): void {
    const itt = this.#allocItt();
    const h = new Uint8Array(BHS_LEN);
    const v = new DataView(h.buffer);
    v.setUint8(OFF_OPCODE, OP_NOP_OUT | FLAG_IMMEDIATE);
    v.setUint8(OFF_FLAGS, FLAG_FINAL);
    v.setUint32(OFF_ITT, itt);
    v.setUint32(OFF_TTT, RESERVED_TAG);
    v.setUint32(OFF_CMDSN, this.#cmdSN);
    v.setUint32(OFF_EXPSTATSN, this.#expStatSN);
    this.#pingItt = itt;
    this.#pingSent = Date.now();
    this.#send(h);
  }

  // --------------------------------------------------------------------- login

  #allocItt(): number {
    for (;;) {
      const itt = this.#nextItt;
      this.#nextItt = (this.#nextItt + 1) >>> 0;
      if (this.#nextItt === RESERVED_TAG) this.#nextItt = 1;
      if (!this.#tasks.has(itt) && !this.#waiters.has(itt) && itt !== RESERVED_TAG) return itt;
    }
  }

  /** Sends a PDU and waits for the response with the same ITT. */
  #exchange(pdu: Uint8Array, itt: number): Promise<RawPdu> {
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
      this.#send(pdu);
    });
  }

  #loginPdu(
    itt: number,
    csg: number,
    nsg: number,
    transit: boolean,
    data: Uint8Array,
  ): Uint8Array {
    const pdu = new Uint8Array(BHS_LEN + padded(data.length));
    const v = new DataView(pdu.buffer);
    v.setUint8(OFF_OPCODE, OP_LOGIN_REQ | FLAG_IMMEDIATE);
    v.setUint8(OFF_FLAGS, (transit ? FLAG_TRANSIT : 0) | (csg << 2) | (transit ? nsg : 0));
    v.setUint8(OFF_BYTE2, 0);
    v.setUint8(OFF_BYTE3, 0);
    setDataSegmentLength(v, 0, data.length);
    pdu.set(this.#isid, OFF_ISID);
    v.setUint16(OFF_TSIH, this.#tsih);
    v.setUint32(OFF_ITT, itt);
    v.setUint16(OFF_TTT, 0); // CID
    v.setUint32(OFF_CMDSN, this.#cmdSN);
    v.setUint32(OFF_EXPSTATSN, this.#expStatSN);
    pdu.set(data, BHS_LEN);
    return pdu;
  }

  /** One login request/response round trip, following Continue bits. */
  async #loginStep(
    itt: number,
    csg: number,
    nsg: number,
    transit: boolean,
    pairs: Array<[string, string]>,
  ): Promise<{ keys: Map<string, string>; transit: boolean; nsg: number; header: DataView }> {
    let rsp = await this.#exchange(this.#loginPdu(itt, csg, nsg, transit, encodeText(pairs)), itt);
    let text = rsp.data;
    for (;;) {
      const v = new DataView(rsp.header.buffer, rsp.header.byteOffset, BHS_LEN);
      if ((v.getUint8(OFF_OPCODE) & OPCODE_MASK) !== OP_LOGIN_RSP) {
        throw new IscsiProtocolError(
          `expected a Login Response, got opcode 0x${v.getUint8(OFF_OPCODE).toString(16)}`,
        );
      }
      const sc = v.getUint8(OFF_STATUS_CLASS);
      const sd = v.getUint8(OFF_STATUS_DETAIL);
      this.#expStatSN = (v.getUint32(OFF_STATSN) + 1) >>> 0;
      if (sc !== 0) {
        const redirect = sc === 1
          ? ` to ${decodeText(rsp.data).find(([k]) => k === "TargetAddress")?.[1] ?? "?"}`
          : "";
        throw new IscsiLoginError(
          sc,
          sd,
          this.initiatorName,
          this.options.targetName ?? "",
          redirect,
        );
      }
      const flags = v.getUint8(OFF_FLAGS);
      if ((flags & FLAG_CONTINUE) === 0) {
        const keys = new Map<string, string>();
        for (const [k, val] of decodeText(text)) keys.set(k, val);
        this.#tsih = v.getUint16(OFF_TSIH);
        this.#expCmdSN = v.getUint32(OFF_EXPCMDSN);
        this.#maxCmdSN = v.getUint32(OFF_MAXCMDSN);
        return { keys, transit: (flags & FLAG_TRANSIT) !== 0, nsg: flags & 3, header: v };
      }
      if (text.length > MAX_LOGIN_TEXT) {
        throw new IscsiProtocolError(
          `target sent more than ${MAX_LOGIN_TEXT} bytes of login text; refusing`,
        );
      }
      rsp = await this.#exchange(this.#loginPdu(itt, csg, nsg, false, new Uint8Array(0)), itt);
      const joined = new Uint8Array(text.length + rsp.data.length);
      joined.set(text);
      joined.set(rsp.data, text.length);
      text = joined;
    }
  }

  async #login(): Promise<void> {
    this.#loginError = undefined;
    this.#tsih = 0; // ERL 0: a new connection reinstates the session (same ISID, TSIH 0)
    this.#expStatSN = 0;
    const itt = this.#allocItt();
    const chap = this.options.chap;
    const target = this.options.targetName;
    const first: Array<[string, string]> = [
      ["InitiatorName", this.initiatorName],
      ["SessionType", target === undefined ? "Discovery" : "Normal"],
    ];
    if (target !== undefined) first.push(["TargetName", target]);
    first.push(["AuthMethod", chap === undefined ? "None" : "CHAP,None"]);

    // Security negotiation.
    let step = await this.#loginStep(
      itt,
      STAGE_SECURITY,
      STAGE_OPERATIONAL,
      chap === undefined,
      first,
    );
    const method = step.keys.get("AuthMethod");
    if (chap !== undefined && method === "CHAP") {
      step = await this.#loginStep(itt, STAGE_SECURITY, STAGE_OPERATIONAL, false, [
        ["CHAP_A", String(CHAP_MD5)],
      ]);
      const a = step.keys.get("CHAP_A");
      const id = Number(step.keys.get("CHAP_I"));
      const challenge = step.keys.get("CHAP_C");
      if (a !== String(CHAP_MD5) || !Number.isInteger(id) || id < 0 || id > 255 || !challenge) {
        throw new IscsiProtocolError(
          `target sent an unusable CHAP challenge (CHAP_A=${a}, CHAP_I=${step.keys.get("CHAP_I")})`,
        );
      }
      const reply: Array<[string, string]> = [
        ["CHAP_N", chap.username],
        ["CHAP_R", encodeChapValue(chapResponse(id, chap.secret, decodeChapValue(challenge)))],
      ];
      let mutual: { id: number; challenge: Uint8Array } | undefined;
      if (chap.mutualSecret !== undefined) {
        mutual = {
          id: crypto.getRandomValues(new Uint8Array(1))[0] ?? 0,
          challenge: crypto.getRandomValues(new Uint8Array(16)),
        };
        reply.push(["CHAP_I", String(mutual.id)], ["CHAP_C", encodeChapValue(mutual.challenge)]);
      }
      step = await this.#loginStep(itt, STAGE_SECURITY, STAGE_OPERATIONAL, true, reply);
      if (mutual !== undefined) {
        const r = step.keys.get("CHAP_R");
        const expect = encodeChapValue(
          chapResponse(mutual.id, chap.mutualSecret ?? "", mutual.challenge),
        );
        const name = step.keys.get("CHAP_N");
        if (r === undefined || encodeChapValue(decodeChapValue(r)) !== expect) {
          throw new IscsiProtocolError(
            `mutual CHAP failed: target '${target}' did not prove it knows the target secret`,
          );
        }
        if (chap.mutualUsername !== undefined && name !== chap.mutualUsername) {
          throw new IscsiProtocolError(
            `mutual CHAP failed: target user '${name}' is not '${chap.mutualUsername}'`,
          );
        }
      }
    } else if (chap !== undefined && method !== "None") {
      throw new IscsiProtocolError(`target chose unsupported AuthMethod '${method}'`);
    } else if (chap !== undefined && method === "None") {
      throw new IscsiProtocolError(
        `target '${target}' offered no authentication although CHAP credentials were given; ` +
          `refusing to log in without CHAP`,
      );
    }
    let guard = 0;
    while (!step.transit) {
      if (++guard > 8) throw new IscsiProtocolError("target never left the security stage");
      step = await this.#loginStep(itt, STAGE_SECURITY, STAGE_OPERATIONAL, true, []);
    }

    // Operational negotiation.
    const mrdsl = this.options.maxRecvDataSegmentLength ?? DEFAULT_MRDSL;
    const offers: Array<[string, string]> = [
      ["HeaderDigest", "None"],
      ["DataDigest", "None"],
      ["MaxRecvDataSegmentLength", String(mrdsl)],
    ];
    if (target !== undefined) {
      offers.push(
        ["InitialR2T", "No"],
        ["ImmediateData", "Yes"],
        ["MaxBurstLength", String(this.options.maxBurstLength ?? 1 << 20)],
        ["FirstBurstLength", String(this.options.firstBurstLength ?? 256 << 10)],
        ["MaxOutstandingR2T", "1"],
        ["MaxConnections", "1"],
        ["DataPDUInOrder", "Yes"],
        ["DataSequenceInOrder", "Yes"],
        ["ErrorRecoveryLevel", "0"],
        ["DefaultTime2Wait", "0"],
        ["DefaultTime2Retain", "0"],
      );
    }
    const got = new Map<string, string>();
    if (step.nsg !== STAGE_FULL_FEATURE) {
      let pairs = offers;
      guard = 0;
      for (;;) {
        step = await this.#loginStep(itt, STAGE_OPERATIONAL, STAGE_FULL_FEATURE, true, pairs);
        const answers: Array<[string, string]> = [];
        for (const [k, val] of step.keys) {
          got.set(k, val);
          if (!offers.some(([o]) => o === k) && !DECLARATIVE_FROM_TARGET.has(k)) {
            answers.push([k, "NotUnderstood"]);
          }
        }
        if (step.transit && step.nsg === STAGE_FULL_FEATURE) break;
        if (++guard > 8) throw new IscsiProtocolError("operational negotiation did not converge");
        pairs = answers;
      }
    }
    const num = (k: string, dflt: number): number => {
      const s = got.get(k);
      const n = s === undefined ? NaN : Number(s);
      return Number.isInteger(n) && n > 0 ? n : dflt;
    };
    for (const k of ["HeaderDigest", "DataDigest"]) {
      const val = got.get(k);
      if (val !== undefined && val !== "None") {
        throw new IscsiProtocolError(`target insists on ${k}=${val}; vmkit supports only None`);
      }
    }
    const targetMrdsl = Math.min(num("MaxRecvDataSegmentLength", 8192), MAX_ACCEPTED_SEGMENT);
    const maxBurst = num("MaxBurstLength", 262144);
    const firstBurst = Math.min(num("FirstBurstLength", 65536), maxBurst);
    this.#params = {
      targetMaxRecvDataSegmentLength: targetMrdsl,
      maxRecvDataSegmentLength: mrdsl,
      maxBurstLength: maxBurst,
      firstBurstLength: firstBurst,
      initialR2T: got.get("InitialR2T") !== "No",
      immediateData: got.get("ImmediateData") !== "No",
      tsih: this.#tsih,
    };
    this.#cmdSN = this.#expCmdSN;
  }

  // ------------------------------------------------------------- PDU dispatch

  #handlePdu(buf: Uint8Array, v: DataView, off: number, dataOff: number, dlen: number): void {
    const op = v.getUint8(off + OFF_OPCODE) & OPCODE_MASK;
    switch (op) {
      case OP_DATA_IN:
        this.#onDataIn(buf, v, off, dataOff, dlen);
        return;
      case OP_SCSI_RSP:
        this.#onResponse(buf, v, off, dataOff, dlen);
        return;
      case OP_R2T:
        this.#updateWindow(v, off);
        this.#onR2T(v, off);
        return;
      case OP_NOP_IN:
        this.#onNopIn(v, off);
        return;
      case OP_LOGIN_RSP:
      case OP_TEXT_RSP:
      case OP_LOGOUT_RSP: {
        if (op !== OP_LOGIN_RSP) {
          this.#expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
          this.#updateWindow(v, off);
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
        this.#updateWindow(v, off);
        const event = v.getUint8(off + OFF_DATASN);
        // 1: logout requested, 2/3: connection/session dropped; log in afresh.
        if (event >= 1 && event <= 3) {
          throw new IscsiConnectionError(`target sent asynchronous event ${event}; reconnecting`);
        }
        return;
      }
      case OP_TMF_RSP:
        this.#updateWindow(v, off);
        return;
      default:
        throw new IscsiProtocolError(`target sent unknown opcode 0x${op.toString(16)}`);
    }
  }

  #updateWindow(v: DataView, off: number): void {
    const exp = v.getUint32(off + OFF_EXPCMDSN);
    const max = v.getUint32(off + OFF_MAXCMDSN);
    // RFC 7143 §4.2.2.1: ignore the pair if MaxCmdSN < ExpCmdSN - 1.
    if (snLess(max, (exp - 1) >>> 0)) return;
    if (snLess(this.#expCmdSN, exp)) this.#expCmdSN = exp;
    if (snLess(this.#maxCmdSN, max)) {
      this.#maxCmdSN = max;
      if (this.#waiting.length > 0) this.#dispatch();
    }
  }

  /**
   * The slice of a read command's buffer that the (still arriving) payload of
   * the Data-In whose header is at `off` belongs in, or undefined to take the
   * ordinary path (small, unaligned, unknown task, or out of bounds: the
   * ordinary path reports those).
   */
  #directTarget(v: DataView, off: number, dlen: number): Uint8Array | undefined {
    if (dlen < DIRECT_MIN || (dlen & 3) !== 0) return undefined;
    if ((v.getUint8(off + OFF_OPCODE) & OPCODE_MASK) !== OP_DATA_IN) return undefined;
    const task = this.#tasks.get(v.getUint32(off + OFF_ITT));
    const dst = task?.dataIn;
    if (task === undefined || !task.issued || dst === undefined) return undefined;
    const bufOff = v.getUint32(off + OFF_BUFFER_OFFSET);
    if (bufOff + dlen > dst.length) return undefined;
    return dst.subarray(bufOff, bufOff + dlen);
  }

  #onDataIn(
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
    this.#updateWindow(v, off);
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
      this.#expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
      this.#finish(task, {
        status: v.getUint8(off + OFF_BYTE3),
        residual: v.getUint32(off + OFF_RESIDUAL),
        underflow: (flags & FLAG_UNDERFLOW) !== 0,
        overflow: (flags & FLAG_OVERFLOW) !== 0,
        sense: undefined,
      });
    }
  }

  #onResponse(buf: Uint8Array, v: DataView, off: number, dataOff: number, dlen: number): void {
    const itt = v.getUint32(off + OFF_ITT);
    this.#expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
    this.#updateWindow(v, off);
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

  #onR2T(v: DataView, off: number): void {
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
    const seg = this.params.targetMaxRecvDataSegmentLength;
    let dataSN = 0;
    for (let o = from; o < from + len; o += seg) {
      const n = Math.min(seg, from + len - o);
      const at = this.#reserve(BHS_LEN + padded(n));
      const pv = this.#oview;
      pv.setUint8(at + OFF_OPCODE, OP_DATA_OUT);
      pv.setUint8(at + OFF_FLAGS, o + n >= from + len ? FLAG_FINAL : 0);
      setDataSegmentLength(pv, at, n);
      setLun(pv, at, task.lun);
      pv.setUint32(at + OFF_ITT, task.itt);
      pv.setUint32(at + OFF_TTT, ttt);
      pv.setUint32(at + OFF_EXPSTATSN, this.#expStatSN);
      pv.setUint32(at + OFF_DATASN, dataSN++);
      pv.setUint32(at + OFF_BUFFER_OFFSET, o);
      this.#obuf.set(data.subarray(o, o + n), at + BHS_LEN);
      this.#queued(hold);
    }
  }

  #onNopIn(v: DataView, off: number): void {
    const itt = v.getUint32(off + OFF_ITT);
    const ttt = v.getUint32(off + OFF_TTT);
    if (itt !== RESERVED_TAG) {
      this.#expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
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
    this.#updateWindow(v, off);
    if (ttt !== RESERVED_TAG) {
      // The target pings us: answer with the same TTT and LUN, immediate, no CmdSN advance.
      this.targetPingsAnswered++;
      const h = new Uint8Array(BHS_LEN);
      const hv = new DataView(h.buffer);
      hv.setUint8(OFF_OPCODE, OP_NOP_OUT | FLAG_IMMEDIATE);
      hv.setUint8(OFF_FLAGS, FLAG_FINAL);
      hv.setBigUint64(OFF_LUN, v.getBigUint64(off + OFF_LUN));
      hv.setUint32(OFF_ITT, RESERVED_TAG);
      hv.setUint32(OFF_TTT, ttt);
      hv.setUint32(OFF_CMDSN, this.#cmdSN);
      hv.setUint32(OFF_EXPSTATSN, this.#expStatSN);
      this.#send(h);
    }
  }

  #onReject(buf: Uint8Array, v: DataView, off: number, dataOff: number, dlen: number): void {
    this.#updateWindow(v, off);
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
    const task = this.#tasks.get(itt);
    if (task !== undefined) {
      this.#finish(task, undefined, err);
      return;
    }
    const w = this.#waiters.get(itt);
    if (w !== undefined) {
      this.#waiters.delete(itt);
      w({ header: buf.slice(dataOff, dataOff + BHS_LEN), data: new Uint8Array(0) });
      return;
    }
    throw err;
  }

  #finish(task: Task, result: ScsiResult | undefined, err?: unknown): void {
    this.#tasks.delete(task.itt);
    if (task.issued) {
      task.issued = false;
      this.#sentCmds--;
      // Held commands go out once the target's queue runs low.
      if (this.#heldCmds > 0 && !this.#writing) void this.#flush();
    }
    if (err !== undefined || result === undefined) task.reject(err);
    else task.resolve(result);
  }

  // ---------------------------------------------------------------- commands

  #dispatch(): void {
    if (this.#state !== "ready") return;
    while (this.#waiting.length > 0 && snLessEq(this.#cmdSN, this.#maxCmdSN)) {
      const task = this.#waiting.shift();
      if (task === undefined) break;
      if (!this.#tasks.has(task.itt)) continue;
      this.#issue(task);
    }
  }

  #issue(task: Task): void {
    const p = this.params;
    const data = task.dataOut;
    const edtl = data?.length ?? task.dataIn?.length ?? 0;
    let immediate = 0;
    if (data !== undefined && p.immediateData) {
      immediate = Math.min(data.length, p.firstBurstLength, p.targetMaxRecvDataSegmentLength);
    }
    task.cmdSN = this.#cmdSN;
    this.#cmdSN = (this.#cmdSN + 1) >>> 0;
    task.issued = true;
    this.#sentCmds++;
    // Encoded straight into the output buffer: no per-command allocation.
    const off = this.#reserve(BHS_LEN + padded(immediate));
    const pdu = this.#obuf;
    const v = this.#oview;
    v.setUint8(off + OFF_OPCODE, OP_SCSI_CMD);
    let flags = FLAG_FINAL | ATTR_SIMPLE;
    if (task.dataIn !== undefined) flags |= FLAG_READ;
    if (data !== undefined) flags |= FLAG_WRITE;
    const unsolicited = data !== undefined && !p.initialR2T
      ? Math.min(data.length, p.firstBurstLength)
      : immediate;
    if (unsolicited > immediate) flags &= ~FLAG_FINAL;
    v.setUint8(off + OFF_FLAGS, flags);
    setDataSegmentLength(v, off, immediate);
    setLun(v, off, task.lun);
    v.setUint32(off + OFF_ITT, task.itt);
    v.setUint32(off + OFF_EDTL, edtl);
    v.setUint32(off + OFF_CMDSN, task.cmdSN);
    v.setUint32(off + OFF_EXPSTATSN, this.#expStatSN);
    pdu.set(task.cdb, off + OFF_CDB);
    if (immediate > 0 && data !== undefined) {
      pdu.set(data.subarray(0, immediate), off + BHS_LEN);
    }
    this.#queued(true);
    if (data !== undefined && unsolicited > immediate) {
      this.#sendDataOut(task, data, immediate, unsolicited - immediate, RESERVED_TAG, true);
    }
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
    return new Promise<ScsiResult>((resolve, reject) => {
      const task: Task = {
        itt: this.#allocItt(),
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
        this.#state === "ready" && this.#waiting.length === 0 &&
        snLessEq(this.#cmdSN, this.#maxCmdSN)
      ) {
        this.#issue(task);
      } else {
        this.#waiting.push(task);
      }
    });
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
    const h = new Uint8Array(BHS_LEN);
    const v = new DataView(h.buffer);
    v.setUint8(OFF_OPCODE, OP_NOP_OUT | FLAG_IMMEDIATE);
    v.setUint8(OFF_FLAGS, FLAG_FINAL);
    v.setUint32(OFF_ITT, itt);
    v.setUint32(OFF_TTT, RESERVED_TAG);
    v.setUint32(OFF_CMDSN, this.#cmdSN);
    v.setUint32(OFF_EXPSTATSN, this.#expStatSN);
    await this.#exchange(h, itt);
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
      const pdu = new Uint8Array(BHS_LEN + padded(payload.length));
      const v = new DataView(pdu.buffer);
      v.setUint8(OFF_OPCODE, OP_TEXT_REQ | FLAG_IMMEDIATE);
      v.setUint8(OFF_FLAGS, FLAG_FINAL);
      setDataSegmentLength(v, 0, payload.length);
      v.setUint32(OFF_ITT, itt);
      v.setUint32(OFF_TTT, ttt);
      v.setUint32(OFF_CMDSN, this.#cmdSN);
      v.setUint32(OFF_EXPSTATSN, this.#expStatSN);
      pdu.set(payload, BHS_LEN);
      const rsp = await this.#exchange(pdu, itt);
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
      const h = new Uint8Array(BHS_LEN);
      const v = new DataView(h.buffer);
      v.setUint8(OFF_OPCODE, OP_LOGOUT_REQ | FLAG_IMMEDIATE);
      v.setUint8(OFF_FLAGS, FLAG_FINAL | 0); // reason 0: close the session
      v.setUint32(OFF_ITT, itt);
      v.setUint32(OFF_CMDSN, this.#cmdSN);
      v.setUint32(OFF_EXPSTATSN, this.#expStatSN);
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await Promise.race([
          this.#exchange(h, itt),
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
    this.#state = "closed";
    this.#stopKeepalive();
    const c = this.#connection;
    if (c !== undefined) {
      this.#generation++;
      this.#dropConnection(c);
      await c.reader;
    }
    if (this.#reconnecting !== undefined) await this.#reconnecting;
    if (!wasClosed || this.#tasks.size > 0) {
      this.#failAll(new IscsiSessionClosedError("the iSCSI session was closed"));
    }
    for (const [, w] of this.#waiters) w({ header: new Uint8Array(0), data: new Uint8Array(0) });
    this.#waiters.clear();
  }
}

/** Keys a target may declare without us having offered them. */
const DECLARATIVE_FROM_TARGET = new Set([
  "TargetAlias",
  "TargetAddress",
  "TargetPortalGroupTag",
  "MaxRecvDataSegmentLength",
]);
