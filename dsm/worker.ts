/**
 * Worker entry: runs a program's code against the node's shared buffers. Loads
 * and stores go through {@link Region}; synchronization waits block only this
 * worker (`Atomics.wait`), never the node's protocol thread.
 *
 * @module
 */

import { DsmError, DsmNodeDeathError } from "./errors.ts";
import { encodeFrame, HEADER_SIZE, LENGTH_SIZE } from "./frames.ts";
import {
  Ctrl,
  CTRL_STRIDE,
  homeOf,
  type HomePolicy,
  NODE_CTRL_MESSAGE_OFFSET,
  NodeCtrl,
  RING_ENTRIES,
  RING_ENTRY_INTS,
  RING_HEAD,
  RING_STRIDE,
  RING_TAIL,
} from "./layout.ts";
import type { DsmContext, DsmProgram, Params } from "./program.ts";
import { Region, type RegionHost, Request } from "./region.ts";
import { findSocket, sendAll } from "./socket_ffi.ts";
import type { WorkerInit, WorkerMessage } from "./worker_protocol.ts";

const WAIT_SLICE_MS = 50;

interface WorkerScope {
  postMessage(msg: WorkerMessage): void;
  onmessage: ((ev: MessageEvent<WorkerInit>) => void) | null;
}
const scope = globalThis as unknown as WorkerScope;

