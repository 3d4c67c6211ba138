/**
 * iSCSI text key=value data segments (RFC 7143 §6): NUL-terminated UTF-8
 * `key=value` pairs, used in login and text PDUs.
 *
 * @module
 */

import { IscsiProtocolError } from "./errors.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Longest key name (RFC 7143 §6.1). */
export const MAX_KEY_LEN = 63;

/** Encodes ordered pairs as a text data segment. */
export function encodeText(pairs: ReadonlyArray<readonly [string, string]>): Uint8Array {
  let s = "";
  for (const [k, v] of pairs) {
    if (k.length === 0 || k.length > MAX_KEY_LEN || /[=\0]/.test(k) || v.includes("\0")) {
      throw new IscsiProtocolError(`cannot encode text key '${k}'`);
    }
    s += `${k}=${v}\0`;
  }
  return encoder.encode(s);
}

/**
 * Decodes a text data segment into ordered pairs (a key may repeat, e.g.
 * TargetName/TargetAddress in SendTargets responses).
 */
export function decodeText(data: Uint8Array): Array<[string, string]> {
  let s: string;
  try {
    s = decoder.decode(data);
  } catch (err) {
    throw new IscsiProtocolError("target sent text data that is not UTF-8", { cause: err });
  }
  const out: Array<[string, string]> = [];
  for (const item of s.split("\0")) {
    if (item === "") continue;
    const eq = item.indexOf("=");
    if (eq <= 0 || eq > MAX_KEY_LEN) {
      throw new IscsiProtocolError(`target sent a malformed text pair '${item.slice(0, 80)}'`);
    }
    out.push([item.slice(0, eq), item.slice(eq + 1)]);
  }
  return out;
}
