/**
 * iSCSI login negotiation (RFC 7143 §6, §13), apart from any socket.
 *
 * {@link negotiateLogin} runs the whole login phase of one connection: the
 * security stage (AuthMethod None, or CHAP with MD5, optionally mutual), then
 * operational negotiation (digests off, ErrorRecoveryLevel 0, immediate and
 * unsolicited data, burst lengths), following Continue bits and answering
 * keys it did not offer with NotUnderstood. It talks to the target only
 * through a {@link PduExchange}, so a test can play the target with plain
 * functions.
 *
 * @module
 */

import { IscsiLoginError, IscsiProtocolError } from "./errors.ts";
import {
  CHAP_MD5,
  type ChapCredentials,
  chapResponse,
  decodeChapValue,
  encodeChapValue,
} from "./chap.ts";
import { decodeText, encodeText } from "./iscsi_text.ts";
import {
  BHS_LEN,
  FLAG_CONTINUE,
  FLAG_TRANSIT,
  OFF_EXPCMDSN,
  OFF_FLAGS,
  OFF_MAXCMDSN,
  OFF_OPCODE,
  OFF_STATSN,
  OFF_STATUS_CLASS,
  OFF_STATUS_DETAIL,
  OFF_TSIH,
  OP_LOGIN_RSP,
  OPCODE_MASK,
  STAGE_FULL_FEATURE,
  STAGE_OPERATIONAL,
  STAGE_SECURITY,
} from "./iscsi_pdu.ts";
import { pduLength, putLoginRequest } from "./iscsi_pdu_build.ts";

/** The largest data segment vmkit accepts from a target. */
export const MAX_ACCEPTED_SEGMENT: number = 16 << 20;
/** Most login text (all Continue PDUs together) vmkit accepts. */
const MAX_LOGIN_TEXT = 1 << 20;
/** Data segment size vmkit declares it can receive unless told otherwise. */
export const DEFAULT_MRDSL = 262144;

/** Keys a target may declare without us having offered them. */
const DECLARATIVE_FROM_TARGET = new Set([
  "TargetAlias",
  "TargetAddress",
  "TargetPortalGroupTag",
  "MaxRecvDataSegmentLength",
]);

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

/** A PDU as received: its 48-byte header and its data segment (unpadded). */
export interface RawPdu {
  /** The Basic Header Segment. */
  readonly header: Uint8Array;
  /** The data segment, without padding. */
  readonly data: Uint8Array;
}

/** Sends one request PDU and resolves with the target's PDU of the same ITT. */
export type PduExchange = (pdu: Uint8Array) => Promise<RawPdu>;

/** What one connection's login offers. */
export interface LoginOffer {
  /** The session's ISID (6 bytes). */
  readonly isid: Uint8Array;
  /** The ITT every login PDU of this login carries. */
  readonly itt: number;
  /** The session's CmdSN (login PDUs are immediate: it does not advance). */
  readonly cmdSN: number;
  /** The normalised initiator name. */
  readonly initiatorName: string;
  /** Target IQN; omit for a discovery session. */
  readonly targetName?: string | undefined;
  /** CHAP credentials; without them AuthMethod=None is offered. */
  readonly chap?: ChapCredentials | undefined;
  /** MaxRecvDataSegmentLength to declare. */
  readonly maxRecvDataSegmentLength: number;
  /** Offered MaxBurstLength. */
  readonly maxBurstLength: number;
  /** Offered FirstBurstLength. */
  readonly firstBurstLength: number;
}

/** The outcome of a login: what was negotiated and the sequence numbers to go on from. */
export interface LoginResult extends NegotiatedParams {
  /** StatSN of the last login response + 1. */
  readonly expStatSN: number;
  /** The target's ExpCmdSN in the last login response. */
  readonly expCmdSN: number;
  /** The target's MaxCmdSN in the last login response. */
  readonly maxCmdSN: number;
}

/** One login request/response round trip, all its Continue PDUs joined. */
interface StepResult {
  readonly keys: Map<string, string>;
  readonly transit: boolean;
  readonly nsg: number;
}

