/**
 * The checkpoint file on disk: creating it under a temporary name, writing
 * the metadata sections, table, header and commit record after the memory
 * image, and making it durable (fsync, rename, fsync of the folder), so a
 * file under the final name is always complete.
 *
 * @module
 */

import { check, crc32c, uffd } from "../native/uffd_ffi.ts";
import { cString } from "../native/ffi.ts";
import { CheckpointError } from "./errors.ts";
import {
  alignUp,
  COMMIT_BYTES,
  encodeCommit,
  encodeHeader,
  encodeTable,
  type Header,
  HEADER_BYTES,
  PAGE,
  Section,
  type SectionEntry,
} from "./format.ts";

const O_RDONLY = 0;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_EXCL = 0o200;
const O_DIRECT = 0o40000;
/** Alignment O_DIRECT writes keep to (address, length and offset). */
const DIRECT_ALIGN = 4096;
/**
 * Shorter writes stay buffered: an O_DIRECT write waits for the disk, so
 * scattered single pages (a diff) would each cost a disk round trip.
 */
const DIRECT_MIN = 256 * 1024;

/** The folder of `path`. */
export function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/** Opens `path` read-only; returns the fd. */
export function openRead(path: string): number {
  const fd = uffd().vk_file_open(cString(path), O_RDONLY, 0);
  if (fd < 0) throw new CheckpointError(`cannot open: ${errText(-fd)}`, { path });
  return fd;
}

function errText(errno: number): string {
  try {
    check("x", -errno);
  } catch (err) {
    if (err instanceof Error) return err.message.replace(/^uffd: x failed: /, "");
  }
  return `errno ${errno}`;
}

/** Reads `len` bytes at `off`; throws naming `section` when the file ends first. */
export function readAt(
  fd: number,
  off: number,
  len: number,
  path: string,
  section: string,
): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(len);
  const n = Number(uffd().vk_pread_buf(fd, b, BigInt(len), BigInt(off)));
  if (n < 0) throw new CheckpointError(`read failed: ${errText(-n)}`, { path, section });
  if (n !== len) throw new CheckpointError("truncated: the file ends inside it", { path, section });
  return b;
}

/** Size of an open file. */
export function fileSize(fd: number): number {
  return check("lseek", uffd().vk_file_size(fd));
}

/** A checkpoint (or memory) file being written under a temporary name. */
export class PendingFile {
  readonly fd: number;
  readonly tmp: string;
  readonly path: string;
  #done = false;
  /** A second descriptor with O_DIRECT for page-aligned data, or -1. */
  #direct = -1;

  private constructor(fd: number, tmp: string, path: string) {
    this.fd = fd;
    this.tmp = tmp;
    this.path = path;
  }

