/**
 * A DSM node: the protocol thread of one process. It owns the TCP mesh, checks
 * every message it receives, and hands it to its part: the directory of its
 * share of every region's blocks ({@link Directory}, the home side), the
 * cache of this node's copies (`BlockCache`: answers, revocations, merging
 * recorded stores into arriving exclusive copies), or the lock and barrier
 * managers (`SyncManager`). It forwards its workers' misses.
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
import { Ctrl, MAX_WORKERS } from "./layout.ts";
import { type DsmProgram, type Params, programRegions } from "./program.ts";
import { Request } from "./region.ts";
import { BlockCache, type CachedRegion, cachedRegion } from "./cache.ts";
import { Directory } from "./directory.ts";
import { NodeWorkers } from "./node_workers.ts";
import { SyncManager } from "./sync_manager.ts";
import { type Endpoint, Mesh } from "./transport.ts";
import type { ClusterAuth } from "./handshake.ts";
import type { WorkerMessage } from "./worker_protocol.ts";

/** Bytes of one request frame (length prefix and header). */
const REQUEST_BYTES = 20;

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
  /**
   * Give every worker its own connection to every other node and let it
   * write its miss requests there itself (default true); false: workers ring
   * the node thread, which forwards them on the node links.
   */
  requestChannels?: boolean;
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
  /** Miss requests the workers wrote on their own request channels (counted in the above). */
  channelRequests: number;
}

/** What a node's run returns. */
export interface NodeReport {
  /** The program's result (node 0 only, when the program defines `result`). */
  result?: unknown;
  /** This node's counters. */
  stats: NodeStats;
}

/** One DSM node; {@link DsmNode.run} runs a program to completion. */
export class DsmNode {
  readonly #opts: NodeOptions;
  readonly #n: number;
  readonly #regions: CachedRegion[];
  readonly #cache: BlockCache;
  readonly #workers: NodeWorkers;
  readonly #mesh: Mesh;
  readonly #directory: Directory;
  readonly #sync: SyncManager;
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
    const specs = programRegions(opts.program, opts.params, {
      nodes: this.#n,
      workers: opts.workers,
    });
    this.#regions = specs.map((spec) => cachedRegion(spec));
    this.#directory = new Directory(
      this.#regions.map((r) => ({ size: r.buf.size, blockSize: r.buf.blockSize })),
      (to, type, region, block, a, b, data) => this.#send(to, type, region, block, a, b, data),
    );
    this.#sync = new SyncManager(
      this.#n,
      (to, type, id, a, b) => this.#send(to, type, 0, id, a, b, null),
    );
    this.#workers = new NodeWorkers(opts.workers, {
      miss: (w, kind, region, block) => this.#miss(w, kind, region, block),
      message: (w, m) => this.#fromWorker(w, m),
      error: (err) => this.#fail(err),
    });
    this.#cache = new BlockCache(this.#regions, {
      nodeId: opts.id,
      nodes: this.#n,
      workers: opts.workers,
      ctrl: this.#workers.ctrl,
      send: (to, type, region, block, a, b, data) =>
        this.#send(to, type, region, block, a, b, data),
      failed: () => this.#failed !== null,
      onUpgrade: () => this.#stats.upgrades++,
    });
    this.#mesh = new Mesh({
      id: opts.id,
      members: opts.members,
      auth: opts.auth,
      channels: opts.requestChannels === false ? 0 : opts.workers,
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
    this.#workers.start({
      programUrl: this.#opts.programUrl,
      params: this.#opts.params,
      regions: this.#regions.map((r) => r.buf),
      homes: this.#regions.map((r) => r.home),
      channels: Array.from(
        { length: this.#opts.workers },
        (_, w) => this.#mesh.channels(w).map((c) => c ?? null),
      ),
      nodeId: this.#opts.id,
      nodeCount: this.#n,
      blockingStores: this.#opts.blockingStores,
    });
    try {
      return await finished;
    } finally {
      await this.#workers.stop();
      // Let the FAILED notices reach the peers before the connections close.
      if (this.#failed !== null) await this.#mesh.drain(500);
      this.#mesh.close();
    }
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
    // No cached copy is trusted any more: every access takes the slow path and throws.
    this.#workers.fail(err.message);
    this.#cache.invalidateAll();
    this.#workers.interruptAll();
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

  #region(msg: Message, from: number): CachedRegion {
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
        return this.#cache.onInvalidate(this.#fromHome(msg, from), msg, from);
      case MsgType.ACK: {
        const r = this.#region(msg, from);
        if (msg.b === 1) return this.#cache.onGrant(r, msg, from);
        return this.#directory.invalidationAck(msg, from);
      }
      case MsgType.DATA: {
        const r = this.#region(msg, from);
        return this.#cache.onData(r, msg, from, this.#checkData(r, msg, from));
      }
      case MsgType.FETCH:
        return this.#cache.onFetch(this.#fromHome(msg, from), msg, from);
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
        return this.#workers.wake(msg.b);
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
  #fromHome(msg: Message, from: number): CachedRegion {
    const r = this.#region(msg, from);
    if (this.#cache.home(r, msg.block) !== from) {
      throw new DsmProtocolError(
        `node ${from} sent message type ${msg.type} for block ${msg.block} of region '${r.buf.name}' but is not its home`,
      );
    }
    return r;
  }

  #checkHome(r: CachedRegion, msg: Message, from: number): void {
    if (this.#cache.home(r, msg.block) !== this.#opts.id) {
      throw new DsmProtocolError(
        `node ${from} sent a request for block ${msg.block} of region '${r.buf.name}' to node ${this.#opts.id}, which is not its home`,
      );
    }
  }

  #checkData(r: CachedRegion, msg: Message, from: number): Uint8Array {
    if (msg.data === null || msg.data.length !== r.buf.blockSize) {
      throw new DsmProtocolError(
        `node ${from} sent ${msg.data?.length ?? 0} data bytes for a ${r.buf.blockSize}-byte block`,
      );
    }
    return msg.data;
  }

  // ---- workers -------------------------------------------------------------

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
    this.#send(this.#cache.home(r, block), type, region, block, this.#opts.id, 0, null);
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
    this.#workers.wakeAll();
  }

  // ---- leaving -------------------------------------------------------------

  async #leave(): Promise<void> {
    const sent = this.#workers.sent(Ctrl.SENT_READ) + this.#workers.sent(Ctrl.SENT_READX) +
      this.#workers.sent(Ctrl.SENT_UPGRADE);
    const stats: NodeStats = {
      node: this.#opts.id,
      messages: this.#mesh.stats.messages + sent,
      bytes: this.#mesh.stats.bytes + REQUEST_BYTES * sent,
      ...this.#stats,
      readMisses: this.#stats.readMisses + this.#workers.sent(Ctrl.SENT_READ),
      writeMisses: this.#stats.writeMisses + this.#workers.sent(Ctrl.SENT_READX),
      upgrades: this.#stats.upgrades + this.#workers.sent(Ctrl.SENT_UPGRADE),
      elapsedMs: Math.round((this.#lastBarrierAt - this.#startedAt) * 1000) / 1000,
      channelRequests: sent,
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
