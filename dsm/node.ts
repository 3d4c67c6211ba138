/**
 * A DSM node: the protocol thread of one process. It owns the TCP mesh, hosts
 * the directory of its share of every region's blocks ({@link Directory}), answers its workers'
 * misses, revokes exclusive copies other nodes ask for, merges recorded stores
 * into arriving exclusive copies, and runs the lock and barrier managers.
 *
 * Directory protocol: one transaction per block at its home at a time (later
 * requests queue). READ, READX and UPGRADE go to the home; the home sends DATA
 * (shared or exclusive), invalidates sharers (INVALIDATE → ACK) or makes the
 * owner write back (FETCH → WRITEBACK). An UPGRADE whose sender was still a
 * sharer is granted with an ACK carrying no data.
 *
 * @module
 */

import { DsmConfigError, DsmError, DsmNodeDeathError, DsmProtocolError } from "./errors.ts";
import { type Message, MsgType } from "./frames.ts";
import {
  allocateRegion,
  Ctrl,
  CTRL_STRIDE,
  homeOf,
  type HomePolicy,
  LINE_SIZE,
  lockBlock,
  MAX_WORKERS,
  NODE_CTRL_BYTES,
  NODE_CTRL_MESSAGE_OFFSET,
  NodeCtrl,
  type RegionBuffers,
  RING_ENTRIES,
  RING_ENTRY_INTS,
  RING_HEAD,
  RING_STRIDE,
  RING_TAIL,
  State,
  unlockBlock,
} from "./layout.ts";
import type { DsmProgram, Params } from "./program.ts";
import { Request } from "./region.ts";
import { Directory } from "./directory.ts";
import { SyncManager } from "./sync_manager.ts";
import { type Endpoint, Mesh } from "./transport.ts";
import type { ClusterAuth } from "./handshake.ts";
import { setImmediate } from "node:timers";
import type { WorkerInit, WorkerMessage } from "./worker_protocol.ts";

/** How long a revocation polls its workers at full speed before backing off. */
const QUIESCE_FAST_POLL_MS = 2;

/** Largest cluster: sharer sets are 32-bit masks. */
export const MAX_NODES = 32;

/** Options of one node. */
export interface NodeOptions {
  /** This node's id (index into `members`). */
  id: number;
  /** Every node, ordered (see `orderMembers`). */
  members: Endpoint[];
  /** Workers this node runs. */
  workers: number;
  /** URL of the program module. */
  programUrl: string;
  /** The loaded program (its `regions` decides the layout). */
  program: DsmProgram;
  /** Run parameters (defaults already applied). */
  params: Params;
  /** Make every store wait until performed (to compare with lock-up free stores). */
  blockingStores: boolean;
  /** The cluster secret and member list every peer must prove it knows (see `clusterAuth`). */
  auth: ClusterAuth;
  /** How long to wait for every peer to connect. */
  startTimeoutMs?: number;
  /** Called with one line for every incoming connection refused at start (default: stderr). */
  onRefused?: (line: string) => void;
  /** Called once every peer is connected, before the workers start. */
  onReady?: () => void;
}

/** Counters of one node's run. */
export interface NodeStats {
  /** Node id. */
  node: number;
  /** Frames sent to other nodes. */
  messages: number;
  /** Bytes sent to other nodes. */
  bytes: number;
  /** Read misses of this node's workers. */
  readMisses: number;
  /** Read-exclusive requests (stores to invalid blocks). */
  writeMisses: number;
  /** Upgrade requests (stores to shared blocks). */
  upgrades: number;
  /** Lock acquisitions. */
  locks: number;
  /** Barriers passed. */
  barriers: number;
  /** Milliseconds from the last worker loading the program to the last barrier. */
  elapsedMs: number;
}

/** What a node's run returns. */
export interface NodeReport {
  /** The program's result (node 0 only, when the program defines `result`). */
  result?: unknown;
  /** This node's counters. */
  stats: NodeStats;
}

interface RegionRuntime {
  buf: RegionBuffers;
  blocks: number;
  linesPerBlock: number;
  home: HomePolicy;
  data: Uint8Array;
  state: Uint8Array;
  mask: Uint8Array;
  locks: Int32Array;
  gens: Int32Array;
  writers: Int32Array;
}

