/**
 * The registry journal's on-disk format (see `san/FORMAT.md`): a header line,
 * then one checksummed record per line. This file encodes records and scans
 * journal bytes into entries; it does no I/O, so it is shared by the reader
 * and the writer and testable on its own.
 *
 * @module
 */

import { SuiRegistryError } from "./errors.ts";
import { parseEntry, type RegistryEntry } from "./registry.ts";

/** Header line of a version 2 journal (checksummed records). */
export const HEADER_V2 = '{"vmkit-sui-registry":2}\n';
/** Header line of a version 1 journal (plain JSON records), still read. */
export const HEADER_V1 = '{"vmkit-sui-registry":1}\n';
const NEWLINE = 0x0a;
const SPACE = 0x20;
const COLON = 0x3a;
/** Record prefix: 8 lowercase hex digits of the CRC-32C, then a space. */
const CRC_LEN = 8;

const encoder = new TextEncoder();
const HEADER_V2_BYTES = encoder.encode(HEADER_V2);
const HEADER_V1_BYTES = encoder.encode(HEADER_V1);
/** Length of both headers, in bytes. */
export const HEADER_LEN: number = HEADER_V2_BYTES.length;

const CRC32C_TABLE: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Continues a CRC-32C (Castagnoli) over `bytes[from, to)`; start with 0xffffffff, end with `~crc`. */
function crcUpdate(crc: number, bytes: Uint8Array, from: number, to: number): number {
  let c = crc;
  for (let i = from; i < to; i++) c = (CRC32C_TABLE[(c ^ (bytes[i] ?? 0)) & 0xff] ?? 0) ^ (c >>> 8);
  return c;
}

/** CRC-32C of a record: the decimal line number, ':', then the JSON bytes. */
function recordCrc(line: number, bytes: Uint8Array, from: number, to: number): number {
  const num = encoder.encode(String(line));
  let c = crcUpdate(0xffffffff, num, 0, num.length);
  c = (CRC32C_TABLE[(c ^ COLON) & 0xff] ?? 0) ^ (c >>> 8);
  c = crcUpdate(c, bytes, from, to);
  return ~c >>> 0;
}

/** Encodes `entries` as version 2 lines numbered from `firstLine` (the header is line 1). */
export function encodeRecords(entries: readonly RegistryEntry[], firstLine: number): Uint8Array {
  const parts: Uint8Array[] = [];
  let total = 0;
  entries.forEach((e, i) => {
    const json = encoder.encode(JSON.stringify(e));
    const line = new Uint8Array(CRC_LEN + 1 + json.length + 1);
    const crc = recordCrc(firstLine + i, json, 0, json.length);
    line.set(encoder.encode(crc.toString(16).padStart(CRC_LEN, "0")), 0);
    line[CRC_LEN] = SPACE;
    line.set(json, CRC_LEN + 1);
    line[line.length - 1] = NEWLINE;
    parts.push(line);
    total += line.length;
  });
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** What the first bytes of a file say it is. */
export type HeaderKind =
  /** A version 1 or 2 journal. */
  | { kind: "journal"; version: 1 | 2 }
  /** Empty, or a strict prefix of a header with no newline: a crash while creating it. */
  | { kind: "unborn" }
  /** Anything else: not a registry journal, never to be touched. */
  | { kind: "foreign" };

function isPrefixOf(bytes: Uint8Array, of: Uint8Array): boolean {
  if (bytes.length > of.length) return false;
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== of[i]) return false;
  return true;
}

/** Classifies a file by its first {@link HEADER_LEN} (or fewer, if shorter) bytes. */
export function classifyHeader(head: Uint8Array): HeaderKind {
  if (head.length >= HEADER_LEN) {
    const h = head.subarray(0, HEADER_LEN);
    if (isPrefixOf(h, HEADER_V2_BYTES)) return { kind: "journal", version: 2 };
    if (isPrefixOf(h, HEADER_V1_BYTES)) return { kind: "journal", version: 1 };
    return { kind: "foreign" };
  }
  // Shorter than a header: unborn only if no line was ever completed.
  if (isPrefixOf(head, HEADER_V2_BYTES) || isPrefixOf(head, HEADER_V1_BYTES)) {
    return { kind: "unborn" };
  }
  return { kind: "foreign" };
}

/** Bytes of a fresh version 2 header. */
export function headerBytes(): Uint8Array {
  return HEADER_V2_BYTES.slice();
}

/** The result of scanning journal bytes after the header. */
export interface ScanResult {
  /** Bytes consumed: every complete line; a trailing partial line is not consumed. */
  consumed: number;
  /** Complete lines consumed. */
  lines: number;
}

const fatalDecoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Scans the complete lines of `bytes` (records after the header), checking
 * each and handing its entry to `apply`. A trailing partial line (no newline)
 * is left unconsumed: the caller treats it as a torn write. Any complete line
 * that fails its checksum, is not UTF-8 or JSON, or is not a valid entry
 * throws a {@link SuiRegistryError} naming `path` and the line number.
 *
 * @param firstLine the line number of `bytes[0]` (the header is line 1).
 */
export function scanRecords(
  bytes: Uint8Array,
  version: 1 | 2,
  firstLine: number,
  path: string,
  apply: (e: RegistryEntry) => void,
): ScanResult {
  let pos = 0;
  let line = firstLine;
  for (;;) {
    const nl = bytes.indexOf(NEWLINE, pos);
    if (nl < 0) break;
    const fail = (why: string, cause?: unknown): never => {
      throw new SuiRegistryError(
        `registry journal '${path}' line ${line} ${why}; the journal was left unchanged: ` +
          `restore it from a backup, or remove that line if losing its record is acceptable`,
        cause === undefined ? undefined : { cause },
      );
    };
    let from = pos;
    if (version === 2) {
      if (nl - pos < CRC_LEN + 2 || bytes[pos + CRC_LEN] !== SPACE) {
        fail("is not a checksummed record (corrupt)");
      }
      const hex = String.fromCharCode(...bytes.subarray(pos, pos + CRC_LEN));
      const want = /^[0-9a-f]{8}$/.test(hex) ? parseInt(hex, 16) : -1;
      from = pos + CRC_LEN + 1;
      if (want !== recordCrc(line, bytes, from, nl)) {
        fail("fails its checksum (corrupt, or lines were removed or reordered)");
      }
    }
    let value: unknown;
    try {
      value = JSON.parse(fatalDecoder.decode(bytes.subarray(from, nl)));
    } catch (err) {
      fail("is not valid JSON (corrupt)", err);
    }
    let entry: RegistryEntry | undefined;
    try {
      entry = parseEntry(value);
    } catch (err) {
      fail(`is not a registry entry (${(err as Error).message})`, err);
    }
    if (entry !== undefined) apply(entry);
    pos = nl + 1;
    line++;
  }
  return { consumed: pos, lines: line - firstLine };
}
