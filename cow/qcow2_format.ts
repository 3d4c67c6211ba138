/**
 * The qcow2 on-disk header (QEMU docs/interop/qcow2.txt), described once and
 * used by both the reader and the writer. All fields are big-endian.
 *
 * @module
 */

import { QcowError, UnsupportedFeatureError } from "./errors.ts";

/** "QFI\xfb". */
export const QCOW2_MAGIC = 0x514649fb;

/** Byte offsets of the header fields. */
export const HDR = {
  MAGIC: 0,
  VERSION: 4,
  BACKING_FILE_OFFSET: 8,
  BACKING_FILE_SIZE: 16,
  CLUSTER_BITS: 20,
  SIZE: 24,
  CRYPT_METHOD: 32,
  L1_SIZE: 36,
  L1_TABLE_OFFSET: 40,
  REFCOUNT_TABLE_OFFSET: 48,
  REFCOUNT_TABLE_CLUSTERS: 56,
  NB_SNAPSHOTS: 60,
  SNAPSHOTS_OFFSET: 64,
  INCOMPATIBLE_FEATURES: 72,
  COMPATIBLE_FEATURES: 80,
  AUTOCLEAR_FEATURES: 88,
  REFCOUNT_ORDER: 96,
  HEADER_LENGTH: 100,
  COMPRESSION_TYPE: 104,
} as const;

/** Length of a version 2 header. */
export const V2_HEADER_LENGTH = 72;
/** Minimum length of a version 3 header. */
export const V3_MIN_HEADER_LENGTH = 104;
/** Length of the version 3 header vmkit writes (with compression type and padding). */
export const V3_HEADER_LENGTH = 112;

/** Header extension types. */
export const EXT = {
  END: 0,
  BACKING_FORMAT: 0xe2792aca,
  FEATURE_TABLE: 0x6803f857,
  BITMAPS: 0x23852875,
  CRYPTO: 0x0537be77,
  DATA_FILE: 0x44415441,
} as const;

/** Incompatible feature bits. */
export const INCOMPAT = { DIRTY: 0, CORRUPT: 1, DATA_FILE: 2, COMPRESSION: 3, EXTL2: 4 } as const;

/** Largest refcount table QEMU accepts (QCOW_MAX_REFTABLE_SIZE). */
export const MAX_REFTABLE_BYTES: number = 8 * 1024 * 1024;
/** Longest backing file name QEMU accepts. */
export const MAX_BACKING_NAME = 1023;
/** Smallest and largest cluster_bits vmkit accepts (512 B .. 2 MiB). */
export const MIN_CLUSTER_BITS = 9;
/** Largest cluster_bits (2 MiB clusters). */
export const MAX_CLUSTER_BITS = 21;

/** A parsed qcow2 header. */
export interface Qcow2Header {
  /** 2 or 3. */
  version: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Virtual disk size in bytes. */
  size: number;
  /** Entries in the L1 table. */
  l1Size: number;
  /** Host offset of the L1 table. */
  l1TableOffset: number;
  /** Host offset of the refcount table. */
  refcountTableOffset: number;
  /** Clusters occupied by the refcount table. */
  refcountTableClusters: number;
  /** Internal snapshots (vmkit writes only images without them). */
  nbSnapshots: number;
  /** Host offset of the snapshot table. */
  snapshotsOffset: number;
  /** Incompatible feature bits. */
  incompatible: bigint;
  /** Compatible feature bits. */
  compatible: bigint;
  /** Autoclear feature bits. */
  autoclear: bigint;
  /** log2 of the refcount width in bits. */
  refcountOrder: number;
  /** Length of the fixed header in bytes. */
  headerLength: number;
  /** 0 for zlib. */
  compressionType: number;
  /** Backing file name as stored, or null. */
  backingFile: string | null;
  /** Backing format from the header extension, or null. */
  backingFormat: string | null;
  /** The bitmap directory named by the bitmaps extension, or null. */
  bitmapDirectory: { offset: number; size: number } | null;
}

/** Whether the header's corrupt bit is set (the image may be opened read-only only). */
export function isCorrupt(h: Qcow2Header): boolean {
  return (h.incompatible & (1n << BigInt(INCOMPAT.CORRUPT))) !== 0n;
}

/**
 * Throws when the image of header `h` may be opened read-only only: marked
 * corrupt, qcow2 version 2, or holding internal snapshots.
 */
