/**
 * The checkpoint file's fixed structures (see `FORMAT.md`): the header page,
 * the section table and the commit record, each described once by named
 * offsets and shared by the writer and the reader.
 *
 * @module
 */

import { CheckpointError } from "./errors.ts";

/** Bytes of the header (one page; memory starts page-aligned after it). */
export const HEADER_BYTES = 4096;
/** Bytes of one section table entry. */
export const TABLE_ENTRY_BYTES = 32;
/** Bytes of the commit record that ends every complete file. */
export const COMMIT_BYTES = 64;
/** The format version this code writes and reads. */
export const FORMAT_VERSION = 1;
/** Page size of the memory image. */
export const PAGE = 4096;

const MAGIC = "VMKITCKP";
const COMMIT_MAGIC = "VMKITEND";

/** Header offsets. */
const H = {
  magic: 0,
  version: 8,
  flags: 12,
  id: 16,
  parentId: 32,
  memBytes: 48,
  memOffset: 56,
  tableOffset: 64,
  sectionCount: 72,
  tableCrc: 76,
  createdMs: 80,
  crc: HEADER_BYTES - 4,
} as const;

/** Commit record offsets. */
const C = { magic: 0, fileLength: 8, id: 16, headerCrc: 32, tableCrc: 36, crc: COMMIT_BYTES - 4 };

/** Header flag: the file is a diff (pages absent here come from the parent). */
export const FLAG_DIFF = 1;
/** Header flag: memory is in a separate plain image (`mem_file_path`). */
export const FLAG_EXTERNAL_MEMORY = 2;

/** Section kinds and their names in messages. */
export const Section = {
  CONFIG: 1,
  CPU: 2,
  DEVICES: 3,
  PAGEMAP: 4,
  PAGECRC: 5,
  DISKS: 6,
  PARENT: 7,
  MEMFILE: 8,
  MEMORY: 9,
} as const;
/** One of {@link Section}. */
export type SectionKind = typeof Section[keyof typeof Section];

/** Readable name of a section kind. */
export function sectionName(kind: number): string {
  switch (kind) {
    case Section.CONFIG:
      return "config";
    case Section.CPU:
      return "cpu state";
    case Section.DEVICES:
      return "device state";
    case Section.PAGEMAP:
      return "page map";
    case Section.PAGECRC:
      return "page checksums";
    case Section.DISKS:
      return "disks";
    case Section.PARENT:
      return "parent";
    case Section.MEMFILE:
      return "memory file";
    case Section.MEMORY:
      return "memory";
    default:
      return `section kind ${kind}`;
  }
}

/** The header's fields. */
export interface Header {
  /** Format version. */
  version: number;
  /** {@link FLAG_DIFF} | {@link FLAG_EXTERNAL_MEMORY}. */
  flags: number;
  /** This checkpoint's id (16 random bytes). */
  id: Uint8Array;
  /** The parent checkpoint's id (zeros for a full checkpoint). */
  parentId: Uint8Array;
  /** Guest RAM bytes (sum of the regions). */
  memBytes: number;
  /** File offset of the memory image (0 when external). */
  memOffset: number;
  /** File offset of the section table. */
  tableOffset: number;
  /** Entries in the section table. */
  sectionCount: number;
  /** CRC32C of the section table. */
  tableCrc: number;
  /** When the pause happened (ms since the epoch). */
  createdMs: number;
}

/** One section table entry. */
export interface SectionEntry {
  /** One of {@link Section}. */
  kind: number;
  /** File offset. */
  offset: number;
  /** Bytes. */
  length: number;
  /** CRC32C of the bytes (0 for the memory image, which has per-page checksums). */
  crc: number;
}

/** The commit record's fields. */
export interface Commit {
  /** Length of the whole file, this record included. */
  fileLength: number;
  /** The header's id. */
  id: Uint8Array;
  /** The header's CRC. */
  headerCrc: number;
  /** The section table's CRC. */
  tableCrc: number;
}

/** A CRC32C function (the shim's). */
export type Crc = (data: Uint8Array) => number;

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function putAscii(b: Uint8Array, off: number, s: string): void {
  for (let i = 0; i < s.length; i++) b[off + i] = s.charCodeAt(i);
}

function getAscii(b: Uint8Array, off: number, n: number): string {
  return String.fromCharCode(...b.subarray(off, off + n));
}

function getSafe(v: DataView, off: number, what: string, err: (m: string) => never): number {
  const x = v.getBigUint64(off, true);
  if (x > BigInt(Number.MAX_SAFE_INTEGER)) err(`${what} ${x} is out of range`);
  return Number(x);
}

/** Encodes the header page. */
export function encodeHeader(h: Header, crc: Crc): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(HEADER_BYTES);
  const v = dv(b);
  putAscii(b, H.magic, MAGIC);
  v.setUint32(H.version, h.version, true);
  v.setUint32(H.flags, h.flags, true);
  b.set(h.id.subarray(0, 16), H.id);
  b.set(h.parentId.subarray(0, 16), H.parentId);
  v.setBigUint64(H.memBytes, BigInt(h.memBytes), true);
  v.setBigUint64(H.memOffset, BigInt(h.memOffset), true);
  v.setBigUint64(H.tableOffset, BigInt(h.tableOffset), true);
  v.setUint32(H.sectionCount, h.sectionCount, true);
  v.setUint32(H.tableCrc, h.tableCrc, true);
  v.setBigUint64(H.createdMs, BigInt(Math.floor(h.createdMs)), true);
  v.setUint32(H.crc, crc(b.subarray(0, H.crc)), true);
  return b;
}