/** One DSM node; {@link DsmNode.run} runs a program to completion. */
export class DsmNode {
  readonly #opts: NodeOptions;
  readonly #n: number;
  readonly #regions: RegionRuntime[];
  readonly #ctrl: Int32Array;
  readonly #nodeCtrl: SharedArrayBuffer;
  readonly #bell: Int32Array;
  readonly #rings: Int32Array;
  #polling = true;
  readonly #mesh: Mesh;
  readonly #directory: Directory;
  readonly #sync: SyncManager;
  readonly #workers: Worker[] = [];
  readonly #local: Message[] = [];
  #localScheduled = false;
  #failed: Error | null = null;
  #settle: { resolve: (r: NodeReport) => void; reject: (e: Error) => void } | null = null;
  #result: unknown = undefined;
  #done = 0;
  #startedAt = 0;
  #lastBarrierAt = 0;
  readonly #stats = { readMisses: 0, writeMisses: 0, upgrades: 0, locks: 0, barriers: 0 };
  // Synchronization: local barrier arrivals, manager state.
  #barrierArrived = 0;
  #barrierGen = 0;

  /** Creates a node (allocates regions); {@link DsmNode.run} starts it. */
  constructor(opts: NodeOptions) {
    if (opts.members.length < 1 || opts.members.length > MAX_NODES) {
      throw new DsmConfigError(`a cluster has 1 to ${MAX_NODES} nodes, not ${opts.members.length}`);
    }
    if (!Number.isInteger(opts.workers) || opts.workers < 1 || opts.workers > MAX_WORKERS) {
      throw new DsmConfigError(`workers per node must be 1 to ${MAX_WORKERS}, not ${opts.workers}`);
    }
    this.#opts = opts;
    this.#n = opts.members.length;
    const specs = opts.program.regions(opts.params, { nodes: this.#n, workers: opts.workers });
    const names = new Set<string>();
    this.#regions = specs.map((spec) => {
      if (names.has(spec.name)) throw new DsmConfigError(`region '${spec.name}' is declared twice`);
      names.add(spec.name);
      const buf = allocateRegion(spec);
      const blocks = buf.size / buf.blockSize;
      return {
        buf,
        blocks,
        linesPerBlock: buf.blockSize / LINE_SIZE,
        home: spec.home ?? "cyclic",
        data: new Uint8Array(buf.data),
        state: new Uint8Array(buf.state),
        mask: new Uint8Array(buf.mask),
        locks: new Int32Array(buf.locks),
        gens: new Int32Array(buf.gens),
        writers: new Int32Array(buf.writers),
      };
    });
    this.#directory = new Directory(
      this.#regions.map((r) => ({ size: r.buf.size, blockSize: r.buf.blockSize })),
      (to, type, region, block, a, b, data) => this.#send(to, type, region, block, a, b, data),
    );
    this.#sync = new SyncManager(
      this.#n,
      (to, type, id, a, b) => this.#send(to, type, 0, id, a, b, null),
    );
    this.#ctrl = new Int32Array(new SharedArrayBuffer(opts.workers * CTRL_STRIDE * 4));
    this.#nodeCtrl = new SharedArrayBuffer(NODE_CTRL_BYTES);
    this.#bell = new Int32Array(this.#nodeCtrl);
    this.#rings = new Int32Array(new SharedArrayBuffer(opts.workers * RING_STRIDE * 4));
    this.#mesh = new Mesh({
      id: opts.id,
      members: opts.members,
      auth: opts.auth,
      onMessage: (from, msg) => this.#receive(from, msg),
      onPeerLost: (from, err) => this.#fail(err, from),
      ...(opts.onRefused === undefined ? {} : { onRefused: opts.onRefused }),
    });
  }

  /** Connects to the cluster, runs the program on the workers, and leaves in order. */
  async run(): Promise<NodeReport> {
    await this.#mesh.start(this.#opts.startTimeoutMs ?? 20_000);
    this.#opts.onReady?.();
    const finished = new Promise<NodeReport>((resolve, reject) => {
      this.#settle = { resolve, reject };
    });
    // A peer may have died while the mesh was forming.
    if (this.#failed !== null) this.#settle?.reject(this.#failed);
    this.#startedAt = performance.now();
    for (let w = 0; w < this.#opts.workers; w++) this.#spawnWorker(w);
    const polling = this.#pollRequests();
    try {
      return await finished;
    } finally {
      this.#polling = false;
      Atomics.add(this.#bell, NodeCtrl.DOORBELL, 1);
      Atomics.notify(this.#bell, NodeCtrl.DOORBELL);
      await polling;
      for (const w of this.#workers) w.terminate();
      // Let the FAILED notices reach the peers before the connections close.
      if (this.#failed !== null) await this.#mesh.drain(500);
      this.#mesh.close();
    }
  }

  #spawnWorker(w: number): void {
    const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
    worker.onmessage = (ev: MessageEvent<WorkerMessage>) => {
      try {
        this.#fromWorker(w, ev.data);
      } catch (err) {
        this.#fail(err instanceof Error ? err : new Error(String(err)));
      }
    };
    worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      this.#fail(new DsmError(`node ${this.#opts.id} worker ${w} crashed: ${ev.message}`));
    };
    const init: WorkerInit = {
      programUrl: this.#opts.programUrl,
      params: this.#opts.params,
      regions: this.#regions.map((r) => r.buf),
      ctrl: this.#ctrl.buffer as SharedArrayBuffer,
      rings: this.#rings.buffer as SharedArrayBuffer,
      nodeCtrl: this.#nodeCtrl,
      nodeId: this.#opts.id,
      nodeCount: this.#n,
      workerId: w,
      workers: this.#opts.workers,
      blockingStores: this.#opts.blockingStores,
    };
    worker.postMessage(init);
    this.#workers.push(worker);
  }

  // ---- failure -------------------------------------------------------------

  /** Fails the node; `culprit` is the node that died or erred (default: this one). */
  #fail(err: Error, culprit: number = this.#opts.id): void {
    if (this.#failed !== null) return;
    this.#failed = err;
    // Tell the live peers why, so each reports the original cause rather than
    // this node's connection closing next.
    for (let n = 0; n < this.#n; n++) {
      if (n === this.#opts.id || n === culprit) continue;
      this.#mesh.send(n, {
        type: MsgType.FAILED,
        region: 0,
        block: 0,
        a: culprit,
        // Whether the culprit died or is alive but broke the protocol: peers must not call it dead.
        b: err instanceof DsmNodeDeathError ? 0 : 1,
        data: null,
      });
    }
    const ctrl = new Int32Array(this.#nodeCtrl);
    const bytes = new TextEncoder().encode(err.message).subarray(
      0,
      NODE_CTRL_BYTES - NODE_CTRL_MESSAGE_OFFSET,
    );
    new Uint8Array(this.#nodeCtrl).set(bytes, NODE_CTRL_MESSAGE_OFFSET);
    Atomics.store(ctrl, NodeCtrl.MESSAGE_LENGTH, bytes.length);
    Atomics.store(ctrl, NodeCtrl.FAILED, 1);
    // No cached copy is trusted any more: every access takes the slow path and throws.
    for (const r of this.#regions) {
      r.state.fill(State.INVALID);
      for (let b = 0; b < r.blocks; b++) {
        Atomics.add(r.gens, b, 1);
        Atomics.notify(r.gens, b);
      }
    }
    for (let w = 0; w < this.#opts.workers; w++) {
      const base = w * CTRL_STRIDE;
      Atomics.store(this.#ctrl, base + Ctrl.WAKE, 2);
      Atomics.notify(this.#ctrl, base + Ctrl.WAKE);
      Atomics.notify(this.#ctrl, base + Ctrl.PENDING);
    }
    this.#settle?.reject(err);
  }

  // ---- messaging -----------------------------------------------------------

  #send(
    to: number,
    type: number,
    region: number,
    block: number,
    a: number,
    b: number,
    data: Uint8Array | null,
  ): void {
    const msg: Message = { type: type as Message["type"], region, block, a, b, data };
    if (to === this.#opts.id) {
      this.#local.push(msg);
      if (!this.#localScheduled) {
        this.#localScheduled = true;
        queueMicrotask(() => this.#drainLocal());
      }
      return;
    }
    this.#mesh.send(to, msg);
  }

  #drainLocal(): void {
    this.#localScheduled = false;
    while (this.#local.length > 0) {
      const msg = this.#local.shift();
      if (msg !== undefined) this.#receive(this.#opts.id, msg);
    }
  }

  #receive(from: number, msg: Message): void {
    if (this.#failed !== null) return;
    try {
      this.#dispatch(from, msg);
    } catch (err) {
      const culprit = msg.type === MsgType.FAILED && msg.a < this.#n ? msg.a : from;
      this.#fail(err instanceof Error ? err : new Error(String(err)), culprit);
    }
  }

  #region(msg: Message, from: number): RegionRuntime {
    const r = this.#regions[msg.region];
    if (r === undefined || msg.block >= r.blocks) {
      throw new DsmProtocolError(
        `node ${from} sent message type ${msg.type} for region ${msg.region} block ${msg.block}, which does not exist`,
      );
    }
    return r;
  }

  #dispatch(from: number, msg: Message): void {
    switch (msg.type) {
      case MsgType.READ:
      case MsgType.READX:
      case MsgType.UPGRADE: {
        const r = this.#region(msg, from);
        this.#checkHome(r, msg, from);
        if (msg.a !== from) throw new DsmProtocolError(`node ${from} requested for node ${msg.a}`);
        return this.#directory.request(msg);
      }
      case MsgType.INVALIDATE:
        return this.#onInvalidate(this.#fromHome(msg, from), msg, from);
      case MsgType.ACK: {
        const r = this.#region(msg, from);
        if (msg.b === 1) return this.#onGrant(r, msg, from);
        return this.#directory.invalidationAck(msg, from);
      }
      case MsgType.DATA:
        return this.#onData(this.#region(msg, from), msg, from);
      case MsgType.FETCH:
        return this.#onFetch(this.#fromHome(msg, from), msg, from);
      case MsgType.WRITEBACK: {
        const r = this.#region(msg, from);
        return this.#directory.writeback(msg, from, this.#checkData(r, msg, from));
      }
      case MsgType.LOCK_ACQUIRE:
        this.#checkManager(msg.block % this.#n, msg, from);
        return this.#sync.acquire(msg.block, from, msg.b);
      case MsgType.LOCK_RELEASE:
        this.#checkManager(msg.block % this.#n, msg, from);
        return this.#sync.release(msg.block, from);
      case MsgType.LOCK_GRANT:
        if (from !== msg.block % this.#n) {
          throw new DsmProtocolError(`node ${from} granted lock ${msg.block} it does not manage`);
        }
        return this.#wake(msg.b);
      case MsgType.BARRIER_ENTER:
        this.#checkManager(0, msg, from);
        return this.#sync.enterBarrier(msg.block);
      case MsgType.BARRIER_GO:
        if (from !== 0) {
          throw new DsmProtocolError(
            `node ${from} completed a barrier; only node 0 manages barriers`,
          );
        }
        return this.#onBarrierGo(msg.block);
      case MsgType.BYE:
        return;
      case MsgType.FAILED: {
        const ep = this.#opts.members[msg.a];
        const where = ep === undefined ? "" : ` at ${ep.host}:${ep.port}`;
        if (msg.a === from) {
          throw new DsmError(
            `node ${from} stopped after an error; the program cannot continue (see that node's log)`,
          );
        }
        throw msg.b === 0
          ? new DsmNodeDeathError(
            `node ${msg.a}${where} died (reported by node ${from}); the program cannot continue (restart the cluster)`,
          )
          : new DsmProtocolError(
            `node ${msg.a}${where} broke the protocol (reported by node ${from}); the program cannot continue`,
          );
      }
      case MsgType.HELLO:
      case MsgType.HELLO_ACK:
      case MsgType.HELLO_AUTH:
        throw new DsmProtocolError(`node ${from} sent a handshake frame after the handshake`);
    }
  }

  #checkManager(manager: number, msg: Message, from: number): void {
    if (manager !== this.#opts.id) {
      throw new DsmProtocolError(
        `node ${from} sent synchronization message ${msg.type} for ${msg.block} to node ${this.#opts.id}, which does not manage it`,
      );
    }
  }

  /** The region of a message that only a block's home may send. */
  #fromHome(msg: Message, from: number): RegionRuntime {
    const r = this.#region(msg, from);
    if (this.#home(r, msg.block) !== from) {
      throw new DsmProtocolError(
        `node ${from} sent message type ${msg.type} for block ${msg.block} of region '${r.buf.name}' but is not its home`,
      );
    }
    return r;
  }

  #checkHome(r: RegionRuntime, msg: Message, from: number): void {
    if (homeOf(r.home, msg.block, r.blocks, this.#n) !== this.#opts.id) {
      throw new DsmProtocolError(
        `node ${from} sent a request for block ${msg.block} of region '${r.buf.name}' to node ${this.#opts.id}, which is not its home`,
      );
    }
  }

  #checkData(r: RegionRuntime, msg: Message, from: number): Uint8Array {
    if (msg.data === null || msg.data.length !== r.buf.blockSize) {
      throw new DsmProtocolError(
        `node ${from} sent ${msg.data?.length ?? 0} data bytes for a ${r.buf.blockSize}-byte block`,
      );
    }
    return msg.data;
  }

  // ---- cache controller ----------------------------------------------------

  #setState(r: RegionRuntime, block: number, s: number): void {
    const first = block * r.linesPerBlock;
    r.state.fill(s, first, first + r.linesPerBlock);
  }

  #bump(r: RegionRuntime, block: number): void {
    Atomics.add(r.gens, block, 1);
    Atomics.notify(r.gens, block);
  }

  #home(r: RegionRuntime, block: number): number {
    return homeOf(r.home, block, r.blocks, this.#n);
  }

  /** Copies incoming data except the bytes where stores were recorded. */
  #merge(r: RegionRuntime, block: number, incoming: Uint8Array): void {
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

  /** The block is exclusive here now: its recorded stores are performed. */
  #completeExclusive(r: RegionRuntime, block: number): void {
    const bs = r.buf.blockSize;
    const writers = r.writers[block] ?? 0;
    if (writers !== 0) {
      r.mask.fill(0, block * bs, (block + 1) * bs);
      r.writers[block] = 0;
      for (let w = 0; w < this.#opts.workers; w++) {
        if ((writers & (1 << w)) === 0) continue;
        const idx = w * CTRL_STRIDE + Ctrl.PENDING;
        Atomics.sub(this.#ctrl, idx, 1);
        Atomics.notify(this.#ctrl, idx);
      }
    }
    this.#setState(r, block, State.EXCLUSIVE);
  }

  #onData(r: RegionRuntime, msg: Message, from: number): void {
    const data = this.#checkData(r, msg, from);
    const block = msg.block;
    if (from !== this.#home(r, block)) {
      throw new DsmProtocolError(`node ${from} sent data for block ${block} it is not home of`);
    }
    const line = block * r.linesPerBlock;
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
        this.#completeExclusive(r, block);
      } else if ((r.writers[block] ?? 0) !== 0) {
        // Stores were recorded while the read was outstanding: now ask for exclusivity.
        this.#setState(r, block, State.PENDING_UPGRADE);
        this.#stats.upgrades++;
        this.#send(from, MsgType.UPGRADE, msg.region, block, this.#opts.id, 0, null);
      } else {
        this.#setState(r, block, State.SHARED);
      }
    } finally {
      unlockBlock(r.locks, block);
    }
    this.#bump(r, block);
  }

  #onGrant(r: RegionRuntime, msg: Message, from: number): void {
    const block = msg.block;
    lockBlock(r.locks, block);
    try {
      if (
        r.state[block * r.linesPerBlock] !== State.PENDING_UPGRADE || from !== this.#home(r, block)
      ) {
        throw new DsmProtocolError(
          `node ${from} granted an upgrade of block ${block} not asked for`,
        );
      }
      this.#completeExclusive(r, block);
    } finally {
      unlockBlock(r.locks, block);
    }
    this.#bump(r, block);
  }

  #onInvalidate(r: RegionRuntime, msg: Message, from: number): void {
    const block = msg.block;
    lockBlock(r.locks, block);
    const s = r.state[block * r.linesPerBlock];
    if (s === State.SHARED) this.#setState(r, block, State.INVALID);
    else if (s === State.PENDING_UPGRADE) this.#setState(r, block, State.PENDING_READX);
    unlockBlock(r.locks, block);
    this.#bump(r, block);
    this.#send(from, MsgType.ACK, msg.region, block, 0, 0, null);
  }

  #onFetch(r: RegionRuntime, msg: Message, from: number): void {
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
      if (this.#failed !== null) return;
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
    const workers = this.#opts.workers;
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

  // ---- workers -------------------------------------------------------------

  #wake(w: number): void {
    if (w >= this.#opts.workers) {
      throw new DsmProtocolError(`wake for worker ${w}, which does not exist`);
    }
    const idx = w * CTRL_STRIDE + Ctrl.WAKE;
    Atomics.store(this.#ctrl, idx, 1);
    Atomics.notify(this.#ctrl, idx);
  }

  /** Drains the workers' miss rings whenever a worker rings the doorbell. */
  async #pollRequests(): Promise<void> {
    while (this.#polling) {
      const seen = Atomics.load(this.#bell, NodeCtrl.DOORBELL);
      if (this.#failed === null) {
        try {
          this.#drainRings();
        } catch (err) {
          this.#fail(err instanceof Error ? err : new Error(String(err)));
        }
      }
      const wait = Atomics.waitAsync(this.#bell, NodeCtrl.DOORBELL, seen);
      if (wait.async) await wait.value;
    }
  }

  #drainRings(): void {
    const rings = this.#rings;
    for (let w = 0; w < this.#opts.workers; w++) {
      const base = w * RING_STRIDE;
      let head = Atomics.load(rings, base + RING_HEAD);
      const tail = Atomics.load(rings, base + RING_TAIL);
      if (head === tail) continue;
      while (head !== tail) {
        const e = base + 2 + (head % RING_ENTRIES) * RING_ENTRY_INTS;
        this.#miss(w, rings[e] ?? 0, rings[e + 1] ?? 0, rings[e + 2] ?? 0);
        head++;
      }
      Atomics.store(rings, base + RING_HEAD, head);
      Atomics.notify(rings, base + RING_HEAD);
    }
  }

  #miss(w: number, kind: number, region: number, block: number): void {
    const r = this.#regions[region];
    if (r === undefined || block >= r.blocks) {
      throw new DsmError(
        `worker ${w} queued a miss for region ${region} block ${block}, which does not exist`,
      );
    }
    const type = kind === Request.READ
      ? MsgType.READ
      : kind === Request.READX
      ? MsgType.READX
      : MsgType.UPGRADE;
    if (type === MsgType.READ) this.#stats.readMisses++;
    else if (type === MsgType.READX) this.#stats.writeMisses++;
    else this.#stats.upgrades++;
    this.#send(this.#home(r, block), type, region, block, this.#opts.id, 0, null);
  }

  #fromWorker(w: number, m: WorkerMessage): void {
    if (this.#failed !== null) {
      if (m.op === "error") this.#settle?.reject(this.#failed);
      return;
    }
    switch (m.op) {
      case "ready":
        // The clock starts when the last worker has loaded the program.
        this.#startedAt = performance.now();
        return;
      case "lock":
        this.#stats.locks++;
        this.#send(m.id % this.#n, MsgType.LOCK_ACQUIRE, 0, m.id, this.#opts.id, w, null);
        return;
      case "unlock":
        this.#send(m.id % this.#n, MsgType.LOCK_RELEASE, 0, m.id, this.#opts.id, w, null);
        return;
      case "barrier":
        this.#barrierArrived++;
        if (this.#barrierArrived === this.#opts.workers) {
          this.#barrierArrived = 0;
          this.#send(0, MsgType.BARRIER_ENTER, 0, this.#barrierGen, this.#opts.id, 0, null);
        }
        return;
      case "result":
        this.#result = m.value;
        return;
      case "done":
        this.#done++;
        if (this.#done === this.#opts.workers) this.#leave();
        return;
      case "error": {
        const err = m.name === "DsmNodeDeathError"
          ? new DsmNodeDeathError(m.message)
          : new DsmError(`node ${this.#opts.id} worker ${w}: ${m.name}: ${m.message}`);
        this.#fail(err);
        return;
      }
    }
  }

  // ---- locks and barriers --------------------------------------------------

  #onBarrierGo(gen: number): void {
    if (gen !== this.#barrierGen) {
      throw new DsmProtocolError(`barrier ${gen} completed out of order`);
    }
    this.#barrierGen++;
    this.#stats.barriers++;
    this.#lastBarrierAt = performance.now();
    for (let w = 0; w < this.#opts.workers; w++) this.#wake(w);
  }

  // ---- leaving -------------------------------------------------------------

  async #leave(): Promise<void> {
    const stats: NodeStats = {
      node: this.#opts.id,
      messages: this.#mesh.stats.messages,
      bytes: this.#mesh.stats.bytes,
      ...this.#stats,
      elapsedMs: Math.round((this.#lastBarrierAt - this.#startedAt) * 1000) / 1000,
    };
    for (let n = 0; n < this.#n; n++) {
      if (n !== this.#opts.id) {
        this.#mesh.send(n, { type: MsgType.BYE, region: 0, block: 0, a: 0, b: 0, data: null });
      }
    }
    await this.#mesh.drain();
    const deadline = Date.now() + 10_000;
    for (;;) {
      let all = true;
      for (let n = 0; n < this.#n; n++) {
        if (n !== this.#opts.id && !this.#mesh.saidBye(n)) all = false;
      }
      if (all || this.#failed !== null || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    if (this.#failed !== null) return;
    const report: NodeReport = { stats };
    if (this.#opts.id === 0 && this.#result !== undefined) report.result = this.#result;
    this.#settle?.resolve(report);
  }
}
