/**
 * NOP-Out and NOP-In (RFC 7143 §11.18, §11.19): the keepalive of a session
 * (a ping of ours after a quiet spell, the connection declared dead when it
 * goes unanswered) and the answers to the target's own pings (same Target
 * Transfer Tag and LUN, immediate, no CmdSN advance).
 *
 * @module
 */

import { IscsiConnectionError } from "./errors.ts";
import type { IscsiConnection } from "./iscsi_connection.ts";
import type { IscsiRequests } from "./iscsi_requests.ts";
import type { IscsiTasks } from "./iscsi_tasks.ts";
import { BHS_LEN, OFF_ITT, OFF_LUN, OFF_STATSN, OFF_TTT, RESERVED_TAG } from "./iscsi_pdu.ts";
import { pduLength, putNopOut } from "./iscsi_pdu_build.ts";

/** What the keepalive needs of its session. */
export interface NopSession {
  /** The session's numbering (CmdSN, ExpStatSN, the target's window). */
  readonly tasks: IscsiTasks;
  /** The requests waiting for answers ({@link IscsiNop.ping} is one). */
  readonly requests: IscsiRequests;
  /** The connection while the session is in full feature phase, else undefined. */
  ready(): IscsiConnection | undefined;
  /** An ITT no task or request uses. */
  allocItt(): number;
  /** The connection `c` is dead (a ping went unanswered). */
  lost(c: IscsiConnection, cause: unknown): void;
}

/** The NOP-Out pings of one session and its answers to the target's. */
export class IscsiNop {
  /** Number of keepalive NOP-Out pings the target answered. */
  keepalivesAnswered = 0;
  /** Number of target NOP-In pings answered. */
  targetPingsAnswered = 0;
  readonly #s: NopSession;
  #pingItt = -1;
  #pingSent = 0;
  #timer: ReturnType<typeof setInterval> | undefined;

  /** The NOP handling of session `s`. */
  constructor(s: NopSession) {
    this.#s = s;
  }

  /**
   * Pings after `everyMs` without traffic (0: never) and declares the
   * connection dead when a ping is unanswered for `timeoutMs`.
   */
  start(everyMs: number, timeoutMs: number): void {
    if (everyMs <= 0 || this.#timer !== undefined) return;
    const timer = setInterval(() => {
      const c = this.#s.ready();
      if (c === undefined) return;
      const now = Date.now();
      if (this.#pingItt >= 0) {
        if (now - this.#pingSent > timeoutMs) {
          this.#s.lost(c, new IscsiConnectionError(`NOP-Out ping unanswered for ${timeoutMs} ms`));
        }
        return;
      }
      if (now - c.lastRx >= everyMs) {
        this.#pingItt = this.#s.allocItt();
        this.#pingSent = now;
        this.#put(c, this.#pingItt, RESERVED_TAG);
      }
    }, Math.max(50, Math.min(everyMs, timeoutMs) / 2));
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  /** Stops the keepalive. */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** The connection went away: the ping on it will never be answered. */
  reset(): void {
    this.#pingItt = -1;
  }

  /** Sends a NOP-Out ping as request `itt` of {@link NopSession.requests} on `c`. */
  ping(c: IscsiConnection, itt: number): void {
    this.#put(c, itt, RESERVED_TAG);
  }

  /** A NOP-In at `off`: the answer to a ping of ours, or a ping of the target's. */
  onNopIn(v: DataView, off: number): void {
    const tasks = this.#s.tasks;
    const itt = v.getUint32(off + OFF_ITT);
    const ttt = v.getUint32(off + OFF_TTT);
    if (itt !== RESERVED_TAG) {
      tasks.expStatSN = (v.getUint32(off + OFF_STATSN) + 1) >>> 0;
      if (itt === this.#pingItt) {
        this.#pingItt = -1;
        this.keepalivesAnswered++;
      }
      this.#s.requests.answer(itt, { header: new Uint8Array(BHS_LEN), data: new Uint8Array(0) });
    }
    tasks.updateWindow(v, off);
    if (ttt !== RESERVED_TAG) {
      this.targetPingsAnswered++;
      const c = this.#s.ready();
      if (c !== undefined) this.#put(c, RESERVED_TAG, ttt, v.getBigUint64(off + OFF_LUN));
    }
  }

  /** Queues a NOP-Out at once: a ping of ours (`itt`), or an answer to a target's ping (`ttt`, `lun`). */
  #put(c: IscsiConnection, itt: number, ttt: number, lun?: bigint): void {
    const off = c.reserve(pduLength(0));
    putNopOut(c.out, c.outView, off, itt, ttt, this.#s.tasks.cmdSN, this.#s.tasks.expStatSN, lun);
    c.queued(false);
  }
}