export function checkWritable(h: Qcow2Header, path: string): void {
  if (isCorrupt(h)) {
    throw new QcowError(
      `'${path}' is marked corrupt; it opens read-only only: repair it with ` +
        `'qemu-img check -r all ${path}'`,
    );
  }
  if (h.version < 3) {
    throw new UnsupportedFeatureError(
      `'${path}' is qcow2 version 2: vmkit opens it read-only; upgrade it with ` +
        `'qemu-img amend -o compat=1.1 ${path}' to write`,
    );
  }
  if (h.nbSnapshots > 0) {
    throw new UnsupportedFeatureError(
      `'${path}' has ${h.nbSnapshots} internal snapshots: vmkit opens it read-only; ` +
        `remove them with 'qemu-img snapshot -d' to write`,
    );
  }
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Decodes a name stored in a header; refuses non-UTF-8 bytes and NUL bytes. */
function headerName(bytes: Uint8Array, what: string, path: string): string {
  let name: string;
  try {
    name = UTF8.decode(bytes);
  } catch (err) {
    throw new QcowError(
      `'${path}': the ${what} is not valid UTF-8; vmkit takes UTF-8 names only ` +
        `(rename the file and fix the name with 'qemu-img rebase -u')`,
      { cause: err },
    );
  }
  if (name.includes("\0")) {
    throw new QcowError(`'${path}': the ${what} ${JSON.stringify(name)} contains a NUL byte`);
  }
  return name;
}

function u64(view: DataView, at: number): number {
  const v = view.getBigUint64(at, false);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new QcowError(`header field at byte ${at} is too large (${v})`);
  }
  return Number(v);
}

/**
 * Parses and validates the header cluster of `path`. `head` holds at least
 * the first cluster (or the whole file if shorter). Refuses features vmkit
 * does not implement with {@link UnsupportedFeatureError}.
 */
export function parseHeader(head: Uint8Array, path: string, fileLength: number): Qcow2Header {
  if (head.length < V2_HEADER_LENGTH) {
    throw new QcowError(`'${path}' is not a qcow2 image: only ${head.length} bytes long`);
  }
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (v.getUint32(HDR.MAGIC, false) !== QCOW2_MAGIC) {
    throw new QcowError(`'${path}' is not a qcow2 image (bad magic)`);
  }
  const version = v.getUint32(HDR.VERSION, false);
  if (version !== 2 && version !== 3) {
    throw new UnsupportedFeatureError(
      `'${path}' is qcow2 version ${version}; vmkit reads versions 2 and 3`,
    );
  }
  const clusterBits = v.getUint32(HDR.CLUSTER_BITS, false);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new QcowError(`'${path}': cluster_bits ${clusterBits} outside 9..21`);
  }
  const clusterSize = 2 ** clusterBits;
  const crypt = v.getUint32(HDR.CRYPT_METHOD, false);
  if (crypt !== 0) {
    throw new UnsupportedFeatureError(
      `'${path}' is encrypted (crypt_method ${crypt}); vmkit does not support encrypted images`,
    );
  }
  const h: Qcow2Header = {
    version,
    clusterBits,
    size: u64(v, HDR.SIZE),
    l1Size: v.getUint32(HDR.L1_SIZE, false),
    l1TableOffset: u64(v, HDR.L1_TABLE_OFFSET),
    refcountTableOffset: u64(v, HDR.REFCOUNT_TABLE_OFFSET),
    refcountTableClusters: v.getUint32(HDR.REFCOUNT_TABLE_CLUSTERS, false),
    nbSnapshots: v.getUint32(HDR.NB_SNAPSHOTS, false),
    snapshotsOffset: u64(v, HDR.SNAPSHOTS_OFFSET),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    backingFile: null,
    backingFormat: null,
    bitmapDirectory: null,
  };
  if (version === 3) {
    if (head.length < V3_MIN_HEADER_LENGTH) throw new QcowError(`'${path}': header truncated`);
    h.incompatible = v.getBigUint64(HDR.INCOMPATIBLE_FEATURES, false);
    h.compatible = v.getBigUint64(HDR.COMPATIBLE_FEATURES, false);
    h.autoclear = v.getBigUint64(HDR.AUTOCLEAR_FEATURES, false);
    h.refcountOrder = v.getUint32(HDR.REFCOUNT_ORDER, false);
    h.headerLength = v.getUint32(HDR.HEADER_LENGTH, false);
    if (h.headerLength < V3_MIN_HEADER_LENGTH || h.headerLength > clusterSize) {
      throw new QcowError(`'${path}': header_length ${h.headerLength} is invalid`);
    }
    if (h.headerLength > HDR.COMPRESSION_TYPE) h.compressionType = v.getUint8(HDR.COMPRESSION_TYPE);
  }
  checkFeatures(h, path);
  if (h.refcountOrder > 6) {
    throw new QcowError(`'${path}': refcount_order ${h.refcountOrder} is larger than 6`);
  }
  const align = (x: number, what: string): void => {
    if (x % clusterSize !== 0) {
      throw new QcowError(`'${path}': ${what} ${x} is not cluster aligned`);
    }
  };
  align(h.l1TableOffset, "L1 table offset");
  align(h.refcountTableOffset, "refcount table offset");
  if (h.refcountTableOffset === 0 || h.refcountTableClusters === 0) {
    throw new QcowError(`'${path}': image has no refcount table`);
  }
  const rtBytes = h.refcountTableClusters * clusterSize;
  if (rtBytes > MAX_REFTABLE_BYTES || h.refcountTableOffset + rtBytes > fileLength) {
    throw new QcowError(
      `'${path}': refcount table (${h.refcountTableClusters} clusters at ` +
        `${h.refcountTableOffset}) is too large or lies beyond the end of the file`,
    );
  }
  const l2Entries = clusterSize / 8;
  const maxL1 = 32 * 1024 * 1024 / 8; // QEMU's QCOW_MAX_L1_SIZE
  if (h.l1Size > maxL1) throw new QcowError(`'${path}': L1 table of ${h.l1Size} entries`);
  if (h.l1Size * l2Entries * clusterSize < h.size) {
    throw new QcowError(
      `'${path}': L1 table (${h.l1Size} entries) too small for the virtual size ${h.size}`,
    );
  }
  if (h.l1Size > 0 && h.l1TableOffset === 0) {
    throw new QcowError(`'${path}': L1 table offset is 0`);
  }
  if (h.l1Size > 0 && h.l1TableOffset + h.l1Size * 8 > fileLength) {
    throw new QcowError(
      `'${path}': L1 table at ${h.l1TableOffset} lies beyond the end of the file`,
    );
  }
  const bOff = u64(v, HDR.BACKING_FILE_OFFSET);
  const bLen = v.getUint32(HDR.BACKING_FILE_SIZE, false);
  if (bOff !== 0 && bLen !== 0) {
    if (bLen > MAX_BACKING_NAME || bOff + bLen > Math.min(clusterSize, head.length)) {
      throw new QcowError(`'${path}': backing file name (${bLen} bytes at ${bOff}) is invalid`);
    }
    h.backingFile = headerName(head.subarray(bOff, bOff + bLen), "backing file name", path);
  }
  parseExtensions(head, h, path, bOff);
  return h;
}

