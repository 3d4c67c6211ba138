/**
 * The home side of the coherence protocol: for every block homed on this node,
 * the home memory copy and the directory entry (uncached, shared by a set of
 * nodes, or exclusive at one owner). One transaction per block runs at a time;
 * later requests for the block queue behind it.
 *
 * - READ: from memory when uncached or shared; from the owner (FETCH, then its
 *   WRITEBACK) when exclusive, leaving owner and requester sharers.
 * - READX / UPGRADE: invalidate the other sharers (INVALIDATE → ACK) or make
 *   the owner write back and drop its copy; then grant. An UPGRADE whose sender
 *   is still a sharer is granted by an ACK without data; otherwise DATA.
 *
 * @module
 */

import { DsmProtocolError } from "./errors.ts";
import { type Message, MsgType } from "./frames.ts";

const UNCACHED = 0;
const SHARED = 1;
const EXCLUSIVE = 2;

/** Sends a protocol message (to this node too): to, type, region, block, a, b, data. */
export type SendFn = (
  to: number,
  type: number,
  region: number,
  block: number,
  a: number,
  b: number,
  data: Uint8Array | null,
) => void;

interface Txn {
  type: number;
  requester: number;
  wasSharer: boolean;
  acks: number;
}

interface HomeRegion {
  blockSize: number;
  memory: Uint8Array;
  state: Uint8Array;
  owner: Int32Array;
  sharers: Uint32Array;
  txn: Map<number, Txn>;
  queue: Map<number, Message[]>;
}

/** The directory and home memory of the blocks homed on one node. */
export class Directory {
  readonly #regions: HomeRegion[];
  readonly #send: SendFn;

  /** Creates a directory for regions of the given sizes; every block starts uncached, zero. */
  constructor(regions: ReadonlyArray<{ size: number; blockSize: number }>, send: SendFn) {
    this.#send = send;
    this.#regions = regions.map(({ size, blockSize }) => {
      const blocks = size / blockSize;
      return {
        blockSize,
        memory: new Uint8Array(size),
        state: new Uint8Array(blocks).fill(UNCACHED),
        owner: new Int32Array(blocks),
        sharers: new Uint32Array(blocks),
        txn: new Map(),
        queue: new Map(),
      };
    });
  }

  #get(region: number): HomeRegion {
    const r = this.#regions[region];
    if (r === undefined) throw new DsmProtocolError(`no region ${region} in the directory`);
    return r;
  }

  /** Handles READ, READX or UPGRADE (`msg.a` = requester, already validated). */
  request(msg: Message): void {
    const r = this.#get(msg.region);
    if (r.txn.has(msg.block)) {
      const q = r.queue.get(msg.block);
      if (q === undefined) r.queue.set(msg.block, [msg]);
      else q.push(msg);
      return;
    }
    this.#start(r, msg);
  }

  #memory(r: HomeRegion, block: number): Uint8Array {
    return r.memory.subarray(block * r.blockSize, (block + 1) * r.blockSize);
  }

  #start(r: HomeRegion, msg: Message): void {
    const { block, region } = msg;
    const req = msg.a;
    const bit = 1 << req;
    const st = r.state[block];
    if (st === EXCLUSIVE) {
      const owner = r.owner[block] ?? 0;
      if (owner === req) {
        throw new DsmProtocolError(`node ${req} asked for block ${block} it already owns`);
      }
      r.txn.set(block, { type: msg.type, requester: req, wasSharer: false, acks: 0 });
      this.#send(owner, MsgType.FETCH, region, block, req, msg.type === MsgType.READ ? 0 : 1, null);
      return;
    }
    const sharers = st === SHARED ? (r.sharers[block] ?? 0) : 0;
    if (msg.type === MsgType.READ) {
      r.state[block] = SHARED;
      r.sharers[block] = sharers | bit;
      this.#send(req, MsgType.DATA, region, block, 0, 0, this.#memory(r, block).slice());
      this.#finish(r, region, block);
      return;
    }
    const wasSharer = (sharers & bit) !== 0;
    const others = sharers & ~bit;
    let acks = 0;
    for (let n = 0; n < 32; n++) {
      if ((others & (1 << n)) === 0) continue;
      acks++;
      this.#send(n, MsgType.INVALIDATE, region, block, req, 0, null);
    }
    r.txn.set(block, { type: msg.type, requester: req, wasSharer, acks });
    if (acks === 0) this.#grant(r, region, block);
  }

  #grant(r: HomeRegion, region: number, block: number): void {
    const t = r.txn.get(block);
    if (t === undefined) throw new DsmProtocolError(`no transaction on block ${block}`);
    r.state[block] = EXCLUSIVE;
    r.owner[block] = t.requester;
    r.sharers[block] = 0;
    if (t.type === MsgType.UPGRADE && t.wasSharer) {
      this.#send(t.requester, MsgType.ACK, region, block, 0, 1, null);
    } else {
      this.#send(t.requester, MsgType.DATA, region, block, 0, 1, this.#memory(r, block).slice());
    }
    this.#finish(r, region, block);
  }

  /** Handles a sharer's acknowledgement of an invalidation. */
  invalidationAck(msg: Message, from: number): void {
    const r = this.#get(msg.region);
    const t = r.txn.get(msg.block);
    if (t === undefined || t.acks <= 0) {
      throw new DsmProtocolError(`node ${from} acknowledged an invalidation nobody asked for`);
    }
    t.acks--;
    if (t.acks === 0) this.#grant(r, msg.region, msg.block);
  }

  /** Handles the owner's write-back of a block it was asked to FETCH. */
  writeback(msg: Message, from: number, data: Uint8Array): void {
    const r = this.#get(msg.region);
    const block = msg.block;
    const t = r.txn.get(block);
    if (t === undefined || r.owner[block] !== from || r.state[block] !== EXCLUSIVE) {
      throw new DsmProtocolError(`node ${from} wrote back block ${block} it does not own`);
    }
    this.#memory(r, block).set(data);
    if (t.type === MsgType.READ) {
      r.state[block] = SHARED;
      r.sharers[block] = (1 << from) | (1 << t.requester);
      this.#send(t.requester, MsgType.DATA, msg.region, block, 0, 0, data);
      this.#finish(r, msg.region, block);
    } else {
      t.wasSharer = false;
      this.#grant(r, msg.region, block);
    }
  }

  #finish(r: HomeRegion, region: number, block: number): void {
    r.txn.delete(block);
    const q = r.queue.get(block);
    const next = q?.shift();
    if (q !== undefined && q.length === 0) r.queue.delete(block);
    if (next !== undefined) this.#start(r, { ...next, region });
  }
}