/** Decodes and checks the header page; errors name the `header` section of `path`. */
export function decodeHeader(b: Uint8Array, crc: Crc, path: string): Header & { crc: number } {
  const err = (m: string): never => {
    throw new CheckpointError(m, { path, section: "header" });
  };
  if (b.length < HEADER_BYTES) err(`the file is ${b.length} bytes, shorter than its header`);
  if (getAscii(b, H.magic, 8) !== MAGIC) err("not a vmkit checkpoint (bad magic)");
  const v = dv(b);
  const stored = v.getUint32(H.crc, true);
  if (crc(b.subarray(0, H.crc)) !== stored) err("checksum mismatch: the header is corrupt");
  const version = v.getUint32(H.version, true);
  if (version !== FORMAT_VERSION) {
    err(`format version ${version} is not supported (this vmkit reads version ${FORMAT_VERSION})`);
  }
  const h = {
    version,
    flags: v.getUint32(H.flags, true),
    id: b.slice(H.id, H.id + 16),
    parentId: b.slice(H.parentId, H.parentId + 16),
    memBytes: getSafe(v, H.memBytes, "memory size", err),
    memOffset: getSafe(v, H.memOffset, "memory offset", err),
    tableOffset: getSafe(v, H.tableOffset, "section table offset", err),
    sectionCount: v.getUint32(H.sectionCount, true),
    tableCrc: v.getUint32(H.tableCrc, true),
    createdMs: getSafe(v, H.createdMs, "creation time", err),
    crc: stored,
  };
  if ((h.flags & ~(FLAG_DIFF | FLAG_EXTERNAL_MEMORY)) !== 0) {
    err(`unknown flags 0x${h.flags.toString(16)}`);
  }
  if (h.memBytes % PAGE !== 0 || h.memOffset % PAGE !== 0) err("memory is not page-aligned");
  if (h.sectionCount > 64) err(`${h.sectionCount} sections is more than any vmkit writes`);
  return h;
}

/** Encodes the section table. */
export function encodeTable(entries: readonly SectionEntry[]): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(entries.length * TABLE_ENTRY_BYTES);
  const v = dv(b);
  entries.forEach((e, i) => {
    const o = i * TABLE_ENTRY_BYTES;
    v.setUint32(o, e.kind, true);
    v.setBigUint64(o + 8, BigInt(e.offset), true);
    v.setBigUint64(o + 16, BigInt(e.length), true);
    v.setUint32(o + 24, e.crc, true);
  });
  return b;
}

/** Decodes the section table; every section must lie inside `[start, end)` of the file. */
export function decodeTable(
  b: Uint8Array,
  count: number,
  bounds: { start: number; end: number },
  path: string,
): SectionEntry[] {
  const err = (m: string): never => {
    throw new CheckpointError(m, { path, section: "section table" });
  };
  if (b.length !== count * TABLE_ENTRY_BYTES) err("truncated");
  const v = dv(b);
  const out: SectionEntry[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * TABLE_ENTRY_BYTES;
    const e = {
      kind: v.getUint32(o, true),
      offset: getSafe(v, o + 8, "section offset", err),
      length: getSafe(v, o + 16, "section length", err),
      crc: v.getUint32(o + 24, true),
    };
    if (
      e.kind !== Section.MEMORY && (e.offset < bounds.start || e.offset + e.length > bounds.end)
    ) {
      err(`the ${sectionName(e.kind)} section lies outside the file`);
    }
    if (out.some((x) => x.kind === e.kind)) err(`two ${sectionName(e.kind)} sections`);
    out.push(e);
  }
  return out;
}

/** Encodes the commit record. */
export function encodeCommit(c: Commit, crc: Crc): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(COMMIT_BYTES);
  const v = dv(b);
  putAscii(b, C.magic, COMMIT_MAGIC);
  v.setBigUint64(C.fileLength, BigInt(c.fileLength), true);
  b.set(c.id.subarray(0, 16), C.id);
  v.setUint32(C.headerCrc, c.headerCrc, true);
  v.setUint32(C.tableCrc, c.tableCrc, true);
  v.setUint32(C.crc, crc(b.subarray(0, C.crc)), true);
  return b;
}

/** Decodes and checks the commit record against the header and the file length. */
export function checkCommit(
  b: Uint8Array,
  h: Header & { crc: number },
  fileLength: number,
  crc: Crc,
  path: string,
): void {
  const err = (m: string): never => {
    throw new CheckpointError(m, { path, section: "commit record" });
  };
  const incomplete = "missing: the file is truncated or was never completed";
  if (b.length !== COMMIT_BYTES || getAscii(b, C.magic, 8) !== COMMIT_MAGIC) err(incomplete);
  const v = dv(b);
  if (crc(b.subarray(0, C.crc)) !== v.getUint32(C.crc, true)) err("checksum mismatch");
  if (Number(v.getBigUint64(C.fileLength, true)) !== fileLength) {
    err(
      `records a file of ${v.getBigUint64(C.fileLength, true)} bytes, the file has ${fileLength}`,
    );
  }
  const id = b.subarray(C.id, C.id + 16);
  if (!id.every((x, i) => x === h.id[i]) || v.getUint32(C.headerCrc, true) !== h.crc) {
    err("belongs to another header");
  }
  if (v.getUint32(C.tableCrc, true) !== h.tableCrc) err("belongs to another section table");
}

/** Hex text of an id. */
export function idHex(id: Uint8Array): string {
  return Array.from(id, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Rounds `n` up to a multiple of `to`. */
export function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
