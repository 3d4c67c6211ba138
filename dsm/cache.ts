/**
 * The requesting side of the coherence protocol: this node's cached copy of
 * every region, the per-line states its workers check inline, and what the
 * node does when the home answers (DATA, an upgrade granted by ACK) or takes
 * a copy away (INVALIDATE, FETCH). Stores recorded while a block was not
 * exclusive (lock-up free stores) are merged into the arriving copy, byte by
 * byte from the store mask, and performed when the block becomes exclusive.
 * The home side is `Directory` (`directory.ts`).
 *
 * @module
 */

import type { SendFn } from "./directory.ts";
import { DsmProtocolError } from "./errors.ts";
import { type Message, MsgType } from "./frames.ts";
import {
  allocateRegion,
  Ctrl,
  CTRL_STRIDE,
  homeOf,
  type HomePolicy,
  LINE_SIZE,
  lockBlock,
  type RegionBuffers,
  type RegionSpec,
  State,
  unlockBlock,
} from "./layout.ts";
import { setImmediate } from "node:timers";

/** How long a revocation polls its workers at full speed before backing off. */
const QUIESCE_FAST_POLL_MS = 2;

/** One region as this node caches it: the shared buffers and typed views of them. */
export interface CachedRegion {
  /** The region's shared buffers (given to every worker). */
  readonly buf: RegionBuffers;
  /** Blocks in the region. */
  readonly blocks: number;
  /** Cache lines per block. */
  readonly linesPerBlock: number;
  /** How blocks are spread over homes. */
  readonly home: HomePolicy;
  /** The cached bytes. */
  readonly data: Uint8Array;
  /** One state byte per line ({@link State}). */
  readonly state: Uint8Array;
  /** Bytes stored while the block was not exclusive (1 = recorded store). */
  readonly mask: Uint8Array;
  /** One spin lock per block. */
  readonly locks: Int32Array;
  /** One generation per block, bumped (and notified) on every state change. */
  readonly gens: Int32Array;
  /** Per block, the workers (bit mask) with recorded stores waiting. */
  readonly writers: Int32Array;
}

/** Allocates a region's shared buffers and views. */
export function cachedRegion(spec: RegionSpec): CachedRegion {
  const buf = allocateRegion(spec);
  return {
    buf,
    blocks: buf.size / buf.blockSize,
    linesPerBlock: buf.blockSize / LINE_SIZE,
    home: spec.home ?? "cyclic",
    data: new Uint8Array(buf.data),
    state: new Uint8Array(buf.state),
    mask: new Uint8Array(buf.mask),
    locks: new Int32Array(buf.locks),
    gens: new Int32Array(buf.gens),
    writers: new Int32Array(buf.writers),
  };
}

/** What the cache needs of its node. */
export interface BlockCacheOptions {
  /** This node's id. */
  readonly nodeId: number;
  /** Nodes in the cluster. */
  readonly nodes: number;
  /** Workers on this node. */
  readonly workers: number;
  /** The workers' control words (`Ctrl`, `CTRL_STRIDE` per worker). */
  readonly ctrl: Int32Array;
  /** Sends a protocol message. */
  readonly send: SendFn;
  /** Whether the node has failed (a deferred writeback is then dropped). */
  readonly failed: () => boolean;
  /** Counts an upgrade this cache asks for. */
  readonly onUpgrade: () => void;
}

/** This node's cached copies and their protocol states. */
export class BlockCache {
  readonly #regions: readonly CachedRegion[];
  readonly #nodeId: number;
  readonly #nodes: number;
  readonly #workers: number;
  readonly #ctrl: Int32Array;
  readonly #send: SendFn;
  readonly #failed: () => boolean;
  readonly #onUpgrade: () => void;

  /** A cache over `regions`. */
  constructor(regions: readonly CachedRegion[], opts: BlockCacheOptions) {
    this.#regions = regions;
    this.#nodeId = opts.nodeId;
    this.#nodes = opts.nodes;
    this.#workers = opts.workers;
    this.#ctrl = opts.ctrl;
    this.#send = opts.send;
    this.#failed = opts.failed;
    this.#onUpgrade = opts.onUpgrade;
  }

