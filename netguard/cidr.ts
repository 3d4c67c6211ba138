/**
 * IPv4 and IPv6 prefixes (`10.0.0.0/8`, `fd00::/8`, a bare address) and a
 * set of them matched against addresses read in place from a frame.
 *
 * @module
 */

import { ConfigError } from "./errors.ts";

/** A parsed prefix: version, network bytes and prefix length. */
export interface Prefix {
  /** 4 or 6. */
  version: 4 | 6;
  /** Network address bytes (4 or 16), host bits cleared. */
  bytes: Uint8Array;
  /** Prefix length in bits. */
  bits: number;
}

function parseIpv4Bytes(s: string): Uint8Array | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i] ?? "";
    if (!/^\d{1,3}$/.test(p)) return null;
    const n = Number(p);
    if (n > 255) return null;
    out[i] = n;
  }
  return out;
}

function parseIpv6Bytes(s: string): Uint8Array | null {
  if (!/^[0-9a-fA-F:.]+$/.test(s)) return null;
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const words = (h: string): number[] | null => {
    if (h === "") return [];
    const out: number[] = [];
    const parts = h.split(":");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i] ?? "";
      if (i === parts.length - 1 && p.includes(".")) {
        const v4 = parseIpv4Bytes(p);
        if (v4 === null) return null;
        out.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
        continue;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return null;
      out.push(parseInt(p, 16));
    }
    return out;
  };
  const head = words(halves[0] ?? "");
  const tail = halves.length === 2 ? words(halves[1] ?? "") : [];
  if (head === null || tail === null) return null;
  const fill = 8 - head.length - tail.length;
  if (halves.length === 1 ? fill !== 0 : fill < 1) return null;
  const all = [...head, ...new Array<number>(halves.length === 2 ? fill : 0).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((w, i) => {
    out[i * 2] = w >> 8;
    out[i * 2 + 1] = w & 0xff;
  });
  return out;
}

/**
 * Parses `addr` or `addr/bits`.
 *
 * @param where names the config field, for the error message.
 * @throws {ConfigError} when the text is not an address or prefix.
 */
export function parsePrefix(text: string, where = "prefix"): Prefix {
  const [addr = "", bitsText, extra] = text.trim().split("/");
  if (extra !== undefined) throw new ConfigError(where, `'${text}' is not an address or prefix`);
  const v4 = parseIpv4Bytes(addr);
  const bytes = v4 ?? parseIpv6Bytes(addr);
  if (bytes === null) {
    throw new ConfigError(where, `'${text}' is not an IPv4 or IPv6 address or prefix`);
  }
  const max = bytes.length * 8;
  const bits = bitsText === undefined ? max : Number(bitsText);
  if (!Number.isInteger(bits) || bits < 0 || bits > max || (bitsText ?? "0") === "") {
    throw new ConfigError(where, `'${text}' has a bad prefix length (0..${max})`);
  }
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    bytes[i] = (bytes[i] ?? 0) & ((0xff << (8 - keep)) & 0xff);
  }
  return { version: v4 !== null ? 4 : 6, bytes, bits };
}

/** A set of prefixes, matched against addresses in place. */
export class PrefixSet {
  readonly #v4net: Uint32Array;
  readonly #v4mask: Uint32Array;
  readonly #v6: Prefix[];

  /** Builds the set from parsed prefixes. */
  constructor(prefixes: readonly Prefix[]) {
    const v4 = prefixes.filter((p) => p.version === 4);
    this.#v4net = new Uint32Array(v4.length);
    this.#v4mask = new Uint32Array(v4.length);
    v4.forEach((p, i) => {
      const b = p.bytes;
      this.#v4net[i] =
        (((b[0] ?? 0) << 24) | ((b[1] ?? 0) << 16) | ((b[2] ?? 0) << 8) | (b[3] ?? 0)) >>> 0;
      this.#v4mask[i] = p.bits === 0 ? 0 : (0xffffffff << (32 - p.bits)) >>> 0;
    });
    this.#v6 = prefixes.filter((p) => p.version === 6);
  }

  /** True when the set has no prefix. */
  get empty(): boolean {
    return this.#v4net.length === 0 && this.#v6.length === 0;
  }

  /** Whether the IPv4 address `addr` (unsigned 32-bit) is in the set. */
  hasIpv4(addr: number): boolean {
    for (let i = 0; i < this.#v4net.length; i++) {
      if (((addr & (this.#v4mask[i] ?? 0)) >>> 0) === this.#v4net[i]) return true;
    }
    return false;
  }

  /** Whether the 16-byte IPv6 address at `buf[off]` is in the set. */
  hasIpv6(buf: Uint8Array, off: number): boolean {
    outer: for (const p of this.#v6) {
      let bits = p.bits;
      for (let i = 0; bits > 0; i++, bits -= 8) {
        const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
        if (((buf[off + i] ?? 0) & mask) !== p.bytes[i]) continue outer;
      }
      return true;
    }
    return false;
  }
}
