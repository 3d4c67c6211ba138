/**
 * Fibre Channel World Wide Names (WWPN/WWNN): parse NAA 1, 2, 5 and 6,
 * format as colon-separated hex, and build NAA 5 names from an IEEE OUI.
 *
 * Layouts (most significant bit first):
 * - NAA 1 (IEEE 48-bit): 4 NAA | 12 zero | 48-bit IEEE MAC (OUI + 24 bits).
 * - NAA 2 (IEEE extended): 4 NAA | 12 vendor | 24 OUI | 24 vendor.
 * - NAA 5 (IEEE registered): 4 NAA | 24 OUI | 36 vendor.
 * - NAA 6 (IEEE registered extended, 128 bits): NAA 5 layout | 64-bit extension.
 *
 * @module
 */

import { SuiFormatError } from "./errors.ts";

/** The NAA values this module understands. */
export type NaaType = 1 | 2 | 5 | 6;

/** A parsed World Wide Name. */
export interface Wwn {
  /** Name Address Authority (the top 4 bits). */
  readonly naa: NaaType;
  /** The IEEE Organizationally Unique Identifier embedded in the name. */
  readonly oui: number;
  /** Vendor-specific bits (for NAA 2: the 12 high bits then the 24 low bits, concatenated). */
  readonly vendor: bigint;
  /** The 64-bit value (for NAA 6: the first 64 bits). */
  readonly high: bigint;
  /** For NAA 6, the 64-bit vendor-specific extension; otherwise undefined. */
  readonly extension?: bigint;
  /** Canonical form: lower-case, colon-separated hex bytes. */
  readonly text: string;
}

const MASK24 = 0xffffffn;
const MASK36 = (1n << 36n) - 1n;
const MASK64 = (1n << 64n) - 1n;

/** Formats 8 or 16 bytes of a WWN as lower-case colon-separated hex. */
function colonHex(value: bigint, bytes: number): string {
  const out: string[] = [];
  for (let i = bytes - 1; i >= 0; i--) {
    out.push(((value >> BigInt(i * 8)) & 0xffn).toString(16).padStart(2, "0"));
  }
  return out.join(":");
}

/**
 * Parses a WWN written as 16 (or, for NAA 6, 32) hex digits, with optional
 * `:`/`-` separators between bytes or 2-byte groups and an optional `0x` or `naa.` prefix.
 *
 * @example
 * ```ts
 * const w = parseWwn("50:01:43:80:12:34:56:78");
 * console.log(w.naa, w.oui.toString(16)); // 5 14380
 * ```
 */
export function parseWwn(input: string): Wwn {
  let s = input.trim().toLowerCase();
  if (s.startsWith("0x")) s = s.slice(2);
  else if (s.startsWith("naa.")) s = s.slice(4);
  const separated = /^([0-9a-f]{2}|[0-9a-f]{4})([:-]([0-9a-f]{2}|[0-9a-f]{4}))+$/.test(s);
  const hex = separated ? s.replace(/[:-]/g, "") : s;
  if (!/^[0-9a-f]+$/.test(hex) || (hex.length !== 16 && hex.length !== 32)) {
    throw new SuiFormatError(
      input,
      `'${input}' is not a WWN: expected 16 hex digits (32 for NAA 6), ` +
        `e.g. 50:01:43:80:12:34:56:78`,
    );
  }
  const high = BigInt("0x" + hex.slice(0, 16));
  const naa = Number(high >> 60n);
  if (hex.length === 32 && naa !== 6) {
    throw new SuiFormatError(
      input,
      `'${input}' has 128 bits but NAA ${naa}; only NAA 6 is 128-bit`,
    );
  }
  switch (naa) {
    case 1: {
      if (((high >> 48n) & 0xfffn) !== 0n) {
        throw new SuiFormatError(input, `'${input}' is NAA 1 but bits 59..48 are not zero`);
      }
      const oui = Number((high >> 24n) & MASK24);
      return { naa: 1, oui, vendor: high & MASK24, high, text: colonHex(high, 8) };
    }
    case 2: {
      const oui = Number((high >> 24n) & MASK24);
      const vendor = (((high >> 48n) & 0xfffn) << 24n) | (high & MASK24);
      return { naa: 2, oui, vendor, high, text: colonHex(high, 8) };
    }
    case 5: {
      if (hex.length !== 16) {
        throw new SuiFormatError(input, `'${input}' is NAA 5 and must be exactly 64 bits`);
      }
      const oui = Number((high >> 36n) & MASK24);
      return { naa: 5, oui, vendor: high & MASK36, high, text: colonHex(high, 8) };
    }
    case 6: {
      if (hex.length !== 32) {
        throw new SuiFormatError(input, `'${input}' is NAA 6 and must be 128 bits (32 hex digits)`);
      }
      const oui = Number((high >> 36n) & MASK24);
      const extension = BigInt("0x" + hex.slice(16));
      const text = colonHex(high, 8) + ":" + colonHex(extension, 8);
      return { naa: 6, oui, vendor: high & MASK36, high, extension, text };
    }
    default:
      throw new SuiFormatError(
        input,
        `'${input}' has NAA ${naa}; supported NAA types are 1, 2, 5 and 6`,
      );
  }
}

