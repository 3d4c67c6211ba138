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
import { MAX_CLUSTER_BITS, parseHeader } from "./qcow2_format.ts";

/** Result of {@link checkImage}. */
export interface CheckResult {
  /** Corruptions: a cluster referenced more often than its refcount says, bad offsets, ... */
  errors: string[];
  /** Clusters with a refcount but no reference (harmless, wasted space). */
  leaks: number;
  /** Data clusters referenced by L2 tables. */
  allocatedClusters: number;
  /** Clusters the virtual disk spans. */
  totalClusters: number;
  /** Host offset just past the last used cluster. */
  imageEndOffset: number;
}

const TWO32 = 2 ** 32;

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
export function checkImage(path: string): CheckResult {
  const file = ImageFile.open(path, { readOnly: true });
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
  const refs = new Uint32Array(nClusters);
  const errors: string[] = [];
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
    refs[ci] = (refs[ci] ?? 0) + 1;
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
    return { hi, lo, off: (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0) };
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
  const blocks = new Map<number, DataView>();
  for (let i = 0; i < rcEntries; i++) {
    const { off } = entry(rt, i);
    if (off === 0) continue;
    if (ref(off, `refcount block ${i}`)) blocks.set(i, readTable(off, cs));
  }
  // L1 / L2 / data
  const l2Entries = cs / 8;
  const l1 = readTable(h.l1TableOffset, l1Bytes);
  let allocated = 0;
  const copiedChecks: Array<{ ci: number; what: string }> = [];
  for (let i = 0; i < h.l1Size; i++) {
    const e = entry(l1, i);
    if (e.off === 0) continue;
    if (!ref(e.off, `L2 table ${i}`)) continue;
    if (e.hi & 0x80000000) copiedChecks.push({ ci: e.off / cs, what: `L2 table ${i}` });
    const l2 = readTable(e.off, cs);
    for (let j = 0; j < l2Entries; j++) {
      const d = entry(l2, j);
      const guest = (i * l2Entries + j) * cs;
      if (d.hi & 0x40000000) {
        const full = (BigInt(d.hi) << 32n) | BigInt(d.lo >>> 0);
        const x = BigInt(62 - (h.clusterBits - 8));
        const off = Number(full & ((1n << x) - 1n));
        const sectors = Number((full >> x) & ((1n << (62n - x)) - 1n)) + 1;
        const end = off - (off % 512) + sectors * 512;
        for (let c = Math.floor(off / cs); c <= Math.floor((end - 1) / cs); c++) {
          ref(c * cs, `compressed cluster at guest ${guest}`);
        }
        allocated++;
        continue;
      }
      if (d.off === 0) continue;
      if (!ref(d.off, `data cluster at guest ${guest}`)) continue;
      if (!(d.lo & 1)) allocated++;
      if (d.hi & 0x80000000) {
        copiedChecks.push({ ci: d.off / cs, what: `data cluster at guest ${guest}` });
      }
    }
  }
  const stored = (ci: number): number => {
    const bi = Math.floor(ci / rcPer);
    const v = blocks.get(bi);
    if (v === undefined) return 0;
    const i = ci - bi * rcPer;
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
  let leaks = 0;
  let end = 0;
  for (let ci = 0; ci < nClusters; ci++) {
    const want = refs[ci] ?? 0;
    const have = stored(ci);
    if (want > 0) end = (ci + 1) * cs;
    if (have < want) {
      errors.push(`cluster ${ci} (offset ${ci * cs}): refcount ${have}, referenced ${want} times`);
    } else if (have > want) {
      leaks++;
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
    totalClusters: Math.ceil(h.size / cs),
    imageEndOffset: end,
  };
}