/** The context and region host of one worker. */
class WorkerContext implements DsmContext, RegionHost {
  readonly nodeId: number;
  readonly nodeCount: number;
  readonly workerId: number;
  readonly workersPerNode: number;
  readonly rank: number;
  readonly size: number;
  readonly params: Readonly<Params>;
  readonly worker: number;
  readonly blockingStores: boolean;
  readonly #ctrl: Int32Array;
  readonly #base: number;
  readonly #nodeCtrl: Int32Array;
  readonly #rings: Int32Array;
  readonly #ring: number;
  readonly #nodeBytes: Uint8Array;
  readonly #regions: Map<string, Region> = new Map();
  readonly #homes: HomePolicy[];
  readonly #blocks: number[];
  /** This worker's request channel (socket fd) to each node; -1: ring the node instead. */
  readonly #fds: number[];
  /** One request frame, rewritten for every request sent on a channel. */
  readonly #frame: Uint8Array = encodeFrame({
    type: 1,
    region: 0,
    block: 0,
    a: 0,
    b: 0,
    data: null,
  });
  readonly #frameView: DataView = new DataView(this.#frame.buffer);

  constructor(init: WorkerInit) {
    this.nodeId = init.nodeId;
    this.nodeCount = init.nodeCount;
    this.workerId = init.workerId;
    this.workersPerNode = init.workers;
    this.rank = init.nodeId * init.workers + init.workerId;
    this.size = init.nodeCount * init.workers;
    this.params = init.params;
    this.worker = init.workerId;
    this.blockingStores = init.blockingStores;
    this.#ctrl = new Int32Array(init.ctrl);
    this.#base = init.workerId * CTRL_STRIDE;
    this.#nodeCtrl = new Int32Array(init.nodeCtrl);
    this.#rings = new Int32Array(init.rings);
    this.#ring = init.workerId * RING_STRIDE;
    this.#nodeBytes = new Uint8Array(init.nodeCtrl);
    init.regions.forEach((buf, i) => this.#regions.set(buf.name, new Region(i, buf, this)));
    this.#homes = init.homes;
    this.#blocks = init.regions.map((r) => r.size / r.blockSize);
    this.#fds = Array.from({ length: init.nodeCount }, (_, n) => {
      const c = init.channels[n];
      return c === null || c === undefined ? -1 : findSocket(c.localPort, c.remotePort);
    });
  }

  region(name: string): Region {
    const r = this.#regions.get(name);
    if (r === undefined) {
      throw new DsmError(
        `no shared region '${name}'; the program declares: ${[...this.#regions.keys()].join(", ")}`,
      );
    }
    return r;
  }

  request(kind: number, region: number, block: number): void {
    // A request for another node's block goes straight onto this worker's
    // own connection to that node: no wake-up of the protocol thread on the
    // way out. The answer comes back on the node link (one ordered stream
    // from the home, so no invalidation can overtake it), through the node.
    const home = homeOf(
      this.#homes[region] ?? "cyclic",
      block,
      this.#blocks[region] ?? 1,
      this.nodeCount,
    );
    const fd = this.#fds[home] ?? -1;
    if (fd >= 0) {
      const v = this.#frameView;
      v.setUint8(LENGTH_SIZE, kind);
      v.setUint16(LENGTH_SIZE + 2, region, true);
      v.setUint32(LENGTH_SIZE + 4, block, true);
      v.setUint32(LENGTH_SIZE + 8, this.nodeId, true);
      if (sendAll(fd, this.#frame.subarray(0, LENGTH_SIZE + HEADER_SIZE))) {
        const slot = kind === Request.READ
          ? Ctrl.SENT_READ
          : kind === Request.READX
          ? Ctrl.SENT_READX
          : Ctrl.SENT_UPGRADE;
        Atomics.add(this.#ctrl, this.#base + slot, 1);
        return;
      }
      // A broken channel: the node link reports why; the ring still works meanwhile.
      this.#fds[home] = -1;
    }
    // A shared ring and a doorbell rather than postMessage: no serialization,
    // and the protocol thread drains every queued request per wake-up.
    const rings = this.#rings;
    const base = this.#ring;
    const tail = Atomics.load(rings, base + RING_TAIL);
    for (;;) {
      const head = Atomics.load(rings, base + RING_HEAD);
      if (tail - head < RING_ENTRIES) break;
      this.#checkFailed();
      Atomics.wait(rings, base + RING_HEAD, head, WAIT_SLICE_MS);
    }
    const e = base + 2 + (tail % RING_ENTRIES) * RING_ENTRY_INTS;
    rings[e] = kind;
    rings[e + 1] = region;
    rings[e + 2] = block;
    Atomics.store(rings, base + RING_TAIL, tail + 1);
    Atomics.add(this.#nodeCtrl, NodeCtrl.DOORBELL, 1);
    Atomics.notify(this.#nodeCtrl, NodeCtrl.DOORBELL);
  }

  enter(): void {
    Atomics.add(this.#ctrl, this.#base + Ctrl.EPOCH, 1);
    this.#checkFailed();
  }

  storeRecorded(): void {
    Atomics.add(this.#ctrl, this.#base + Ctrl.PENDING, 1);
  }

  #checkFailed(): void {
    if (Atomics.load(this.#nodeCtrl, NodeCtrl.FAILED) === 0) return;
    const n = Atomics.load(this.#nodeCtrl, NodeCtrl.MESSAGE_LENGTH);
    const text = new TextDecoder().decode(
      this.#nodeBytes.slice(NODE_CTRL_MESSAGE_OFFSET, NODE_CTRL_MESSAGE_OFFSET + n),
    );
    throw new DsmNodeDeathError(text.length > 0 ? text : "the cluster failed");
  }

  #idle(on: boolean): void {
    Atomics.store(this.#ctrl, this.#base + Ctrl.IDLE, on ? 1 : 0);
  }

  waitChange(gens: Int32Array, index: number, seen: number): void {
    this.#idle(true);

    try {
      while (Atomics.load(gens, index) === seen) {
        this.#checkFailed();
        Atomics.wait(gens, index, seen, WAIT_SLICE_MS);
      }
    } finally {
      this.#idle(false);
    }
  }

  waitStores(): void {
    const idx = this.#base + Ctrl.PENDING;
    this.#idle(true);
    try {
      for (;;) {
        const n = Atomics.load(this.#ctrl, idx);
        if (n === 0) return;
        this.#checkFailed();
        Atomics.wait(this.#ctrl, idx, n, WAIT_SLICE_MS);
      }
    } finally {
      this.#idle(false);
    }
  }

  /** Posts a synchronization request and blocks until the node wakes this worker. */
  #syncWait(msg: WorkerMessage): void {
    const idx = this.#base + Ctrl.WAKE;
    Atomics.store(this.#ctrl, idx, 0);
    scope.postMessage(msg);
    this.#idle(true);
    try {
      while (Atomics.load(this.#ctrl, idx) === 0) {
        this.#checkFailed();
        Atomics.wait(this.#ctrl, idx, 0, WAIT_SLICE_MS);
      }
    } finally {
      this.#idle(false);
    }
    this.#checkFailed();
  }

  lock(id: number): void {
    checkSyncId(id);
    this.enter();
    this.#syncWait({ op: "lock", id });
  }

  unlock(id: number): void {
    checkSyncId(id);
    this.enter();
    this.waitStores();
    scope.postMessage({ op: "unlock", id });
  }

  barrier(): void {
    this.enter();
    this.waitStores();
    this.#syncWait({ op: "barrier" });
  }

  fence(): void {
    this.enter();
    this.waitStores();
  }

  pendingStores(): number {
    return Atomics.load(this.#ctrl, this.#base + Ctrl.PENDING);
  }

  finish(): void {
    this.#idle(true);
  }
}

function checkSyncId(id: number): void {
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) {
    throw new DsmError(`lock id ${id} must be an integer from 0 to 2^32-1`);
  }
}

function isProgram(x: unknown): x is DsmProgram {
  if (typeof x !== "object" || x === null) return false;
  const p = x as Record<string, unknown>;
  return typeof p.run === "function" && typeof p.regions === "function";
}

async function start(init: WorkerInit): Promise<void> {
  const mod: Record<string, unknown> = await import(init.programUrl);
  const program = mod.program;
  if (!isProgram(program)) {
    throw new DsmError(`${init.programUrl} has no export 'program' with run() and regions()`);
  }
  const ctx = new WorkerContext(init);
  scope.postMessage({ op: "ready" });
  await program.run(ctx);
  ctx.barrier();
  if (ctx.rank === 0 && program.result !== undefined) {
    scope.postMessage({ op: "result", value: program.result(ctx) });
  }
  // Keep serving: other nodes may still fetch blocks while rank 0 computes the result.
  ctx.barrier();
  ctx.finish();
  scope.postMessage({ op: "done" });
}

scope.onmessage = (ev: MessageEvent<WorkerInit>) => {
  scope.onmessage = null;
  start(ev.data).catch((err: unknown) => {
    const e = err instanceof Error ? err : new Error(String(err));
    scope.postMessage({ op: "error", name: e.name, message: e.message });
  });
};
