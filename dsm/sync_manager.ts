/**
 * The managers of cluster-wide synchronization: lock `id` is managed by node
 * `id mod N` (a holder and a FIFO queue of waiting workers); barriers by node 0
 * (a count of nodes whose workers all arrived, per barrier generation).
 *
 * @module
 */

import { DsmProtocolError } from "./errors.ts";
import { MsgType } from "./frames.ts";

/** Sends a synchronization message: to, type, lock id or generation, a, b. */
export type SyncSendFn = (to: number, type: number, id: number, a: number, b: number) => void;

/** Worker slots per node in a waiter key (`node * WORKER_SLOTS + worker`). */
const WORKER_SLOTS = 64;

/** Lock and barrier manager state of one node. */
export class SyncManager {
  readonly #nodes: number;
  readonly #send: SyncSendFn;
  readonly #holder = new Map<number, number>();
  readonly #queue = new Map<number, number[]>();
  readonly #arrived = new Map<number, number>();

  /** Creates the managers for a cluster of `nodes` nodes. */
  constructor(nodes: number, send: SyncSendFn) {
    this.#nodes = nodes;
    this.#send = send;
  }

  /** Worker `worker` of node `node` asks for lock `id`: grant now or queue. */
  acquire(id: number, node: number, worker: number): void {
    if (worker >= WORKER_SLOTS) {
      throw new DsmProtocolError(`node ${node} asked for a lock for worker ${worker}`);
    }
    const who = node * WORKER_SLOTS + worker;
    if (!this.#holder.has(id)) {
      this.#holder.set(id, who);
      this.#send(node, MsgType.LOCK_GRANT, id, node, worker);
      return;
    }
    const q = this.#queue.get(id);
    if (q === undefined) this.#queue.set(id, [who]);
    else q.push(who);
  }

  /** Node `node` releases lock `id`: hand it to the next waiter, if any. */
  release(id: number, node: number): void {
    const holder = this.#holder.get(id);
    if (holder === undefined || Math.floor(holder / WORKER_SLOTS) !== node) {
      throw new DsmProtocolError(`node ${node} released lock ${id} it does not hold`);
    }
    const next = this.#queue.get(id)?.shift();
    if (next === undefined) {
      this.#holder.delete(id);
      this.#queue.delete(id);
      return;
    }
    this.#holder.set(id, next);
    const to = Math.floor(next / WORKER_SLOTS);
    this.#send(to, MsgType.LOCK_GRANT, id, to, next % WORKER_SLOTS);
  }

  /** A node's workers all reached barrier generation `gen`; the last node releases everyone. */
  enterBarrier(gen: number): void {
    const c = (this.#arrived.get(gen) ?? 0) + 1;
    if (c < this.#nodes) {
      this.#arrived.set(gen, c);
      return;
    }
    this.#arrived.delete(gen);
    for (let n = 0; n < this.#nodes; n++) this.#send(n, MsgType.BARRIER_GO, gen, 0, 0);
  }
}
