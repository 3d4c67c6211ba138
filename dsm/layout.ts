/**
 * Shared-memory layout of a node: line states, per-worker control words and
 * the buffers of one region, all in `SharedArrayBuffer`s so a node's workers
 * and its protocol thread see the same cached blocks.
 *
 * @module
 */

import { DsmConfigError } from "./errors.ts";

/** Bytes in a line: the unit of the state table. */
export const LINE_SIZE = 64;
/** log2 of {@link LINE_SIZE}. */
export const LINE_SHIFT = 6;
/** Smallest block size a region may choose. */
export const MIN_BLOCK_SIZE = 64;
/** Largest block size a region may choose. */
export const MAX_BLOCK_SIZE = 4096;
/** Largest number of workers one node may run (a bit per worker in an Int32). */
export const MAX_WORKERS = 31;

/** Line and block states kept in the state table (one byte per line). */
export const State = {
  /** No valid copy; loads and stores miss. */
  INVALID: 0,
  /** A read request is outstanding; data not valid yet. */
  PENDING_READ: 1,
  /** A read-exclusive request is outstanding; data not valid except recorded stores. */
  PENDING_READX: 2,
  /** A read is outstanding and stores were recorded meanwhile; upgrade follows. */
  PENDING_READ_UPGRADE: 3,
  /** The protocol thread is taking the exclusive copy away; data still valid. */
  REVOKING: 4,
  /** An upgrade is outstanding; data valid (recorded stores included). */
  PENDING_UPGRADE: 5,
  /** A read-only copy. */
  SHARED: 6,
  /** The only copy, writable. */
  EXCLUSIVE: 7,
} as const;

/** States at or above this value hold valid data: loads hit. */
export const READABLE_MIN = 4;

/** Int32 slots of one worker's control block. */
export const Ctrl = {
  /** Bumped at every slow path and synchronization: proves the worker left any fast path. */
  EPOCH: 0,
  /** 1 while the worker is blocked or finished (it cannot be inside a fast path). */
  IDLE: 1,
  /** Blocks with stores of this worker not yet performed. */
  PENDING: 2,
  /** Set by the protocol thread to wake the worker from a synchronization wait. */
  WAKE: 3,
  /** Read requests the worker wrote on its own request channels. */
  SENT_READ: 4,
  /** Read-exclusive requests the worker wrote on its own request channels. */
  SENT_READX: 5,
  /** Upgrade requests the worker wrote on its own request channels. */
  SENT_UPGRADE: 6,
} as const;
/** Int32 slots reserved per worker control block. */
export const CTRL_STRIDE = 8;

/** Miss requests a worker can have queued for the protocol thread at once. */
export const RING_ENTRIES = 256;
/** Int32 slots of one ring entry: kind, region, block. */
export const RING_ENTRY_INTS = 3;
/** Int32 slots of one worker's request ring: head, tail, then the entries. */
export const RING_STRIDE: number = 2 + RING_ENTRIES * RING_ENTRY_INTS;
/** Ring slot: next entry the protocol thread reads. */
export const RING_HEAD = 0;
/** Ring slot: next entry the worker writes. */
export const RING_TAIL = 1;

/** Int32 slots of the node-wide control block. */
export const NodeCtrl = {
  /** Non-zero once the cluster failed; the reason is in the message bytes. */
  FAILED: 0,
  /** Length in bytes of the UTF-8 failure message. */
  MESSAGE_LENGTH: 1,
  /** Doorbell: bumped by a worker after queueing a miss request. */
  DOORBELL: 2,
} as const;
/** Bytes of the node-wide control buffer (header plus failure message). */
export const NODE_CTRL_BYTES = 4096;
/** Byte offset of the failure message in the node-wide control buffer. */
export const NODE_CTRL_MESSAGE_OFFSET = 64;

/** How a region's blocks are assigned a home node. */
export type HomePolicy = "cyclic" | "blocked";

/** A named shared region as a program declares it. */
export interface RegionSpec {
  /** Unique name within the program. */
  name: string;
  /** Size in bytes; rounded up to a multiple of the block size. */
  size: number;
  /** Coherence unit in bytes: a power of two from 64 to 4096. */
  blockSize: number;
  /** Home assignment: `cyclic` (block i at node i mod N, default) or `blocked` (contiguous ranges). */
  home?: HomePolicy;
}

/** The shared buffers of one region, as sent to workers. */
export interface RegionBuffers {
  /** Region name. */
  name: string;
  /** Size in bytes (a multiple of the block size). */
  size: number;
  /** Block size in bytes. */
  blockSize: number;
  /** Cached data. */
  data: SharedArrayBuffer;
  /** One state byte per line. */
  state: SharedArrayBuffer;
  /** One byte per data byte: 1 where a store is recorded while a request is pending. */
  mask: SharedArrayBuffer;
  /** Int32 per block: spin lock word taken by slow paths and the protocol thread. */
  locks: SharedArrayBuffer;
  /** Int32 per block: bumped on every state change, waited on by blocked loads. */
  gens: SharedArrayBuffer;
  /** Int32 per block: bit per worker that recorded stores in the pending block. */
  writers: SharedArrayBuffer;
}

/** Checks a region specification and returns its size rounded to whole blocks. */
export function validateRegionSpec(spec: RegionSpec): number {
  const bs = spec.blockSize;
  if (
    !Number.isInteger(bs) || bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) !== 0
  ) {
    throw new DsmConfigError(
      `region '${spec.name}': block size ${bs} must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`,
    );
  }
  if (!Number.isInteger(spec.size) || spec.size <= 0 || spec.size > 2 ** 30) {
    throw new DsmConfigError(
      `region '${spec.name}': size ${spec.size} must be a positive integer of at most 1 GiB`,
    );
  }
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(spec.name)) {
    throw new DsmConfigError(
      `region name '${spec.name}' must be 1-64 characters of letters, digits, '_', '.', '-'`,
    );
  }
  return Math.ceil(spec.size / bs) * bs;
}

/** Allocates the shared buffers of a region. */
export function allocateRegion(spec: RegionSpec): RegionBuffers {
  const size = validateRegionSpec(spec);
  const blocks = size / spec.blockSize;
  return {
    name: spec.name,
    size,
    blockSize: spec.blockSize,
    data: new SharedArrayBuffer(size),
    state: new SharedArrayBuffer(size / LINE_SIZE),
    mask: new SharedArrayBuffer(size),
    locks: new SharedArrayBuffer(blocks * 4),
    gens: new SharedArrayBuffer(blocks * 4),
    writers: new SharedArrayBuffer(blocks * 4),
  };
}

/** Home node of `block` in a region of `blocks` blocks across `nodes` nodes. */
export function homeOf(policy: HomePolicy, block: number, blocks: number, nodes: number): number {
  if (policy === "blocked") return Math.min(nodes - 1, Math.floor((block * nodes) / blocks));
  return block % nodes;
}

/** Takes a block's spin lock (short critical sections only). */
export function lockBlock(locks: Int32Array, block: number): void {
  while (Atomics.compareExchange(locks, block, 0, 1) !== 0) {
    // The holder is inside a few-instruction critical section; spin.
  }
}

/** Releases a block's spin lock. */
export function unlockBlock(locks: Int32Array, block: number): void {
  Atomics.store(locks, block, 0);
}
