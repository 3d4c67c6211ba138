/**
 * Offline tools over checkpoint files: {@link describeCheckpoint} (what
 * `vmkit checkpoint info` prints), {@link verifyCheckpoint} (every page
 * against its checksum) and {@link mergeCheckpoint} (flattens a diff chain
 * into one full checkpoint). None writes to the files it reads.
 *
 * @module
 */

import { toBigInt } from "../native/ffi.ts";
import { check, PageKind, scanPages, uffd } from "../native/uffd_ffi.ts";
import { CheckpointError } from "./errors.ts";
import { finishFile, metadataStart, PendingFile } from "./file_io.ts";
import { FORMAT_VERSION, HEADER_BYTES, idHex, PAGE, Section, sectionName } from "./format.ts";
import { countKind, encodePageMap, Kind } from "./pagemap.ts";
import { type CheckpointChain, type CheckpointFile, openCheckpoint } from "./reader.ts";

/** Pages scanned per call. */
const SCAN = 512;

/** What `info` reports. */
export interface CheckpointInfo {
  /** Path. */
  path: string;
  /** Id (hex). */
  id: string;
  /** Format version. */
  version: number;
  /** `full` or `diff`. */
  type: "full" | "diff";
  /** Parent path (diffs). */
  parent?: string;
  /** Files in the chain, this one first. */
  chain: string[];
  /** Guest RAM bytes. */
  memBytes: number;
  /** Pages with data in this file. */
  dataPages: number;
  /** Pages recorded as zero in this file. */
  zeroPages: number;
  /** Pages left to the parent. */
  inheritedPages: number;
  /** The memory file, when memory is external. */
  memFile?: string;
  /** When the pause happened (ISO time). */
  created: string;
  /** Sections: name, offset, bytes. */
  sections: Array<{ name: string; offset: number; bytes: number }>;
  /** The machine as recorded. */
  machine: Record<string, unknown>;
}

/** Describes the checkpoint at `path` (and checks its chain). */
export async function describeCheckpoint(path: string): Promise<CheckpointInfo> {
  using chain = await openCheckpoint(path);
  const f = chain.top;
  const parent = f.parent();
  return {
    path,
    id: f.id,
    version: f.header.version,
    type: f.isDiff ? "diff" : "full",
    ...(parent === undefined ? {} : { parent: parent.path }),
    chain: chain.chain.map((c) => c.path),
    memBytes: f.header.memBytes,
    dataPages: countKind(f.pages, Kind.DATA),
    zeroPages: countKind(f.pages, Kind.ZERO),
    inheritedPages: countKind(f.pages, Kind.INHERIT),
    ...(f.memPath === undefined ? {} : { memFile: f.memPath }),
    created: new Date(f.header.createdMs).toISOString(),
    sections: f.sections.map((s) => ({
      name: sectionName(s.kind),
      offset: s.offset,
      bytes: s.length,
    })),
    machine: f.config.machine,
  };
}

/** A read-only mapping of one file's memory image, per region. */
function mapImage(f: CheckpointFile): { addrs: bigint[]; close(): void } {
  const addrs: bigint[] = [];
  const sizes: number[] = [];
  const close = (): void => addrs.forEach((a, i) => uffd().vk_unmap(a, BigInt(sizes[i] ?? 0)));
  try {
    f.pages.forEach((r, ri) => {
      addrs.push(toBigInt(check(
        "mmap(checkpoint memory)",
        uffd().vk_map_file_ro(f.memFd, BigInt(r.size), BigInt(f.regionOffset(ri))),
      )));
      sizes.push(r.size);
    });
  } catch (err) {
    close();
    throw err;
  }
  return { addrs, close };
}

/** What {@link verifyCheckpoint} found. */
export interface VerifyResult {
  /** Files checked (the chain). */
  files: number;
  /** Data pages whose checksum matched. */
  dataPages: number;
  /** Zero pages that read as zero. */
  zeroPages: number;
}

/**
 * Checks every file of the chain: all sections (as a restore does) and every
 * memory page (DATA against its CRC32C, ZERO reads as zero). Throws a
 * {@link CheckpointError} naming the first bad page.
 */