  /**
   * Creates `path`'s temporary sibling, sized `bytes` (sparse). With
   * `direct`, page-aligned data from raw addresses ({@link writeFrom}) goes
   * through a second, O_DIRECT descriptor when the file system takes one:
   * guest memory straight to the disk, not copied into (and flushed out of)
   * the page cache, which is faster here and leaves other processes' cache
   * alone.
   */
  static create(path: string, bytes: number, opts: { direct?: boolean } = {}): PendingFile {
    const tmp = `${path}.partial-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    const fd = uffd().vk_file_open(cString(tmp), O_RDWR | O_CREAT | O_EXCL, 0o644);
    if (fd < 0) {
      throw new CheckpointError(`cannot create ${tmp}: ${errText(-fd)}`, { path });
    }
    const f = new PendingFile(fd, tmp, path);
    const r = uffd().vk_file_truncate(fd, BigInt(bytes));
    if (r < 0) {
      f.abandon();
      throw new CheckpointError(`cannot size ${tmp} to ${bytes} bytes: ${errText(-r)}`, { path });
    }
    if (opts.direct === true) {
      // EINVAL on file systems without O_DIRECT (tmpfs): then everything goes buffered.
      const d = uffd().vk_file_open(cString(tmp), O_RDWR | O_DIRECT, 0);
      if (d >= 0) f.#direct = d;
    }
    return f;
  }

  /** Writes `data` at `off`. */
  write(data: Uint8Array, off: number): void {
    const r = uffd().vk_pwrite_buf(this.fd, data, BigInt(data.length), BigInt(off));
    if (r < 0) throw new CheckpointError(`write failed: ${errText(-r)}`, { path: this.tmp });
  }

  /** Writes `len` bytes from host address `addr` at `off`. */
  writeFrom(addr: bigint, len: number, off: number): void {
    const aligned = this.#direct >= 0 && len >= DIRECT_MIN &&
      addr % BigInt(DIRECT_ALIGN) === 0n && len % DIRECT_ALIGN === 0 && off % DIRECT_ALIGN === 0;
    const fd = aligned ? this.#direct : this.fd;
    const r = uffd().vk_pwrite_addr(fd, addr, BigInt(len), BigInt(off));
    if (r < 0) throw new CheckpointError(`write failed: ${errText(-r)}`, { path: this.tmp });
  }

  /** fsync, rename to the final name, fsync the folder. */
  commit(): void {
    this.#closeDirect();
    let r = uffd().vk_file_fsync(this.fd);
    if (r < 0) throw new CheckpointError(`fsync failed: ${errText(-r)}`, { path: this.tmp });
    uffd().vk_file_close(this.fd);
    this.#done = true;
    Deno.renameSync(this.tmp, this.path);
    r = uffd().vk_dir_fsync(cString(dirOf(this.path)));
    if (r < 0) {
      throw new CheckpointError(`fsync of the folder failed: ${errText(-r)}`, { path: this.path });
    }
  }

  #closeDirect(): void {
    if (this.#direct >= 0) uffd().vk_file_close(this.#direct);
    this.#direct = -1;
  }

  /** Closes and removes the temporary file (after a failure). */
  abandon(): void {
    if (this.#done) return;
    this.#done = true;
    this.#closeDirect();
    uffd().vk_file_close(this.fd);
    try {
      Deno.removeSync(this.tmp);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
}

/** Metadata to write after the memory image. */
export interface Finish {
  /** Header fields except the table's place and CRC. */
  header: Omit<Header, "tableOffset" | "sectionCount" | "tableCrc">;
  /** Sections (kind → bytes), in the order to write. */
  sections: Array<[number, Uint8Array]>;
}

/**
 * Writes the sections (8-byte aligned) from `start`, the table, the header at 0 and
 * the commit record at the end; then makes the file durable under its final name.
 */
export function finishFile(f: PendingFile, start: number, fin: Finish): { bytes: number } {
  let off = alignUp(start, 8);
  const entries: SectionEntry[] = [];
  if (fin.header.memOffset !== 0) {
    entries.push({
      kind: Section.MEMORY,
      offset: fin.header.memOffset,
      length: fin.header.memBytes,
      crc: 0,
    });
  }
  for (const [kind, bytes] of fin.sections) {
    f.write(bytes, off);
    entries.push({ kind, offset: off, length: bytes.length, crc: crc32c(bytes) });
    off = alignUp(off + bytes.length, 8);
  }
  const table = encodeTable(entries);
  const tableOffset = off;
  f.write(table, tableOffset);
  const tableCrc = crc32c(table);
  const header = encodeHeader(
    { ...fin.header, tableOffset, sectionCount: entries.length, tableCrc },
    (b) => crc32c(b),
  );
  const headerCrc = new DataView(header.buffer).getUint32(HEADER_BYTES - 4, true);
  const commitAt = alignUp(tableOffset + table.length, 8);
  const length = commitAt + COMMIT_BYTES;
  f.write(
    encodeCommit({ fileLength: length, id: fin.header.id, headerCrc, tableCrc }, (b) => crc32c(b)),
    commitAt,
  );
  const r = uffd().vk_file_truncate(f.fd, BigInt(length));
  if (r < 0) throw new CheckpointError(`truncate failed: ${errText(-r)}`, { path: f.tmp });
  f.write(header, 0);
  f.commit();
  return { bytes: length };
}

/** Bytes of header plus memory image, where metadata sections begin. */
export function metadataStart(memBytes: number, external: boolean): number {
  return external ? HEADER_BYTES : HEADER_BYTES + alignUp(memBytes, PAGE);
}