/** The state one login carries from PDU to PDU. */
class Login {
  tsih = 0; // ERL 0: a new connection reinstates the session (same ISID, TSIH 0)
  expStatSN = 0;
  expCmdSN = 0;
  maxCmdSN = 0;

  constructor(readonly exchange: PduExchange, readonly offer: LoginOffer) {}

  #request(csg: number, nsg: number, transit: boolean, data: Uint8Array): Promise<RawPdu> {
    const o = this.offer;
    const pdu = new Uint8Array(pduLength(data.length));
    putLoginRequest(
      pdu,
      new DataView(pdu.buffer),
      0,
      o.isid,
      this.tsih,
      o.itt,
      csg,
      nsg,
      transit,
      o.cmdSN,
      this.expStatSN,
      data,
    );
    return this.exchange(pdu);
  }

  /** One login request/response round trip, following Continue bits. */
  async step(
    csg: number,
    nsg: number,
    transit: boolean,
    pairs: Array<[string, string]>,
  ): Promise<StepResult> {
    let rsp = await this.#request(csg, nsg, transit, encodeText(pairs));
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
      this.expStatSN = (v.getUint32(OFF_STATSN) + 1) >>> 0;
      if (sc !== 0) {
        const redirect = sc === 1
          ? ` to ${decodeText(rsp.data).find(([k]) => k === "TargetAddress")?.[1] ?? "?"}`
          : "";
        throw new IscsiLoginError(
          sc,
          sd,
          this.offer.initiatorName,
          this.offer.targetName ?? "",
          redirect,
        );
      }
      const flags = v.getUint8(OFF_FLAGS);
      if ((flags & FLAG_CONTINUE) === 0) {
        const keys = new Map<string, string>();
        for (const [k, val] of decodeText(text)) keys.set(k, val);
        this.tsih = v.getUint16(OFF_TSIH);
        this.expCmdSN = v.getUint32(OFF_EXPCMDSN);
        this.maxCmdSN = v.getUint32(OFF_MAXCMDSN);
        return { keys, transit: (flags & FLAG_TRANSIT) !== 0, nsg: flags & 3 };
      }
      if (text.length > MAX_LOGIN_TEXT) {
        throw new IscsiProtocolError(
          `target sent more than ${MAX_LOGIN_TEXT} bytes of login text; refusing`,
        );
      }
      rsp = await this.#request(csg, nsg, false, new Uint8Array(0));
      const joined = new Uint8Array(text.length + rsp.data.length);
      joined.set(text);
      joined.set(rsp.data, text.length);
      text = joined;
    }
  }
}

/**
 * Runs the login phase of one connection through `exchange` and returns the
 * negotiated parameters. Throws {@link IscsiLoginError} when the target
 * refuses (its status class and detail), {@link IscsiProtocolError} when it
 * breaks the protocol or offers less than asked (digests, no CHAP although
 * credentials were given, a failed mutual CHAP proof).
 */
export async function negotiateLogin(
  exchange: PduExchange,
  offer: LoginOffer,
): Promise<LoginResult> {
  const login = new Login(exchange, offer);
  let step = await security(login);
  let guard = 0;
  while (!step.transit) {
    if (++guard > 8) throw new IscsiProtocolError("target never left the security stage");
    step = await login.step(STAGE_SECURITY, STAGE_OPERATIONAL, true, []);
  }
  const got = step.nsg === STAGE_FULL_FEATURE
    ? new Map<string, string>()
    : await operational(login);
  return {
    ...negotiated(got, offer.maxRecvDataSegmentLength),
    tsih: login.tsih,
    expStatSN: login.expStatSN,
    expCmdSN: login.expCmdSN,
    maxCmdSN: login.maxCmdSN,
  };
}