export async function verifyCheckpoint(path: string): Promise<VerifyResult> {
  using chain = await openCheckpoint(path);
  let data = 0, zero = 0;
  for (const f of chain.chain) {
    const crcs = f.pageCrcs();
    if (crcs.length !== countKind(f.pages, Kind.DATA)) {
      throw new CheckpointError(
        `${crcs.length} checksums for ${countKind(f.pages, Kind.DATA)} data pages`,
        { path: f.path, section: "page checksums" },
      );
    }
    const img = mapImage(f);
    try {
      let ci = 0;
      const kinds = new Uint8Array(SCAN);
      const got = new Uint32Array(SCAN);
      f.pages.forEach((r, ri) => {
        const base = img.addrs[ri] ?? 0n;
        for (let first = 0; first < r.kinds.length; first += SCAN) {
          const n = Math.min(SCAN, r.kinds.length - first);
          scanPages(base + BigInt(first * PAGE), n, kinds, got);
          for (let i = 0; i < n; i++) {
            const want = r.kinds[first + i];
            const gpa = r.guestAddr + (first + i) * PAGE;
            if (want === Kind.DATA) {
              if (kinds[i] !== PageKind.DATA || got[i] !== crcs[ci]) {
                throw new CheckpointError(
                  `the page at guest 0x${gpa.toString(16)} does not match its checksum`,
                  { path: f.memPath ?? f.path, section: "memory" },
                );
              }
              ci++;
              data++;
            } else if (want === Kind.ZERO) {
              if (kinds[i] !== PageKind.ZERO) {
                throw new CheckpointError(
                  `the page at guest 0x${gpa.toString(16)} is recorded as zero but is not`,
                  { path: f.memPath ?? f.path, section: "memory" },
                );
              }
              zero++;
            }
          }
        }
      });
    } finally {
      img.close();
    }
  }
  return { files: chain.chain.length, dataPages: data, zeroPages: zero };
}

/** What {@link mergeCheckpoint} wrote. */
export interface MergeResult {
  /** The new file. */
  path: string;
  /** Its id. */
  id: string;
  /** Files flattened. */
  merged: number;
  /** Data pages written. */
  dataPages: number;
}

/**
 * Flattens the chain ending at `path` into one full checkpoint at `out`
 * (written under a temporary name, then renamed): the newest copy of every
 * page, the top file's CPU, device and disk state.
 */
export async function mergeCheckpoint(path: string, out: string): Promise<MergeResult> {
  using chain = await openCheckpoint(path);
  return writeMerged(chain, out);
}

function writeMerged(chain: CheckpointChain, out: string): MergeResult {
  const top = chain.top;
  const memBytes = top.header.memBytes;
  const owners = chain.resolve();
  const images = chain.chain.map((f) => mapImage(f));
  const file = PendingFile.create(out, metadataStart(memBytes, false));
  try {
    const crcList: number[] = [];
    const kinds = new Uint8Array(SCAN);
    const crcs = new Uint32Array(SCAN);
    let fileOff = HEADER_BYTES;
    let data = 0;
    const map = top.pages.map((r, ri) => {
      const o = owners[ri];
      const k = new Uint8Array(r.kinds.length);
      if (o === undefined) throw new CheckpointError("no page owners", { path: top.path });
      for (let p = 0; p < k.length;) {
        const owner = o.owner[p] ?? 255;
        let q = p + 1;
        while (q < k.length && o.owner[q] === owner && q - p < SCAN) q++;
        if (owner === 255) {
          throw new CheckpointError(`page ${p} of region ${ri} has no owner`, { path: top.path });
        }
        const src = (images[owner]?.addrs[ri] ?? 0n) + BigInt(p * PAGE);
        scanPages(src, q - p, kinds, crcs);
        for (let i = 0; i < q - p; i++) {
          const isData = o.kinds[p + i] === Kind.DATA && kinds[i] === PageKind.DATA;
          k[p + i] = isData ? Kind.DATA : Kind.ZERO;
          if (isData) {
            file.writeFrom(src + BigInt(i * PAGE), PAGE, fileOff + (p + i) * PAGE);
            crcList.push(crcs[i] ?? 0);
            data++;
          }
        }
        p = q;
      }
      fileOff += r.size;
      return { guestAddr: r.guestAddr, size: r.size, kinds: k };
    });
    const id = crypto.getRandomValues(new Uint8Array(16));
    const keep = (kind: number): Array<[number, Uint8Array]> => {
      const b = top.section(kind);
      return b === undefined ? [] : [[kind, b]];
    };
    finishFile(file, metadataStart(memBytes, false), {
      header: {
        version: FORMAT_VERSION,
        flags: 0,
        id,
        parentId: new Uint8Array(16),
        memBytes,
        memOffset: HEADER_BYTES,
        createdMs: top.header.createdMs,
      },
      sections: [
        ...keep(Section.CONFIG),
        ...keep(Section.CPU),
        ...keep(Section.DEVICES),
        [Section.PAGEMAP, encodePageMap(map)],
        [Section.PAGECRC, new Uint8Array(new Uint32Array(crcList).buffer)],
        ...keep(Section.DISKS),
      ],
    });
    return { path: out, id: idHex(id), merged: chain.chain.length, dataPages: data };
  } catch (err) {
    file.abandon();
    throw err;
  } finally {
    for (const i of images) i.close();
  }
}