function checkFeatures(h: Qcow2Header, path: string): void {
  const bit = (n: number): bigint => 1n << BigInt(n);
  const inc = h.incompatible;
  if (inc & bit(INCOMPAT.DIRTY)) {
    throw new UnsupportedFeatureError(
      `'${path}' is marked dirty (lazy refcounts not flushed); repair it with 'qemu-img check -r all'`,
    );
  }
  // The corrupt bit is the opener's call: QEMU (and vmkit) open such images read-only.
  if (inc & bit(INCOMPAT.DATA_FILE)) {
    throw new UnsupportedFeatureError(
      `'${path}' uses an external data file; vmkit does not support external data files`,
    );
  }
  if (inc & bit(INCOMPAT.COMPRESSION) || h.compressionType !== 0) {
    throw new UnsupportedFeatureError(
      `'${path}' uses compression type ${h.compressionType}; vmkit reads only zlib`,
    );
  }
  if (inc & bit(INCOMPAT.EXTL2)) {
    throw new UnsupportedFeatureError(
      `'${path}' uses extended L2 entries (subclusters); vmkit does not support them`,
    );
  }
  const known = bit(INCOMPAT.DIRTY) | bit(INCOMPAT.CORRUPT) | bit(INCOMPAT.DATA_FILE) |
    bit(INCOMPAT.COMPRESSION) | bit(INCOMPAT.EXTL2);
  const unknown = inc & ~known;
  if (unknown !== 0n) {
    throw new UnsupportedFeatureError(
      `'${path}' has unknown incompatible feature bits 0x${unknown.toString(16)}; ` +
        `vmkit cannot safely open it`,
    );
  }
}

