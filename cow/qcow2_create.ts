/**
 * Creating an empty qcow2 v3 file: the layout (header, refcount table, L1
 * table, refcount blocks covering them) computed once and written in one go.
 *
 * @module
 */

import { QcowError } from "./errors.ts";
import { ImageFile } from "./file_io.ts";
import { buildHeader, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS } from "./qcow2_format.ts";

/** Options for {@link createQcow2} (and `Qcow2Image.create`). */
export interface Qcow2CreateOptions {
  /** Virtual size in bytes (rounded up to a multiple of 512, as qemu-img does). */
  size: number;
  /** Cluster size in bytes, a power of two from 512 B to 2 MiB (default 64 KiB). */
  clusterSize?: number;
  /** Backing file name to store (relative names resolve from the image's folder). */
  backingFile?: string;
  /** Backing format to store in the header extension; required with `backingFile`. */
  backingFormat?: "raw" | "qcow2";
}

/** Writes a new, empty qcow2 v3 file at `path` (replacing any file there, once it is locked). */
export function createQcow2(path: string, options: Qcow2CreateOptions): void {
  const cs = options.clusterSize ?? 65536;
  const bits = Math.log2(cs);
  if (!Number.isInteger(bits) || bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    throw new QcowError(`cluster size ${cs} is not a power of two from 512 to 2097152 bytes`);
  }
  if (!Number.isSafeInteger(options.size) || options.size < 0 || options.size > 2 ** 50) {
    throw new QcowError(`image size ${options.size} must be an integer from 0 to 2^50 bytes`);
  }
  if (options.backingFile !== undefined && options.backingFormat === undefined) {
    // A backing file without its format would be probed, and a probed raw
    // backing file can be made to look like qcow2 by the guest.
    throw new QcowError(
      `creating '${path}' over '${options.backingFile}' needs the backing format (raw or qcow2)`,
    );
  }
  // Like qemu-img create: virtual sizes are whole 512-byte sectors.
  const size = Math.ceil(options.size / 512) * 512;
  const l2Entries = cs / 8;
  const l1Size = Math.ceil(size / (l2Entries * cs));
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
  const rcPer = cs / 2; // 16-bit refcounts
  let t = 1;
  let b = 1;
  for (;;) {
    const n = 1 + t + l1Clusters + b;
    const nb = Math.ceil(n / rcPer);
    const nt = Math.ceil((nb * 8) / cs);
    if (nb === b && nt === t) break;
    b = nb;
    t = nt;
  }
  const total = 1 + t + l1Clusters + b;
  const l1Offset = (1 + t) * cs;
  const header = buildHeader({
    clusterBits: bits,
    size,
    l1Size,
    l1TableOffset: l1Offset,
    refcountTableOffset: cs,
    refcountTableClusters: t,
    refcountOrder: 4,
    backingFile: options.backingFile ?? null,
    backingFormat: options.backingFile !== undefined ? options.backingFormat ?? null : null,
  });
  const table = new Uint8Array(t * cs);
  const tv = new DataView(table.buffer);
  const firstBlock = 1 + t + l1Clusters;
  for (let i = 0; i < b; i++) tv.setBigUint64(i * 8, BigInt((firstBlock + i) * cs), false);
  const blocks = new Uint8Array(b * cs);
  const bv = new DataView(blocks.buffer);
  for (let c = 0; c < total; c++) bv.setUint16(c * 2, 1, false);
  const file = ImageFile.open(path, { create: true, truncate: true });
  try {
    file.truncate(total * cs);
    file.pwrite(header, 0);
    file.pwrite(table, cs);
    file.pwrite(blocks, firstBlock * cs);
    file.sync();
  } finally {
    file.close();
  }
}
