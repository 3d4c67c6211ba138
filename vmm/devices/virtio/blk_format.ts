/**
 * virtio-blk as the spec defines it (virtio 1.2 §5.2): feature bits, the
 * configuration space layout, request types and status values, and the
 * features and limits vmkit's block device offers.
 *
 * @module
 */

import type { DriveBackend, DriveConfig, RateLimiterConfig } from "../../io_config.ts";
import type { VirtioDeviceConfig } from "./host.ts";
import { Feature } from "./layout.ts";

/** Virtio device id of a block device. */
export const BLK_DEVICE_ID = 2;
/** Queue size vmkit offers. */
export const BLK_QUEUE_SIZE = 256;
/** Data buffers one request may have (`seg_max`). */
export const BLK_SEG_MAX = 126;
/** Segments in one DISCARD or WRITE_ZEROES request. */
export const BLK_MAX_DISCARD_SEG = 32;
/** Sectors in one DISCARD / WRITE_ZEROES segment (1 GiB). */
export const BLK_MAX_DISCARD_SECTORS = 1 << 21;
/** Bytes of one request's data that vmkit accepts (larger requests fail with IOERR). */
export const BLK_MAX_REQUEST_BYTES = 64 << 20;
/** Bytes of the serial GET_ID returns. */
export const BLK_ID_BYTES = 20;
/** The sector unit of virtio-blk addresses. */
export const SECTOR = 512;

/** virtio-blk feature bits. */
export const BlkFeature = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Request types (`virtio_blk_req.type`). */
export const BlkType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const;

