/**
 * How an `IscsiSession` reaches and logs in to a target, and how it
 * keeps the connection alive.
 *
 * @module
 */

import type { ChapCredentials } from "./chap.ts";

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