/** The security stage: AuthMethod, then CHAP (one-way or mutual) if the target chose it. */
async function security(login: Login): Promise<StepResult> {
  const { chap, targetName: target, initiatorName } = login.offer;
  const first: Array<[string, string]> = [
    ["InitiatorName", initiatorName],
    ["SessionType", target === undefined ? "Discovery" : "Normal"],
  ];
  if (target !== undefined) first.push(["TargetName", target]);
  first.push(["AuthMethod", chap === undefined ? "None" : "CHAP,None"]);
  const step = await login.step(STAGE_SECURITY, STAGE_OPERATIONAL, chap === undefined, first);
  const method = step.keys.get("AuthMethod");
  if (chap === undefined) return step;
  if (method === "CHAP") return await chapExchange(login, chap);
  if (method === "None") {
    throw new IscsiProtocolError(
      `target '${target}' offered no authentication although CHAP credentials were given; ` +
        `refusing to log in without CHAP`,
    );
  }
  throw new IscsiProtocolError(`target chose unsupported AuthMethod '${method}'`);
}

/** CHAP (RFC 1994 via RFC 7143 §12.1.3): answer the target's challenge, and challenge it back. */
async function chapExchange(login: Login, chap: ChapCredentials): Promise<StepResult> {
  let step = await login.step(STAGE_SECURITY, STAGE_OPERATIONAL, false, [
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
  step = await login.step(STAGE_SECURITY, STAGE_OPERATIONAL, true, reply);
  if (mutual !== undefined) {
    const r = step.keys.get("CHAP_R");
    const expect = encodeChapValue(
      chapResponse(mutual.id, chap.mutualSecret ?? "", mutual.challenge),
    );
    const name = step.keys.get("CHAP_N");
    if (r === undefined || encodeChapValue(decodeChapValue(r)) !== expect) {
      throw new IscsiProtocolError(
        `mutual CHAP failed: target '${login.offer.targetName}' did not prove it knows the ` +
          `target secret`,
      );
    }
    if (chap.mutualUsername !== undefined && name !== chap.mutualUsername) {
      throw new IscsiProtocolError(
        `mutual CHAP failed: target user '${name}' is not '${chap.mutualUsername}'`,
      );
    }
  }
  return step;
}

/** Operational negotiation: vmkit's offers, NotUnderstood for keys it did not offer. */
async function operational(login: Login): Promise<Map<string, string>> {
  const o = login.offer;
  const offers: Array<[string, string]> = [
    ["HeaderDigest", "None"],
    ["DataDigest", "None"],
    ["MaxRecvDataSegmentLength", String(o.maxRecvDataSegmentLength)],
  ];
  if (o.targetName !== undefined) {
    offers.push(
      ["InitialR2T", "No"],
      ["ImmediateData", "Yes"],
      ["MaxBurstLength", String(o.maxBurstLength)],
      ["FirstBurstLength", String(o.firstBurstLength)],
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
  let pairs = offers;
  for (let guard = 0;; guard++) {
    const step = await login.step(STAGE_OPERATIONAL, STAGE_FULL_FEATURE, true, pairs);
    const answers: Array<[string, string]> = [];
    for (const [k, val] of step.keys) {
      got.set(k, val);
      if (!offers.some(([offered]) => offered === k) && !DECLARATIVE_FROM_TARGET.has(k)) {
        answers.push([k, "NotUnderstood"]);
      }
    }
    if (step.transit && step.nsg === STAGE_FULL_FEATURE) return got;
    if (guard >= 8) throw new IscsiProtocolError("operational negotiation did not converge");
    pairs = answers;
  }
}

/** The parameters in force from the target's answers (RFC 7143 §13 defaults where it is silent). */
function negotiated(got: Map<string, string>, mrdsl: number): Omit<NegotiatedParams, "tsih"> {
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
  const maxBurst = num("MaxBurstLength", 262144);
  return {
    targetMaxRecvDataSegmentLength: Math.min(
      num("MaxRecvDataSegmentLength", 8192),
      MAX_ACCEPTED_SEGMENT,
    ),
    maxRecvDataSegmentLength: mrdsl,
    maxBurstLength: maxBurst,
    firstBurstLength: Math.min(num("FirstBurstLength", 65536), maxBurst),
    initialR2T: got.get("InitialR2T") !== "No",
    immediateData: got.get("ImmediateData") !== "No",
  };
}