/** Request status values. */
export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`. */
export const WRITE_ZEROES_FLAG_UNMAP = 1;

/** Byte offsets of `struct virtio_blk_config` (virtio 1.2 §5.2.4). */
export const BlkConfig = {
  CAPACITY: 0,
  SIZE_MAX: 8,
  SEG_MAX: 12,
  GEOMETRY: 16,
  BLK_SIZE: 20,
  PHYSICAL_BLOCK_EXP: 24,
  ALIGNMENT_OFFSET: 25,
  MIN_IO_SIZE: 26,
  OPT_IO_SIZE: 28,
  WRITEBACK: 32,
  NUM_QUEUES: 34,
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56,
  MAX_SECURE_ERASE_SECTORS: 60,
  MAX_SECURE_ERASE_SEG: 64,
  SECURE_ERASE_SECTOR_ALIGNMENT: 68,
  /** Bytes of the whole structure. */
  BYTES: 72,
} as const;

/** Header of every request: type u32, reserved u32, sector u64. */
export const BLK_HEADER_BYTES = 16;
/** One DISCARD / WRITE_ZEROES segment: sector u64, num_sectors u32, flags u32. */
export const BLK_SEGMENT_BYTES = 16;

/** Per-drive counters (slots of a `SharedCounters` the I/O Worker writes). */
export const BlkStat = {
  READS: 0,
  READ_BYTES: 1,
  WRITES: 2,
  WRITE_BYTES: 3,
  FLUSHES: 4,
  DISCARDS: 5,
  WRITE_ZEROES: 6,
  GET_IDS: 7,
  IO_ERRORS: 8,
  UNSUPPORTED: 9,
  THROTTLED: 10,
} as const;

/** Names of the {@link BlkStat} slots, in slot order. */
export const BLK_STAT_NAMES: readonly string[] = [
  "reads",
  "read_bytes",
  "writes",
  "write_bytes",
  "flushes",
  "discards",
  "write_zeroes",
  "get_ids",
  "io_errors",
  "unsupported",
  "throttled",
];

/** The feature bits a drive offers. */
export function blkFeatures(readOnly: boolean): number[] {
  const f: number[] = [
    Feature.INDIRECT_DESC,
    Feature.EVENT_IDX,
    BlkFeature.SEG_MAX,
    BlkFeature.BLK_SIZE,
    BlkFeature.FLUSH,
  ];
  if (readOnly) f.push(BlkFeature.RO);
  else f.push(BlkFeature.DISCARD, BlkFeature.WRITE_ZEROES);
  return f;
}

/** Writes the configuration space for a disk of `bytes` with logical blocks of `blockSize`. */
export function writeBlkConfig(cfg: Uint8Array, bytes: number, blockSize: number): void {
  const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  v.setBigUint64(BlkConfig.CAPACITY, BigInt(Math.floor(bytes / SECTOR)), true);
  v.setUint32(BlkConfig.SEG_MAX, BLK_SEG_MAX, true);
  v.setUint32(BlkConfig.BLK_SIZE, blockSize, true);
  v.setUint16(BlkConfig.NUM_QUEUES, 1, true);
  v.setUint32(BlkConfig.MAX_DISCARD_SECTORS, BLK_MAX_DISCARD_SECTORS, true);
  v.setUint32(BlkConfig.MAX_DISCARD_SEG, BLK_MAX_DISCARD_SEG, true);
  v.setUint32(BlkConfig.DISCARD_SECTOR_ALIGNMENT, blockSize / SECTOR, true);
  v.setUint32(BlkConfig.MAX_WRITE_ZEROES_SECTORS, BLK_MAX_DISCARD_SECTORS, true);
  v.setUint32(BlkConfig.MAX_WRITE_ZEROES_SEG, BLK_MAX_DISCARD_SEG, true);
  v.setUint8(BlkConfig.WRITE_ZEROES_MAY_UNMAP, 1);
}

/** What a drive's back end is made from (built on the main thread, opened on the Worker). */
export interface BlkBackendConfig {
  /** Drive id (device name). */
  readonly id: string;
  /** The back end. */
  readonly backend: DriveBackend;
  /** Expose and open read-only. */
  readonly readOnly: boolean;
  /** GET_ID serial (≤ 20 bytes). */
  readonly serial: string;
  /** Initiator name for an iSCSI back end (the VM's SUI from the registry). */
  readonly initiatorName?: string;
  /** Use io_uring for raw files (default true; false uses the synchronous path). */
  readonly uring?: boolean;
  /**
   * Raw files through io_uring: writes run synchronously (pwritev on the I/O
   * Worker) until one takes longer than this many milliseconds, then through
   * io_uring for a while (default 10; 0: always through io_uring).
   */
  readonly syncWriteStallMs?: number;
  /** Firecracker's rate limiter: bandwidth (data bytes) and ops (requests). */
  readonly rateLimiter?: RateLimiterConfig;
  /** The drive's counters ({@link BLK_STAT_NAMES}), written by the I/O Worker. */
  readonly stats?: SharedArrayBuffer;
}

/**
 * virtio-blk's busy-poll window after each wake-up, in microseconds (QEMU's
 * IOThread default). Measured with the C bench driver (4K random reads QD32,
 * warm, 9 runs each, load 2.4-3.0): median 341k vs 284k req/s without, the
 * driver's kicks from 1 per 32 requests to under 1 per 1000, p50 latency of
 * one 4K read 11.5 vs 13.3 us.
 */
export const BLK_POLL_US = 32;

/**
 * The virtio device to build for `drive`: a virtio-blk transport whose back
 * end (`blk.ts`) opens the drive on its I/O Worker. `initiatorName` is the
 * VM's SUI for an iSCSI drive.
 */
export function blkDeviceConfig(
  drive: DriveConfig,
  initiatorName?: string,
  uring = true,
  stats?: SharedArrayBuffer,
): VirtioDeviceConfig {
  const readOnly = drive.readOnly ?? false;
  const backendConfig: BlkBackendConfig = {
    id: drive.id,
    backend: drive.backend,
    readOnly,
    serial: drive.serial ?? drive.id,
    uring,
    ...(initiatorName === undefined ? {} : { initiatorName }),
    ...(drive.rateLimiter === undefined ? {} : { rateLimiter: drive.rateLimiter }),
    stats: stats ?? new SharedArrayBuffer(BLK_STAT_NAMES.length * 8),
  };
  return {
    name: drive.id,
    deviceId: BLK_DEVICE_ID,
    features: blkFeatures(readOnly),
    queueSizes: [BLK_QUEUE_SIZE],
    configBytes: BlkConfig.BYTES,
    backendModule: new URL("./blk.ts", import.meta.url).href,
    backendConfig,
    pollUs: BLK_POLL_US,
  };
}