  /**
   * Trusts no cached copy any more (the node failed): every access takes the
   * slow path, and every worker waiting on a block wakes.
   */
  invalidateAll(): void {
    for (const r of this.#regions) {
      r.state.fill(State.INVALID);
      for (let b = 0; b < r.blocks; b++) {
        Atomics.add(r.gens, b, 1);
        Atomics.notify(r.gens, b);
      }
    }
  }

  #setState(r: CachedRegion, block: number, s: number): void {
    const first = block * r.linesPerBlock;
    r.state.fill(s, first, first + r.linesPerBlock);
  }

  #bump(r: CachedRegion, block: number): void {
    Atomics.add(r.gens, block, 1);
    Atomics.notify(r.gens, block);
  }

  /** The home node of `block` of `r`. */
  home(r: CachedRegion, block: number): number {
    return homeOf(r.home, block, r.blocks, this.#nodes);
  }

  /** Copies incoming data except the bytes where stores were recorded. */
  #merge(r: CachedRegion, block: number, incoming: Uint8Array): void {
    const bs = r.buf.blockSize;
    const base = block * bs;
    if ((r.writers[block] ?? 0) === 0) {
      r.data.set(incoming, base);
      return;
    }
    const mask = r.mask;
    const data = r.data;
    for (let i = 0; i < bs; i++) {
      if (mask[base + i] === 0) data[base + i] = incoming[i] ?? 0;
    }
  }

  /**
   * The block is exclusive here now (called with its lock held): its
   * recorded stores are performed. Returns the workers whose stores these
   * were, for {@link BlockCache.#wakeWriters} once the lock is released.
   */
  #completeExclusive(r: CachedRegion, block: number): number {
    const bs = r.buf.blockSize;
    const writers = r.writers[block] ?? 0;
    // The state first: a writer that sees its count drop finds the block exclusive.
    this.#setState(r, block, State.EXCLUSIVE);
    if (writers !== 0) {
      r.mask.fill(0, block * bs, (block + 1) * bs);
      r.writers[block] = 0;
      for (let w = 0; w < this.#workers; w++) {
        if ((writers & (1 << w)) !== 0) Atomics.sub(this.#ctrl, w * CTRL_STRIDE + Ctrl.PENDING, 1);
      }
    }
    return writers;
  }

  /**
   * Wakes the workers waiting for their stores to be performed, after the
   * block's lock is released: a woken worker may take this thread's core, and
   * must not then find the lock held by a thread that cannot run.
   */
  #wakeWriters(writers: number): void {
    for (let w = 0; writers !== 0 && w < this.#workers; w++) {
      if ((writers & (1 << w)) !== 0) Atomics.notify(this.#ctrl, w * CTRL_STRIDE + Ctrl.PENDING);
    }
  }

  /** DATA from the home: the block arrives shared (b=0) or exclusive (b=1), `data` checked. */
  onData(r: CachedRegion, msg: Message, from: number, data: Uint8Array): void {
    const block = msg.block;
    if (from !== this.home(r, block)) {
      throw new DsmProtocolError(`node ${from} sent data for block ${block} it is not home of`);
    }
    const line = block * r.linesPerBlock;
    let writers = 0;
    lockBlock(r.locks, block);
    try {
      const s = r.state[line];
      if (
        s !== State.PENDING_READ && s !== State.PENDING_READ_UPGRADE && s !== State.PENDING_READX &&
        s !== State.PENDING_UPGRADE
      ) {
        throw new DsmProtocolError(`node ${from} sent data for block ${block} in state ${s}`);
      }
      this.#merge(r, block, data);
      if (msg.b === 1) {
        writers = this.#completeExclusive(r, block);
      } else if ((r.writers[block] ?? 0) !== 0) {
        // Stores were recorded while the read was outstanding: now ask for exclusivity.
        this.#setState(r, block, State.PENDING_UPGRADE);
        this.#onUpgrade();
        this.#send(from, MsgType.UPGRADE, msg.region, block, this.#nodeId, 0, null);
      } else {
        this.#setState(r, block, State.SHARED);
      }
    } finally {
      unlockBlock(r.locks, block);
    }
    this.#wakeWriters(writers);
    this.#bump(r, block);
  }

  /** An ACK with b=1 from the home: an upgrade granted without data. */
  onGrant(r: CachedRegion, msg: Message, from: number): void {
    const block = msg.block;
    let writers = 0;
    lockBlock(r.locks, block);
    try {
      if (
        r.state[block * r.linesPerBlock] !== State.PENDING_UPGRADE || from !== this.home(r, block)
      ) {
        throw new DsmProtocolError(
          `node ${from} granted an upgrade of block ${block} not asked for`,
        );
      }
      writers = this.#completeExclusive(r, block);
    } finally {
      unlockBlock(r.locks, block);
    }
    this.#wakeWriters(writers);
    this.#bump(r, block);
  }

  /** INVALIDATE from the home: drop a shared copy and acknowledge. */
  onInvalidate(r: CachedRegion, msg: Message, from: number): void {
    const block = msg.block;
    lockBlock(r.locks, block);
    const s = r.state[block * r.linesPerBlock];
    if (s === State.SHARED) this.#setState(r, block, State.INVALID);
    else if (s === State.PENDING_UPGRADE) this.#setState(r, block, State.PENDING_READX);
    unlockBlock(r.locks, block);
    this.#bump(r, block);
    this.#send(from, MsgType.ACK, msg.region, block, 0, 0, null);
  }

  /** FETCH from the home: write the exclusive copy back (b=1: and drop it). */
  onFetch(r: CachedRegion, msg: Message, from: number): void {
    const block = msg.block;
    lockBlock(r.locks, block);
    const s = r.state[block * r.linesPerBlock];
    if (s !== State.EXCLUSIVE) {
      unlockBlock(r.locks, block);
      throw new DsmProtocolError(
        `node ${from} fetched block ${block}, which is not exclusive here (${s})`,
      );
    }
    this.#setState(r, block, State.REVOKING);
    unlockBlock(r.locks, block);
    // A worker may be between its inline check and its store: wait until every
    // worker has left any fast path it was in before taking the data away.
    this.#whenQuiescent(() => {
      if (this.#failed()) return;
      const bs = r.buf.blockSize;
      lockBlock(r.locks, block);
      const data = r.data.slice(block * bs, (block + 1) * bs);
      this.#setState(r, block, msg.b === 1 ? State.INVALID : State.SHARED);
      unlockBlock(r.locks, block);
      this.#bump(r, block);
      this.#send(from, MsgType.WRITEBACK, msg.region, block, 0, 0, data);
    });
  }

  #whenQuiescent(then: () => void): void {
    const workers = this.#workers;
    const epochs = new Int32Array(workers);
    for (let w = 0; w < workers; w++) {
      epochs[w] = Atomics.load(this.#ctrl, w * CTRL_STRIDE + Ctrl.EPOCH);
    }
    const started = performance.now();
    const check = (): void => {
      for (let w = 0; w < workers; w++) {
        const base = w * CTRL_STRIDE;
        if (Atomics.load(this.#ctrl, base + Ctrl.IDLE) === 1) continue;
        if (Atomics.load(this.#ctrl, base + Ctrl.EPOCH) !== epochs[w]) continue;
        // Poll right behind pending I/O for a while (setTimeout(0) costs
        // milliseconds in Deno), then back off so a long compute phase of a
        // worker does not cost the node a core.
        if (performance.now() - started < QUIESCE_FAST_POLL_MS) setImmediate(check);
        else setTimeout(check, 1);
        return;
      }
      then();
    };
    check();
  }
}
