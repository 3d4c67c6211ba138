/**
 * Opening a checkpoint: the header, commit record and section table are
 * checked first, then every metadata section against its CRC32C, so a
 * truncated, corrupt, foreign or wrong-version file is refused with the
 * section named before anything is restored. Diffs open their parents by
 * the recorded path and check the recorded id.
 *
 * @example
 * ```ts ignore
 * // needs a checkpoint file (see Checkpointer in live.ts): not available to a doc test
 * import { openCheckpoint } from "./reader.ts";
 * using cp = await openCheckpoint("vm.ckpt");
 * console.log(cp.header.memBytes, cp.chain.length);
 * ```
 *
 * @module
 */

import { crc32c, openUffdShim, uffd } from "../native/uffd_ffi.ts";
import type { MachineCpuState } from "../native/kvm_state.ts";
import { CheckpointError } from "./errors.ts";
import { fileSize, openRead, readAt } from "./file_io.ts";
import {
  checkCommit,
  COMMIT_BYTES,
  decodeHeader,
  decodeTable,
  FLAG_DIFF,
  FLAG_EXTERNAL_MEMORY,
  type Header,
  HEADER_BYTES,
  idHex,
  Section,
  type SectionEntry,
  sectionName,
} from "./format.ts";
import { decodePageMap, Kind, type RegionPages } from "./pagemap.ts";
import { decodeCpuState, decodeDevices } from "./state_codec.ts";

/** Longest parent chain followed. */
const MAX_CHAIN = 64;

/** Options of {@link openCheckpoint}. */
export interface OpenOptions {
  /**
   * Read and check the page checksums at open (default true); `false` (a
   * restore, which maps memory lazily and never needs them) reads them only
   * when asked, so opening does not grow with memory size.
   */
  pageCrcs?: boolean;
}

/** The `config` section. */
export interface CheckpointConfig {
  /** The target's own description (`CheckpointTarget.describe()`). */
  machine: Record<string, unknown>;
  /** Guest RAM bytes. */
  memBytes: number;
  /** RAM regions. */
  regions: Array<{ guestAddr: number; size: number }>;
}

/** One opened, checked checkpoint file. */
export class CheckpointFile implements Disposable {
  /** Path as opened. */
  readonly path: string;
  /** The header. */
  readonly header: Header;
  /** The section table. */
  readonly sections: readonly SectionEntry[];
  /** The `config` section. */
  readonly config: CheckpointConfig;
  /** The page map. */
  readonly pages: readonly RegionPages[];
  /** fd holding the memory image (the file itself or its memory file). */
  readonly memFd: number;
  /** Offset of the memory image in {@link memFd}. */
  readonly memOffset: number;
  /** The memory file's path when memory is external. */
  readonly memPath: string | undefined;
  readonly #fd: number;
  #closed = false;

  private constructor(
    path: string,
    fd: number,
    header: Header,
    sections: SectionEntry[],
    config: CheckpointConfig,
    pages: RegionPages[],
    mem: { fd: number; offset: number; path: string | undefined },
  ) {
    this.path = path;
    this.#fd = fd;
    this.header = header;
    this.sections = sections;
    this.config = config;
    this.pages = pages;
    this.memFd = mem.fd;
    this.memOffset = mem.offset;
    this.memPath = mem.path;
  }

  /** Opens and checks one file (not its parents). */
  static open(path: string, opts: OpenOptions = {}): CheckpointFile {
    const fd = openRead(path);
    try {
      return CheckpointFile.#open(path, fd, opts);
    } catch (err) {
      uffd().vk_file_close(fd);
      throw err;
    }
  }

