/**
 * The page map: for every page of guest RAM, whether this checkpoint holds
 * its data, records it as zero, or (in a diff) leaves it to the parent.
 * Stored run-length encoded per RAM region (see `FORMAT.md`).
 *
 * @module
 */

import { CheckpointError } from "./errors.ts";
import { PAGE } from "./format.ts";

/** Page kinds of the map (the numbers are the file's). */
export const Kind = {
  /** Not in this file: the parent checkpoint has it (diffs only). */
  INHERIT: 0,
  /** All zero: recorded, not written. */
  ZERO: 1,
  /** Written in the memory image at its guest-physical place. */
  DATA: 2,
} as const;

/** One RAM region's page kinds, one byte per page. */
export interface RegionPages {
  /** Guest-physical start. */
  readonly guestAddr: number;
  /** Bytes (a multiple of 4 KiB). */
  readonly size: number;
  /** Kind per page ({@link Kind}). */
  readonly kinds: Uint8Array;
}

/** A run of pages of one kind. */
export interface PageRun {
  /** {@link Kind}. */
  readonly kind: number;
  /** First page (index within the region). */
  readonly first: number;
  /** Pages in the run. */
  readonly count: number;
}

/** Runs of equal kind of `kinds`. */
export function runsOf(kinds: Uint8Array): PageRun[] {
  const out: PageRun[] = [];
  let i = 0;
  while (i < kinds.length) {
    const k = kinds[i] ?? 0;
    let j = i + 1;
    while (j < kinds.length && kinds[j] === k) j++;
    out.push({ kind: k, first: i, count: j - i });
    i = j;
  }
  return out;
}

/** Encodes the page map: u32 regions; per region u64 guestAddr, u64 size, u32 runs, runs of (u32 kind, u32 pages). */
export function encodePageMap(regions: readonly RegionPages[]): Uint8Array<ArrayBuffer> {
  const all = regions.map((r) => runsOf(r.kinds));
  const bytes = 4 + regions.reduce((n, _r, i) => n + 20 + 8 * (all[i]?.length ?? 0), 0);
  const b = new Uint8Array(bytes);
  const v = new DataView(b.buffer);
  v.setUint32(0, regions.length, true);
  let o = 4;
  regions.forEach((r, i) => {
    const runs = all[i] ?? [];
    v.setBigUint64(o, BigInt(r.guestAddr), true);
    v.setBigUint64(o + 8, BigInt(r.size), true);
    v.setUint32(o + 16, runs.length, true);
    o += 20;
    for (const run of runs) {
      v.setUint32(o, run.kind, true);
      v.setUint32(o + 4, run.count, true);
      o += 8;
    }
  });
  return b;
}

/** Decodes and checks a page map; `diff` allows {@link Kind.INHERIT}. */
export function decodePageMap(b: Uint8Array, diff: boolean, path: string): RegionPages[] {
  const err = (m: string): never => {
    throw new CheckpointError(m, { path, section: "page map" });
  };
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const need = (o: number, n: number): void => {
    if (o + n > b.length) err("truncated");
  };
  need(0, 4);
  const count = v.getUint32(0, true);
  if (count < 1 || count > 8) err(`${count} regions`);
  let o = 4;
  const out: RegionPages[] = [];
  for (let i = 0; i < count; i++) {
    need(o, 20);
    const guestAddr = Number(v.getBigUint64(o, true));
    const size = Number(v.getBigUint64(o + 8, true));
    const nruns = v.getUint32(o + 16, true);
    o += 20;
    if (
      !Number.isSafeInteger(guestAddr + size) || size <= 0 || size % PAGE !== 0 ||
      guestAddr % PAGE !== 0 || size > 2 ** 40
    ) {
      err(`region ${i} (0x${guestAddr.toString(16)}+0x${size.toString(16)}) is malformed`);
    }
    const pages = size / PAGE;
    need(o, nruns * 8);
    const runs = new Uint32Array(nruns * 2);
    let p = 0;
    for (let r = 0; r < nruns; r++) {
      const kind = v.getUint32(o, true);
      const n = v.getUint32(o + 4, true);
      o += 8;
      if (kind > Kind.DATA || (kind === Kind.INHERIT && !diff)) {
        err(`region ${i} has a run of kind ${kind}`);
      }
      if (n === 0 || p + n > pages) err(`region ${i}'s runs cover more than its ${pages} pages`);
      runs[2 * r] = kind;
      runs[2 * r + 1] = n;
      p += n;
    }
    if (p !== pages) err(`region ${i}'s runs cover ${p} of its ${pages} pages`);
    out.push(lazyRegion(guestAddr, size, runs));
  }
  if (o !== b.length) err(`${b.length - o} bytes after the last region`);
  return out;
}

/**
 * A region whose per-page kinds are expanded from its (checked) runs when
 * first read: a byte per guest page, so opening a checkpoint (a restore
 * reads only the regions' places) does not grow with memory.
 */
function lazyRegion(guestAddr: number, size: number, runs: Uint32Array): RegionPages {
  let kinds: Uint8Array | undefined;
  return {
    guestAddr,
    size,
    get kinds(): Uint8Array {
      if (kinds === undefined) {
        kinds = new Uint8Array(size / PAGE);
        for (let r = 0, p = 0; r < runs.length; r += 2) {
          const kind = runs[r] ?? 0;
          const n = runs[r + 1] ?? 0;
          if (kind !== 0) kinds.fill(kind, p, p + n);
          p += n;
        }
      }
      return kinds;
    },
  };
}

/** Number of pages of `kind` in `regions`. */
export function countKind(regions: readonly RegionPages[], kind: number): number {
  let n = 0;
  for (const r of regions) for (const k of r.kinds) if (k === kind) n++;
  return n;
}
