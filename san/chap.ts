/**
 * CHAP for iSCSI login (RFC 1994, RFC 7143 §12.1.3): MD5 responses over
 * identifier, secret and challenge, hex-encoded as `0x…`.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { IscsiProtocolError } from "./errors.ts";

/** CHAP algorithm number for MD5. */
export const CHAP_MD5 = 5;

/** Credentials for CHAP; `mutual*` makes the initiator authenticate the target too. */
export interface ChapCredentials {
  /** CHAP_N the initiator sends. */
  readonly username: string;
  /** Shared secret (tgtd requires 12..16 characters for some initiators; any length works here). */
  readonly secret: string;
  /** Expected target user name for mutual CHAP. */
  readonly mutualUsername?: string;
  /** Target secret for mutual CHAP. */
  readonly mutualSecret?: string;
}

/** Decodes a CHAP binary value given as `0x` hex or `0b` base64. */
export function decodeChapValue(text: string): Uint8Array {
  const t = text.trim();
  if (/^0x[0-9a-fA-F]+$/.test(t)) {
    const hex = t.slice(2);
    const even = hex.length % 2 === 0 ? hex : "0" + hex;
    const out = new Uint8Array(even.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(even.slice(i * 2, i * 2 + 2), 16);
    return out;
  }
  if (/^0b[A-Za-z0-9+/=]+$/.test(t)) {
    const bin = atob(t.slice(2));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }
  throw new IscsiProtocolError(`CHAP value '${t.slice(0, 40)}' is neither 0x-hex nor 0b-base64`);
}

/** Encodes bytes as `0x` lower-case hex. */
export function encodeChapValue(bytes: Uint8Array): string {
  let s = "0x";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/** MD5(identifier || secret || challenge). */
export function chapResponse(
  identifier: number,
  secret: string,
  challenge: Uint8Array,
): Uint8Array {
  const h = createHash("md5");
  h.update(Uint8Array.of(identifier & 0xff));
  h.update(new TextEncoder().encode(secret));
  h.update(challenge);
  return new Uint8Array(h.digest());
}
