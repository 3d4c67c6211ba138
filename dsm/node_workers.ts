/**
 * A node's workers, from the protocol thread's side: the shared control
 * words and miss rings, the Workers themselves, and the doorbell loop that
 * drains the rings. Workers take every cache hit inline and queue a miss on
 * their ring; the node forwards it to the block's home and later wakes the
 * worker through its control word.
 *
 * @module
 */

import { DsmError, DsmProtocolError } from "./errors.ts";
import {
  Ctrl,
  CTRL_STRIDE,
  NODE_CTRL_BYTES,
  NODE_CTRL_MESSAGE_OFFSET,
  NodeCtrl,
  RING_ENTRIES,
  RING_ENTRY_INTS,
  RING_HEAD,
  RING_STRIDE,
  RING_TAIL,
} from "./layout.ts";
import type { ChannelAddr } from "./transport.ts";
import type { WorkerInit, WorkerMessage } from "./worker_protocol.ts";

/** What the node does with its workers' requests. */
export interface WorkerEvents {
  /** Worker `w` queued a miss of `kind` (`Request`) on `block` of `region`. */
  miss(w: number, kind: number, region: number, block: number): void;
  /** Worker `w` posted `m`. */
  message(w: number, m: WorkerMessage): void;
  /** A worker crashed, or handling its request threw. */
  error(err: Error): void;
}

/** The part of {@link WorkerInit} that is the same for every worker of a node. */
export type WorkerSetup =
  & Omit<WorkerInit, "ctrl" | "rings" | "nodeCtrl" | "workerId" | "workers" | "channels">
  & {
    /** Each worker's request channels, by worker then node. */
    channels: (ChannelAddr | null)[][];
  };

/** The workers of one node and the shared memory they talk to it through. */
export class NodeWorkers {
  /** Per-worker control words (`Ctrl`, `CTRL_STRIDE` apart). */
  readonly ctrl: Int32Array;
  readonly #count: number;
  readonly #nodeCtrl: SharedArrayBuffer = new SharedArrayBuffer(NODE_CTRL_BYTES);
  readonly #bell: Int32Array = new Int32Array(this.#nodeCtrl);
  readonly #rings: Int32Array;
  readonly #events: WorkerEvents;
  readonly #workers: Worker[] = [];
  #polling = false;
  #poller: Promise<void> = Promise.resolve();
  #failed = false;

  /** Shared memory for `count` workers; {@link start} spawns them. */
  constructor(count: number, events: WorkerEvents) {
    this.#count = count;
    this.#events = events;
    this.ctrl = new Int32Array(new SharedArrayBuffer(count * CTRL_STRIDE * 4));
    this.#rings = new Int32Array(new SharedArrayBuffer(count * RING_STRIDE * 4));
  }

  /** Spawns the workers with `setup` and starts draining their miss rings. */
  start(setup: WorkerSetup): void {
    for (let w = 0; w < this.#count; w++) this.#spawn(w, setup);
    this.#polling = true;
    this.#poller = this.#poll();
  }

  #spawn(w: number, setup: WorkerSetup): void {
    const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
    worker.onmessage = (ev: MessageEvent<WorkerMessage>) => {
      try {
        this.#events.message(w, ev.data);
      } catch (err) {
        this.#events.error(err instanceof Error ? err : new Error(String(err)));
      }
    };
    worker.onerror = (ev: ErrorEvent) => {
      ev.preventDefault();
      this.#events.error(new DsmError(`node ${setup.nodeId} worker ${w} crashed: ${ev.message}`));
    };
    const init: WorkerInit = {
      ...setup,
      ctrl: this.ctrl.buffer as SharedArrayBuffer,
      rings: this.#rings.buffer as SharedArrayBuffer,
      nodeCtrl: this.#nodeCtrl,
      workerId: w,
      workers: this.#count,
      channels: setup.channels[w] ?? [],
    };
    worker.postMessage(init);
    this.#workers.push(worker);
  }

  /** Requests of `slot` (`Ctrl.SENT_*`) the workers wrote on their own channels. */
  sent(slot: number): number {
    let n = 0;
    for (let w = 0; w < this.#count; w++) n += Atomics.load(this.ctrl, w * CTRL_STRIDE + slot);
    return n;
  }

  /** Wakes worker `w` from its wait for a lock or barrier. */
  wake(w: number): void {
    if (w >= this.#count) {
      throw new DsmProtocolError(`wake for worker ${w}, which does not exist`);
    }
    const idx = w * CTRL_STRIDE + Ctrl.WAKE;
    Atomics.store(this.ctrl, idx, 1);
    Atomics.notify(this.ctrl, idx);
  }

  /** Wakes every worker. */
  wakeAll(): void {
    for (let w = 0; w < this.#count; w++) this.wake(w);
  }

  /**
   * Marks the node failed with `message` (workers throw it at their next
   * access or wait) and stops forwarding misses; {@link interruptAll} then
   * wakes the workers that wait.
   */
  fail(message: string): void {
    this.#failed = true;
    const bytes = new TextEncoder().encode(message).subarray(
      0,
      NODE_CTRL_BYTES - NODE_CTRL_MESSAGE_OFFSET,
    );
    new Uint8Array(this.#nodeCtrl).set(bytes, NODE_CTRL_MESSAGE_OFFSET);
    Atomics.store(this.#bell, NodeCtrl.MESSAGE_LENGTH, bytes.length);
    Atomics.store(this.#bell, NodeCtrl.FAILED, 1);
  }

  /** Wakes every worker from any wait, to find the node failed. */
  interruptAll(): void {
    for (let w = 0; w < this.#count; w++) {
      const base = w * CTRL_STRIDE;
      Atomics.store(this.ctrl, base + Ctrl.WAKE, 2);
      Atomics.notify(this.ctrl, base + Ctrl.WAKE);
      Atomics.notify(this.ctrl, base + Ctrl.PENDING);
    }
  }

  /** Stops the doorbell loop and terminates the workers. */
  async stop(): Promise<void> {
    this.#polling = false;
    Atomics.add(this.#bell, NodeCtrl.DOORBELL, 1);
    Atomics.notify(this.#bell, NodeCtrl.DOORBELL);
    await this.#poller;
    for (const w of this.#workers) w.terminate();
  }

  /** Drains the workers' miss rings whenever a worker rings the doorbell. */
  async #poll(): Promise<void> {
    while (this.#polling) {
      const seen = Atomics.load(this.#bell, NodeCtrl.DOORBELL);
      if (!this.#failed) {
        try {
          this.#drainRings();
        } catch (err) {
          this.#events.error(err instanceof Error ? err : new Error(String(err)));
        }
      }
      const wait = Atomics.waitAsync(this.#bell, NodeCtrl.DOORBELL, seen);
      if (wait.async) await wait.value;
    }
  }

  #drainRings(): void {
    const rings = this.#rings;
    for (let w = 0; w < this.#count; w++) {
      const base = w * RING_STRIDE;
      let head = Atomics.load(rings, base + RING_HEAD);
      const tail = Atomics.load(rings, base + RING_TAIL);
      if (head === tail) continue;
      while (head !== tail) {
        const e = base + 2 + (head % RING_ENTRIES) * RING_ENTRY_INTS;
        this.#events.miss(w, rings[e] ?? 0, rings[e + 1] ?? 0, rings[e + 2] ?? 0);
        head++;
      }
      Atomics.store(rings, base + RING_HEAD, head);
      Atomics.notify(rings, base + RING_HEAD);
    }
  }
}