/** Formats a WWN (a parsed one or a raw 64-bit value) as colon-separated hex. */
export function formatWwn(wwn: Wwn | bigint): string {
  if (typeof wwn === "bigint") return colonHex(wwn & MASK64, 8);
  return wwn.text;
}

/** Returns true if `input` parses as a WWN. */
export function isWwn(input: string): boolean {
  try {
    parseWwn(input);
    return true;
  } catch (err) {
    if (err instanceof SuiFormatError) return false;
    throw err;
  }
}

/** Builds an NAA 5 WWN from a 24-bit IEEE OUI and 36 vendor-specific bits. */
export function makeNaa5(oui: number, vendor: bigint): Wwn {
  if (!Number.isInteger(oui) || oui < 0 || oui > 0xffffff) {
    throw new SuiFormatError(String(oui), `OUI ${oui} is not a 24-bit value (0..0xffffff)`);
  }
  if (vendor < 0n || vendor > MASK36) {
    throw new SuiFormatError(String(vendor), `vendor bits ${vendor} do not fit in 36 bits`);
  }
  const high = (5n << 60n) | (BigInt(oui) << 36n) | vendor;
  return { naa: 5, oui, vendor, high, text: colonHex(high, 8) };
}

/** A WWPN/WWNN pair for one NPIV virtual port. */
export interface WwnPair {
  /** World Wide Port Name (the per-VM login identity). */
  readonly wwpn: string;
  /** World Wide Node Name. */
  readonly wwnn: string;
}

/**
 * Builds the NPIV pair for a 35-bit identity: both NAA 5 under `oui`, the
 * vendor bits are `id << 1 | 1` for the WWPN and `id << 1` for the WWNN, so
 * distinct identities can never share either name.
 */
export function makeWwnPair(oui: number, id: bigint): WwnPair {
  if (id < 0n || id >= 1n << 35n) {
    throw new SuiFormatError(String(id), `WWN identity ${id} does not fit in 35 bits`);
  }
  return {
    wwpn: makeNaa5(oui, (id << 1n) | 1n).text,
    wwnn: makeNaa5(oui, id << 1n).text,
  };
}

/** The WWNN paired with a WWPN made by {@link makeWwnPair}. */
export function wwnnForWwpn(wwpn: string): string {
  const w = parseWwn(wwpn);
  if (w.naa !== 5) {
    throw new SuiFormatError(wwpn, `'${wwpn}' is not NAA 5; no vmkit WWNN can be derived`);
  }
  return makeNaa5(w.oui, w.vendor & ~1n).text;
}