function parseExtensions(head: Uint8Array, h: Qcow2Header, path: string, bOff: number): void {
  if (h.version < 3) return;
  const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
  let at = h.headerLength;
  const clusterEnd = Math.min(2 ** h.clusterBits, head.length);
  const end = bOff !== 0 ? Math.min(bOff, clusterEnd) : clusterEnd;
  while (at + 8 <= end) {
    const type = v.getUint32(at, false);
    const len = v.getUint32(at + 4, false);
    if (type === EXT.END) return;
    const data = at + 8;
    if (data + len > end) {
      throw new QcowError(`'${path}': header extension 0x${type.toString(16)} overruns the header`);
    }
    if (type === EXT.BACKING_FORMAT) {
      h.backingFormat = headerName(head.subarray(data, data + len), "backing format", path);
    } else if (type === EXT.BITMAPS && len >= 24) {
      // nb_bitmaps u32, reserved u32, bitmap_directory_size u64, bitmap_directory_offset u64
      const size = Number(v.getBigUint64(data + 8, false));
      const offset = Number(v.getBigUint64(data + 16, false));
      if (Number.isSafeInteger(size) && Number.isSafeInteger(offset) && size > 0) {
        h.bitmapDirectory = { offset, size: Math.min(size, 64 << 20) };
      }
    } else if (type === EXT.CRYPTO) {
      throw new UnsupportedFeatureError(`'${path}' has an encryption header; not supported`);
    } else if (type === EXT.DATA_FILE) {
      throw new UnsupportedFeatureError(`'${path}' names an external data file; not supported`);
    }
    at = data + Math.ceil(len / 8) * 8;
  }
}

/** Fields vmkit writes into a fresh header cluster. */
export interface HeaderLayout {
  /** log2 of the refcount width (4 for 16-bit). */
  refcountOrder: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Virtual size. */
  size: number;
  /** L1 entries. */
  l1Size: number;
  /** L1 host offset. */
  l1TableOffset: number;
  /** Refcount table host offset. */
  refcountTableOffset: number;
  /** Refcount table clusters. */
  refcountTableClusters: number;
  /** Backing file name or null. */
  backingFile: string | null;
  /** Backing format ("raw" / "qcow2") or null. */
  backingFormat: string | null;
}

/**
 * Serializes a version 3 header cluster: fixed header, backing format
 * extension, end marker, backing file name.
 */
export function buildHeader(layout: HeaderLayout): Uint8Array {
  const clusterSize = 2 ** layout.clusterBits;
  const buf = new Uint8Array(clusterSize);
  const v = new DataView(buf.buffer);
  const enc = new TextEncoder();
  v.setUint32(HDR.MAGIC, QCOW2_MAGIC, false);
  v.setUint32(HDR.VERSION, 3, false);
  v.setUint32(HDR.CLUSTER_BITS, layout.clusterBits, false);
  v.setBigUint64(HDR.SIZE, BigInt(layout.size), false);
  v.setUint32(HDR.L1_SIZE, layout.l1Size, false);
  v.setBigUint64(HDR.L1_TABLE_OFFSET, BigInt(layout.l1TableOffset), false);
  v.setBigUint64(HDR.REFCOUNT_TABLE_OFFSET, BigInt(layout.refcountTableOffset), false);
  v.setUint32(HDR.REFCOUNT_TABLE_CLUSTERS, layout.refcountTableClusters, false);
  v.setUint32(HDR.REFCOUNT_ORDER, layout.refcountOrder, false);
  v.setUint32(HDR.HEADER_LENGTH, V3_HEADER_LENGTH, false);
  let at = V3_HEADER_LENGTH;
  if (layout.backingFormat !== null && layout.backingFile !== null) {
    const fmt = enc.encode(layout.backingFormat);
    v.setUint32(at, EXT.BACKING_FORMAT, false);
    v.setUint32(at + 4, fmt.length, false);
    buf.set(fmt, at + 8);
    at += 8 + Math.ceil(fmt.length / 8) * 8;
  }
  v.setUint32(at, EXT.END, false);
  v.setUint32(at + 4, 0, false);
  at += 8;
  if (layout.backingFile !== null) {
    const name = enc.encode(layout.backingFile);
    if (name.length > MAX_BACKING_NAME || at + name.length > clusterSize) {
      throw new QcowError(`backing file name '${layout.backingFile}' is too long`);
    }
    v.setBigUint64(HDR.BACKING_FILE_OFFSET, BigInt(at), false);
    v.setUint32(HDR.BACKING_FILE_SIZE, name.length, false);
    buf.set(name, at);
  }
  return buf;
}
