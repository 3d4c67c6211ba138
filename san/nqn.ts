/**
 * NVMe Qualified Names (NVM Express Base Specification §4.7): the UUID form
 * `nqn.2014-08.org.nvmexpress:uuid:<uuid>` used for host NQNs, and the
 * domain form `nqn.YYYY-MM.reversed.domain:<string>`; at most 223 bytes.
 *
 * @module
 */

import { SuiFormatError } from "./errors.ts";

/** Longest NQN in bytes of UTF-8. */
export const NQN_MAX_BYTES = 223;
/** Prefix of UUID-based NQNs. */
export const NQN_UUID_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:";

/** A parsed NQN. */
export interface Nqn {
  /** The NQN text (UUID lower-cased). */
  readonly name: string;
  /** For the UUID form, the UUID; otherwise undefined. */
  readonly uuid?: string;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DOMAIN_RE =
  /^nqn\.\d{4}-(0[1-9]|1[0-2])\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*:[\p{L}\p{N}\p{P}\p{S}]+$/u;
const encoder = new TextEncoder();

/**
 * Parses and validates an NQN.
 *
 * @example
 * ```ts
 * const n = parseNqn("nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6");
 * console.log(n.uuid); // f81d4fae-7dec-11d0-a765-00a0c91e6bf6
 * ```
 */
export function parseNqn(input: string): Nqn {
  const s = input.trim();
  const bytes = encoder.encode(s).length;
  if (bytes > NQN_MAX_BYTES) {
    throw new SuiFormatError(input, `NQN is ${bytes} bytes; the limit is ${NQN_MAX_BYTES} bytes`);
  }
  if (s.toLowerCase().startsWith(NQN_UUID_PREFIX)) {
    const uuid = s.slice(NQN_UUID_PREFIX.length).toLowerCase();
    if (!UUID_RE.test(uuid)) {
      throw new SuiFormatError(
        input,
        `'${input}' has an invalid UUID; expected ${NQN_UUID_PREFIX}xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`,
      );
    }
    return { name: NQN_UUID_PREFIX + uuid, uuid };
  }
  if (!DOMAIN_RE.test(s)) {
    throw new SuiFormatError(
      input,
      `'${input}' is not an NQN: expected ${NQN_UUID_PREFIX}<uuid> or nqn.YYYY-MM.domain:name`,
    );
  }
  return { name: s };
}

/** Builds the UUID-form host NQN for `uuid` (a random one if omitted). */
export function makeHostNqn(uuid: string = crypto.randomUUID()): string {
  return parseNqn(NQN_UUID_PREFIX + uuid).name;
}

/** Returns true if `input` is a valid NQN. */
export function isNqn(input: string): boolean {
  try {
    parseNqn(input);
    return true;
  } catch (err) {
    if (err instanceof SuiFormatError) return false;
    throw err;
  }
}