  static #open(path: string, fd: number, opts: OpenOptions): CheckpointFile {
    const crc = (b: Uint8Array) => crc32c(b);
    const size = fileSize(fd);
    if (size < HEADER_BYTES + COMMIT_BYTES) {
      throw new CheckpointError(`the file is ${size} bytes: truncated`, {
        path,
        section: "header",
      });
    }
    const header = decodeHeader(readAt(fd, 0, HEADER_BYTES, path, "header"), crc, path);
    checkCommit(
      readAt(fd, size - COMMIT_BYTES, COMMIT_BYTES, path, "commit record"),
      header,
      size,
      crc,
      path,
    );
    const tableBytes = readAt(
      fd,
      header.tableOffset,
      header.sectionCount * 32,
      path,
      "section table",
    );
    if (crc(tableBytes) !== header.tableCrc) {
      throw new CheckpointError("checksum mismatch", { path, section: "section table" });
    }
    const sections = decodeTable(tableBytes, header.sectionCount, {
      start: HEADER_BYTES,
      end: size,
    }, path);
    const external = (header.flags & FLAG_EXTERNAL_MEMORY) !== 0;
    const diff = (header.flags & FLAG_DIFF) !== 0;
    const read = (kind: number, required: boolean): Uint8Array | undefined => {
      const e = sections.find((s) => s.kind === kind);
      if (e === undefined) {
        if (required) throw new CheckpointError("missing", { path, section: sectionName(kind) });
        return undefined;
      }
      const b = readAt(fd, e.offset, e.length, path, sectionName(kind));
      if (crc(b) !== e.crc) {
        throw new CheckpointError("checksum mismatch: the section is corrupt", {
          path,
          section: sectionName(kind),
        });
      }
      return b;
    };
    const config = parseJson(read(Section.CONFIG, true), path, "config") as CheckpointConfig;
    if (
      typeof config !== "object" || config === null || config.memBytes !== header.memBytes ||
      !Array.isArray(config.regions) || typeof config.machine !== "object"
    ) {
      throw new CheckpointError("malformed or does not match the header", {
        path,
        section: "config",
      });
    }
    const pageBytes = read(Section.PAGEMAP, true) ?? new Uint8Array();
    const pages = decodePageMap(pageBytes, diff, path);
    const total = pages.reduce((n, r) => n + r.size, 0);
    if (
      total !== header.memBytes || pages.length !== config.regions.length ||
      pages.some((r, i) =>
        r.guestAddr !== config.regions[i]?.guestAddr || r.size !== config.regions[i]?.size
      )
    ) {
      throw new CheckpointError("its regions do not match the config", {
        path,
        section: "page map",
      });
    }
    // Read (and so check) the remaining small sections now; memory is checked by verify.
    for (const kind of [Section.CPU, Section.DEVICES]) read(kind, true);
    for (const kind of [Section.DISKS, Section.PARENT]) read(kind, false);
    if (opts.pageCrcs !== false) read(Section.PAGECRC, false);
    if (diff && !sections.some((s) => s.kind === Section.PARENT)) {
      throw new CheckpointError("missing in a diff", { path, section: "parent" });
    }
    let mem = { fd, offset: header.memOffset, path: undefined as string | undefined };
    if (external) {
      const m = parseJson(read(Section.MEMFILE, true), path, "memory file") as {
        path?: unknown;
        bytes?: unknown;
      };
      if (typeof m.path !== "string" || m.bytes !== header.memBytes) {
        throw new CheckpointError("malformed", { path, section: "memory file" });
      }
      const memPath = resolveBeside(path, m.path);
      const mfd = openRead(memPath);
      const msize = fileSize(mfd);
      if (msize !== header.memBytes) {
        uffd().vk_file_close(mfd);
        throw new CheckpointError(
          `${memPath} is ${msize} bytes, the checkpoint's memory is ${header.memBytes}`,
          { path, section: "memory file" },
        );
      }
      mem = { fd: mfd, offset: 0, path: memPath };
    } else if (header.memOffset < HEADER_BYTES || header.memOffset + header.memBytes > size) {
      throw new CheckpointError("the memory image lies outside the file", {
        path,
        section: "memory",
      });
    }
    return new CheckpointFile(path, fd, header, sections, config, pages, mem);
  }

  /** Reads a section (checked at open). */
  section(kind: number): Uint8Array | undefined {
    const e = this.sections.find((s) => s.kind === kind);
    if (e === undefined) return undefined;
    const b = readAt(this.#fd, e.offset, e.length, this.path, sectionName(kind));
    if (crc32c(b) !== e.crc) {
      throw new CheckpointError("checksum mismatch: the section is corrupt", {
        path: this.path,
        section: sectionName(kind),
      });
    }
    return b;
  }

  /** The saved vCPU and VM state. */
  cpuState(): MachineCpuState {
    return decodeCpuState(this.section(Section.CPU) ?? new Uint8Array(), this.path);
  }

  /** The saved device states. */
  devices(): Record<string, Uint8Array> {
    return decodeDevices(this.section(Section.DEVICES) ?? new Uint8Array(), this.path);
  }

  /** The `disks` section, if any. */
  disks(): Record<string, unknown> | undefined {
    const b = this.section(Section.DISKS);
    return b === undefined
      ? undefined
      : parseJson(b, this.path, "disks") as Record<string, unknown>;
  }

  /** The per-page CRCs of the DATA pages, in address order (checked when read). */
  pageCrcs(): Uint32Array {
    const b = this.section(Section.PAGECRC) ?? new Uint8Array();
    if (b.length % 4 !== 0) {
      throw new CheckpointError("malformed", { path: this.path, section: "page checksums" });
    }
    return new Uint32Array(b.slice().buffer);
  }

  /** The recorded parent (diffs). */
  parent(): { path: string; id: string } | undefined {
    const b = this.section(Section.PARENT);
    if (b === undefined) return undefined;
    const p = parseJson(b, this.path, "parent") as { path?: unknown; id?: unknown };
    if (typeof p.path !== "string" || typeof p.id !== "string") {
      throw new CheckpointError("malformed", { path: this.path, section: "parent" });
    }
    return { path: resolveBeside(this.path, p.path), id: p.id };
  }

  /** Whether this file is a diff. */
  get isDiff(): boolean {
    return (this.header.flags & FLAG_DIFF) !== 0;
  }

  /** The id as hex. */
  get id(): string {
    return idHex(this.header.id);
  }

  /** Byte offset of region `ri`'s first page in {@link memFd}. */
  regionOffset(ri: number): number {
    let off = this.memOffset;
    for (let i = 0; i < ri; i++) off += this.pages[i]?.size ?? 0;
    return off;
  }

  /** Closes the file (and its memory file). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    uffd().vk_file_close(this.#fd);
    if (this.memFd !== this.#fd) uffd().vk_file_close(this.memFd);
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A checkpoint with its parents: `chain[0]` is the file opened, the last is the full base. */
export class CheckpointChain implements Disposable {
  /** Newest first. */
  readonly chain: readonly CheckpointFile[];

  /** Wraps opened files, newest first (see {@link openCheckpoint}). */
  constructor(chain: CheckpointFile[]) {
    this.chain = chain;
  }

  /** The newest file (the one restored). */
  get top(): CheckpointFile {
    const t = this.chain[0];
    if (t === undefined) throw new CheckpointError("empty chain");
    return t;
  }

  /** The top file's header. */
  get header(): Header {
    return this.top.header;
  }

  /**
   * Which file holds each page: per region, the index into {@link chain} of
   * the newest file with DATA or ZERO for it (and which of the two).
   */
  resolve(): Array<{ owner: Uint8Array; kinds: Uint8Array }> {
    const top = this.top;
    return top.pages.map((r, ri) => {
      const owner = new Uint8Array(r.kinds.length).fill(255);
      const kinds = new Uint8Array(r.kinds.length);
      this.chain.forEach((f, fi) => {
        const k = f.pages[ri]?.kinds;
        if (k === undefined) return;
        for (let p = 0; p < k.length; p++) {
          if (owner[p] === 255 && k[p] !== Kind.INHERIT) {
            owner[p] = fi;
            kinds[p] = k[p] ?? Kind.ZERO;
          }
        }
      });
      return { owner, kinds };
    });
  }

  /** Closes every file. */
  close(): void {
    for (const f of this.chain) f.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Opens `path` and, for a diff, its parents, checking each link's id and layout. */
export async function openCheckpoint(
  path: string,
  opts: OpenOptions = {},
): Promise<CheckpointChain> {
  await openUffdShim();
  const chain: CheckpointFile[] = [];
  try {
    let f = CheckpointFile.open(path, opts);
    chain.push(f);
    while (f.isDiff) {
      if (chain.length >= MAX_CHAIN) {
        throw new CheckpointError(`a chain longer than ${MAX_CHAIN}; merge it first`, { path });
      }
      const link = f.parent();
      if (link === undefined) {
        throw new CheckpointError("missing in a diff", { path: f.path, section: "parent" });
      }
      const p = CheckpointFile.open(link.path, opts);
      chain.push(p);
      if (p.id !== link.id || idHex(f.header.parentId) !== p.id) {
        throw new CheckpointError(
          `the parent ${link.path} is checkpoint ${p.id}, not ${link.id} (it was replaced)`,
          { path: f.path, section: "parent" },
        );
      }
      if (
        p.header.memBytes !== f.header.memBytes ||
        p.pages.some((r, i) => r.guestAddr !== f.pages[i]?.guestAddr || r.size !== f.pages[i]?.size)
      ) {
        throw new CheckpointError(`the parent ${link.path} has another memory layout`, {
          path: f.path,
          section: "parent",
        });
      }
      f = p;
    }
  } catch (err) {
    for (const f of chain) f.close();
    throw err;
  }
  return new CheckpointChain(chain);
}

function parseJson(b: Uint8Array | undefined, path: string, section: string): unknown {
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(b ?? new Uint8Array()));
  } catch (err) {
    throw new CheckpointError(`not valid JSON (${err instanceof Error ? err.message : err})`, {
      path,
      section,
    });
  }
}

/** A recorded path: absolute as is, relative to the folder of `file`. */
export function resolveBeside(file: string, p: string): string {
  if (p.startsWith("/")) return p;
  const i = file.lastIndexOf("/");
  return i < 0 ? p : `${file.slice(0, i + 1)}${p}`;
}
