/**
 * Consistency check of a qcow2 file, independent of the read/write code:
 * recomputes every cluster's reference count from the header, L1/L2 tables
 * and refcount structures and compares it with the stored refcounts, the
 * way `qemu-img check` does.
 *
 * @module
 */

import { UnsupportedFeatureError } from "./errors.ts";
import { ImageFile } from "./file_io.ts";
import { isCorrupt, MAX_CLUSTER_BITS, parseHeader } from "./qcow2_format.ts";
import { compressedSpan, entryOffset } from "./qcow2_tables.ts";

/** Result of {@link checkImage}. */
export interface CheckResult {
  /** Corruptions: a cluster referenced more often than its refcount says, bad offsets, ... */
  errors: string[];
  /** Clusters with a refcount but no reference (harmless, wasted space). */
  leaks: number;
  /**
   * Clusters with host space referenced by L2 tables (data, zero-flagged
   * with an offset, compressed), counted as `qemu-img check` counts them.
   */
  allocatedClusters: number;
  /**
   * Allocated clusters whose host offset does not follow the previous one's
   * in guest order (every compressed cluster counts), as QEMU counts them.
   */
  fragmentedClusters: number;
  /** Compressed clusters. */
  compressedClusters: number;
  /** Clusters the virtual disk spans. */
  totalClusters: number;
  /** Host offset just past the last used cluster. */
  imageEndOffset: number;
}

/** Options for {@link checkImage}. */
export interface CheckOptions {
  /** Check an image another process has open for writing (QEMU's force-share). */
  forceShare?: boolean;
}

/** Clusters per chunk of the reference counter. */
const CHUNK = 1 << 16;
/** Refcount blocks kept in memory at once (they are visited mostly in order). */
const BLOCK_CACHE = 64;

/**
 * Reference counts by host cluster, allocated in chunks only where clusters
 * are referenced: memory follows the metadata, not the file length (an
 * 8 TiB sparse file costs nothing).
 */
