/**
 * iSCSI names (RFC 3720 §3.2.6, RFC 3722 stringprep profile, RFC 3980 `naa.`):
 * `iqn.YYYY-MM.reversed.domain[:unique]`, `eui.` + 16 hex digits and `naa.` +
 * 16 or 32 hex digits. Names are case-insensitive; the canonical form is
 * NFKC-normalised lower case, at most 223 bytes of UTF-8.
 *
 * @module
 */

import { SuiFormatError } from "./errors.ts";

/** Longest iSCSI name in bytes of UTF-8 (RFC 3720 §3.2.6.1). */
export const ISCSI_NAME_MAX_BYTES = 223;

/** The three iSCSI name formats. */
export type IscsiNameType = "iqn" | "eui" | "naa";

/** A validated iSCSI name. */
export interface IscsiName {
  /** Which format. */
  readonly type: IscsiNameType;
  /** The normalised name. */
  readonly name: string;
  /** For `iqn.`: the year-month of the naming authority ("2024-01"). */
  readonly date?: string;
  /** For `iqn.`: the reversed domain name of the naming authority. */
  readonly authority?: string;
  /** For `iqn.`: the part after the first ':' (may be empty), else the hex digits. */
  readonly unique: string;
}

const LABEL = "[a-z0-9]([a-z0-9-]*[a-z0-9])?";
const IQN_RE = new RegExp(
  `^iqn\\.(\\d{4}-(0[1-9]|1[0-2]))\\.(${LABEL}(\\.${LABEL})*)(:(.*))?$`,
  "u",
);
// RFC 3722 allows letters and digits of any script plus '-', '.', ':'.
const ALLOWED_RE = /^[\p{Ll}\p{Lo}\p{Lm}\p{Nd}\-.:]*$/u;
const encoder = new TextEncoder();

/** Applies the RFC 3722 normalisation: NFKC, case folding to lower case, trimming. */
export function normalizeIscsiName(input: string): string {
  return input.trim().normalize("NFKC").toLowerCase();
}

/**
 * Parses and validates an iSCSI name, returning its normalised form.
 *
 * @example
 * ```ts
 * const n = parseIscsiName("IQN.2024-01.dev.vmkit:VM-1");
 * console.log(n.name); // iqn.2024-01.dev.vmkit:vm-1
 * ```
 */
export function parseIscsiName(input: string): IscsiName {
  const name = normalizeIscsiName(input);
  const bytes = encoder.encode(name).length;
  if (bytes === 0) throw new SuiFormatError(input, "an iSCSI name must not be empty");
  if (bytes > ISCSI_NAME_MAX_BYTES) {
    throw new SuiFormatError(
      input,
      `iSCSI name is ${bytes} bytes long; the limit is ${ISCSI_NAME_MAX_BYTES} bytes (RFC 3720)`,
    );
  }
  if (!ALLOWED_RE.test(name)) {
    const bad = [...name].find((c) => !ALLOWED_RE.test(c)) ?? "?";
    throw new SuiFormatError(
      input,
      `iSCSI name '${input}' contains '${bad}'; only letters, digits, '-', '.' and ':' are allowed`,
    );
  }
  if (name.startsWith("iqn.")) {
    const m = IQN_RE.exec(name);
    if (m === null) {
      throw new SuiFormatError(
        input,
        `'${input}' is not a valid iqn name: expected iqn.YYYY-MM.reversed.domain[:unique], ` +
          `e.g. iqn.2024-01.dev.vmkit:vm-1`,
      );
    }
    return {
      type: "iqn",
      name,
      date: m[1] ?? "",
      authority: m[3] ?? "",
      unique: m[8] ?? "",
    };
  }
  if (name.startsWith("eui.")) {
    const hex = name.slice(4);
    if (!/^[0-9a-f]{16}$/.test(hex)) {
      throw new SuiFormatError(
        input,
        `'${input}' is not a valid eui name: expected eui. + 16 hex digits`,
      );
    }
    return { type: "eui", name, unique: hex };
  }
  if (name.startsWith("naa.")) {
    const hex = name.slice(4);
    if (!/^([0-9a-f]{16}|[0-9a-f]{32})$/.test(hex)) {
      throw new SuiFormatError(
        input,
        `'${input}' is not a valid naa name: expected naa. + 16 or 32 hex digits`,
      );
    }
    return { type: "naa", name, unique: hex };
  }
  throw new SuiFormatError(
    input,
    `'${input}' is not an iSCSI name: it must start with 'iqn.', 'eui.' or 'naa.'`,
  );
}

/** Returns true if `input` is a valid iSCSI name. */
export function isIscsiName(input: string): boolean {
  try {
    parseIscsiName(input);
    return true;
  } catch (err) {
    if (err instanceof SuiFormatError) return false;
    throw err;
  }
}

/**
 * Builds an `iqn.` name from a naming-authority prefix (`iqn.YYYY-MM.domain`)
 * and a unique suffix, validating the result.
 */
export function makeIqn(prefix: string, unique: string): string {
  const p = parseIscsiName(prefix);
  if (p.type !== "iqn" || p.unique !== "" || prefix.includes(":")) {
    throw new SuiFormatError(
      prefix,
      `'${prefix}' is not an iqn naming-authority prefix like iqn.2024-01.dev.vmkit`,
    );
  }
  return parseIscsiName(`${p.name}:${unique}`).name;
}