class SparseCounts {
  #chunks = new Map<number, Uint32Array>();
  add(ci: number): void {
    const k = Math.floor(ci / CHUNK);
    let c = this.#chunks.get(k);
    if (c === undefined) {
      c = new Uint32Array(CHUNK);
      this.#chunks.set(k, c);
      if (k === this.#lastKey) this.#last = c;
    }
    const i = ci - k * CHUNK;
    c[i] = (c[i] ?? 0) + 1;
  }
  #lastKey = -1;
  #last: Uint32Array | undefined;
  get(ci: number): number {
    const k = Math.floor(ci / CHUNK);
    if (k !== this.#lastKey) {
      this.#lastKey = k;
      this.#last = this.#chunks.get(k);
    }
    return this.#last?.[ci - k * CHUNK] ?? 0;
  }
  /** Every referenced cluster with its count, in ascending order. */
  *entries(): Generator<[number, number]> {
    for (const k of [...this.#chunks.keys()].sort((a, b) => a - b)) {
      const c = this.#chunks.get(k);
      if (c === undefined) continue;
      for (let i = 0; i < CHUNK; i++) if (c[i] !== 0) yield [k * CHUNK + i, c[i] ?? 0];
    }
  }
}

/**
 * Checks the qcow2 file at `path`. Throws `QcowError` when it is not a qcow2
 * image at all; reports everything else in the result.
 *
 * @example
 * ```ts
 * import { createImage } from "./chain.ts";
 * import { checkImage } from "./check.ts";
 * const dir = await Deno.makeTempDir();
 * createImage(`${dir}/disk.qcow2`, { size: 1 << 20 }).closeSync();
 * const r = checkImage(`${dir}/disk.qcow2`);
 * if (r.errors.length > 0) console.error(r.errors.join("\n"));
 * console.log(r.errors.length, r.leaks); // 0 0
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function checkImage(path: string, options: CheckOptions = {}): CheckResult {
  const file = ImageFile.open(path, {
    readOnly: true,
    lock: options.forceShare ? "force-share" : "read",
  });
  try {
    return checkReader(file, path);
  } finally {
    file.close();
  }
}

/** What {@link checkReader} reads an image through (an `ImageFile`, or a Node `fs` file). */
export interface PositionedReader {
  /** The file's length in bytes. */
  length(): number;
  /** Reads into `buf` from `offset`; returns the bytes read. */
  pread(buf: Uint8Array, offset: number): number;
}

/**
 * Checks the qcow2 image read through `file` (`path` names it in messages).
 * Throws `QcowError` when it is not a qcow2 image at all.
 */
export function checkReader(file: PositionedReader, path: string): CheckResult {
  const len = file.length();
  const head = new Uint8Array(Math.min(len, 2 ** MAX_CLUSTER_BITS));
  file.pread(head, 0);
  const h = parseHeader(head, path, len);
  const cs = 2 ** h.clusterBits;
  const nClusters = Math.ceil(len / cs);
  const refs = new SparseCounts();
  const errors: string[] = [];
  if (isCorrupt(h)) {
    errors.push("the image is marked corrupt (a write into its metadata was refused)");
  }
  const ref = (offset: number, what: string): boolean => {
    if (offset % cs !== 0) {
      errors.push(`${what}: offset ${offset} is not cluster aligned`);
      return false;
    }
    const ci = offset / cs;
    if (ci >= nClusters) {
      errors.push(`${what}: offset ${offset} is past the end of the file (${len})`);
      return false;
    }
    refs.add(ci);
    return true;
  };
  const readTable = (offset: number, bytes: number): DataView => {
    const b = new Uint8Array(bytes);
    const n = file.pread(b, offset);
    if (n < b.length) b.fill(0, n);
    return new DataView(b.buffer);
  };
  const entry = (v: DataView, i: number): { hi: number; lo: number; off: number } => {
    const hi = v.getUint32(i * 8, false);
    const lo = v.getUint32(i * 8 + 4, false);
    return { hi, lo, off: entryOffset(hi, lo) };
  };
  ref(0, "header");
  const l1Bytes = h.l1Size * 8;
  for (let c = 0; c < Math.ceil(l1Bytes / cs); c++) ref(h.l1TableOffset + c * cs, "L1 table");
  for (let c = 0; c < h.refcountTableClusters; c++) {
    ref(h.refcountTableOffset + c * cs, "refcount table");
  }
  if (h.nbSnapshots > 0) {
    throw new UnsupportedFeatureError(
      `'${path}' has ${h.nbSnapshots} internal snapshots, which vmkit check does not walk; ` +
        `use 'qemu-img check'`,
    );
  }
  // refcount structures
  const rcEntries = (h.refcountTableClusters * cs) / 8;
  const rt = readTable(h.refcountTableOffset, rcEntries * 8);
  const rcBits = 1 << h.refcountOrder;
  const rcPer = (cs * 8) / rcBits;
  /** Host offsets of the refcount blocks, by refcount-table index. */
  const blocks = new Map<number, number>();
  for (let i = 0; i < rcEntries; i++) {
    const { off } = entry(rt, i);
    if (off === 0) continue;
    if (ref(off, `refcount block ${i}`)) blocks.set(i, off);
  }
  const cached = new Map<number, DataView>();
  const block = (bi: number): DataView | undefined => {
    const hit = cached.get(bi);
    if (hit !== undefined) return hit;
    const off = blocks.get(bi);
    if (off === undefined) return undefined;
    if (cached.size >= BLOCK_CACHE) {
      const first = cached.keys().next();
      if (!first.done) cached.delete(first.value);
    }
    const v = readTable(off, cs);
    cached.set(bi, v);
    return v;
  };
  // L1 / L2 / data
  const l2Entries = cs / 8;
  const l1 = readTable(h.l1TableOffset, l1Bytes);
  let allocated = 0;
  let fragmented = 0;
  let compressed = 0;
  const copiedChecks: Array<{ ci: number; what: string }> = [];
  for (let i = 0; i < h.l1Size; i++) {
    const e = entry(l1, i);
    if (e.off === 0) continue;
    if (!ref(e.off, `L2 table ${i}`)) continue;
    if (e.hi & 0x80000000) copiedChecks.push({ ci: e.off / cs, what: `L2 table ${i}` });
    const l2 = readTable(e.off, cs);
    // Host offset that would continue the previous cluster; per L2 table, as QEMU counts.
    let nextContiguous = 0;
    for (let j = 0; j < l2Entries; j++) {
      const d = entry(l2, j);
      const guest = (i * l2Entries + j) * cs;
      if (d.hi & 0x40000000) {
        const { offset: off, length } = compressedSpan(d.hi, d.lo, h.clusterBits);
        const end = off + length;
        for (let c = Math.floor(off / cs); c <= Math.floor((end - 1) / cs); c++) {
          ref(c * cs, `compressed cluster at guest ${guest}`);
        }
        allocated++;
        compressed++;
        fragmented++; // QEMU: compressed clusters are fragmented by nature
        continue;
      }
      if (d.off === 0) continue;
      if (!ref(d.off, `data cluster at guest ${guest}`)) continue;
      // A zero-flagged cluster that keeps its host cluster still counts, as in QEMU.
      allocated++;
      if (nextContiguous !== 0 && d.off !== nextContiguous) fragmented++;
      nextContiguous = d.off + cs;
      if (d.hi & 0x80000000) {
        copiedChecks.push({ ci: d.off / cs, what: `data cluster at guest ${guest}` });
      }
    }
  }
  const storedIn = (v: DataView, i: number): number => {
    switch (rcBits) {
      case 8:
        return v.getUint8(i);
      case 16:
        return v.getUint16(i * 2, false);
      case 32:
        return v.getUint32(i * 4, false);
      case 64:
        return Number(v.getBigUint64(i * 8, false));
      default: {
        const per = 8 / rcBits;
        return (v.getUint8(Math.floor(i / per)) >> ((i % per) * rcBits)) & ((1 << rcBits) - 1);
      }
    }
  };
  const stored = (ci: number): number => {
    const bi = Math.floor(ci / rcPer);
    const v = block(bi);
    return v === undefined ? 0 : storedIn(v, ci - bi * rcPer);
  };
  let leaks = 0;
  let end = 0;
  for (const [ci, want] of refs.entries()) {
    const have = stored(ci);
    end = Math.max(end, (ci + 1) * cs);
    if (have < want) {
      errors.push(`cluster ${ci} (offset ${ci * cs}): refcount ${have}, referenced ${want} times`);
    } else if (have > want) {
      leaks++;
    }
  }
  // Leaks among the unreferenced clusters: walk only the refcount blocks there are.
  for (const bi of [...blocks.keys()].sort((a, b) => a - b)) {
    const first = bi * rcPer;
    const last = Math.min(first + rcPer, nClusters);
    const v = first < last ? block(bi) : undefined;
    if (v === undefined) continue;
    for (let ci = first; ci < last; ci++) {
      if (refs.get(ci) === 0 && storedIn(v, ci - first) > 0) {
        leaks++;
        end = Math.max(end, (ci + 1) * cs); // QEMU's end offset counts leaked clusters too
      }
    }
  }
  for (const { ci, what } of copiedChecks) {
    const have = stored(ci);
    if (have !== 1) errors.push(`${what}: COPIED flag set but refcount is ${have}`);
  }
  return {
    errors,
    leaks,
    allocatedClusters: allocated,
    fragmentedClusters: fragmented,
    compressedClusters: compressed,
    totalClusters: Math.ceil(h.size / cs),
    imageEndOffset: end,
  };
}
