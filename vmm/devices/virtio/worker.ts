/**
 * The I/O Worker of one virtio device: the only place its back end lives.
 * Its loop waits on the control eventfd, each queue's notify eventfd (KVM
 * signals them through ioeventfds) and whatever fds the back end watches,
 * and runs the transport's state machine: activation at DRIVER_OK (queue
 * areas checked against RAM), reset (drain, then clear; the vCPU that wrote
 * 0 to Status waits for it), quiesce and resume (crosvm's sleep/wake).
 *
 * Waiting: while the back end has asynchronous work outstanding (an iSCSI
 * request, a call from the main thread), the loop waits on Deno's FFI
 * thread pool (`nonblocking`), so the event loop keeps running; otherwise it
 * blocks its own thread in `poll`, which wakes in microseconds rather than
 * the tens of microseconds a thread-pool round trip costs. Messages from the
 * main thread come with a control-eventfd signal, after which the loop
 * yields to the event loop so they are delivered.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { openShim } from "../../../native/ffi.ts";
import { FdWaiter, signalEventFd } from "../../../native/io_ffi.ts";
import type { BackendFactory, VirtioBackend, VirtioBackendContext } from "./backend.ts";
import { GuestRam } from "./guest_ram.ts";
import {
  Backend,
  configOffset,
  Ctrl,
  Feature,
  hasFeature,
  Interrupt,
  Q,
  queueWord,
  Status,
  W,
} from "./layout.ts";
import { resetTransportState } from "./mmio.ts";
import { checkQueueConfig, SplitQueue } from "./queue.ts";
import type { IoWorkerInit, IoWorkerMessage, IoWorkerRequest } from "./worker_protocol.ts";

/** Longest one blocking wait lasts before the loop re-checks its flags. */
const SYNC_WAIT_MS = 250;
/** Longest one thread-pool wait lasts. */
const ASYNC_WAIT_MS = 250;

function post(msg: IoWorkerMessage): void {
  self.postMessage(msg);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

class IoLoop implements VirtioBackendContext {
  readonly name: string;
  readonly ram: GuestRam;
  readonly state: Int32Array;
  readonly config: Uint8Array;
  queues: (SplitQueue | null)[] = [];
  backend: VirtioBackend | undefined;
  readonly #init: IoWorkerInit;
  readonly #watched = new Map<number, () => void>();
  #waiter: FdWaiter | undefined;
  #async = 0;
  #featLo = 0;
  #featHi = 0;
  #draining = false;
  #calls: IoWorkerRequest[] = [];
  #received = 0;
  #quiesceHook: Promise<void> | undefined;

  constructor(init: IoWorkerInit) {
    this.#init = init;
    this.name = init.name;
    this.ram = new GuestRam(init.regions);
    this.state = new Int32Array(init.state);
    this.config = new Uint8Array(init.state, configOffset(), this.state[W.CONFIG_BYTES] ?? 0);
  }

  // ---- context for the back end ----

  negotiated(bit: number): boolean {
    return hasFeature(this.#featLo, this.#featHi, bit);
  }

  canTake(): boolean {
    const w = this.state;
    return Atomics.load(w, W.BACKEND) === Backend.ACTIVE && Atomics.load(w, W.QUIESCED) === 0 &&
      Atomics.load(w, W.RESET_PENDING) === 0;
  }

  started(n = 1): void {
    Atomics.add(this.state, W.INFLIGHT, n);
  }

  completed(n = 1): void {
    const w = this.state;
    Atomics.add(w, W.COMPLETED, n);
    if (Atomics.sub(w, W.INFLIGHT, n) === n && this.#draining) this.#wake();
  }

  interruptIfNeeded(q: number): void {
    const queue = this.queues[q];
    if (queue === null || queue === undefined || !queue.shouldInterrupt()) return;
    this.#interrupt(Interrupt.USED_BUFFER);
  }

  #interrupt(bit: number): void {
    Atomics.or(this.state, W.INTERRUPT_STATUS, bit);
    Atomics.add(this.state, W.INTERRUPTS, 1);
    signalEventFd(this.#init.irqFd);
  }

  updateConfig(write: (config: Uint8Array) => void): void {
    const w = this.state;
    Atomics.store(w, W.CONFIG_BUSY, 1);
    try {
      write(this.config);
      Atomics.add(w, W.CONFIG_GENERATION, 1);
    } finally {
      Atomics.store(w, W.CONFIG_BUSY, 0);
      Atomics.notify(w, W.CONFIG_BUSY);
    }
    this.#interrupt(Interrupt.CONFIG_CHANGE);
  }

  configChanged(): void {
    Atomics.add(this.state, W.CONFIG_GENERATION, 1);
    this.#interrupt(Interrupt.CONFIG_CHANGE);
  }

  fail(reason: string): void {
    const w = this.state;
    Atomics.add(w, W.GUEST_ERRORS, 1);
    if (Atomics.load(w, W.BACKEND) === Backend.BROKEN) return;
    Atomics.store(w, W.BACKEND, Backend.BROKEN);
    // InterruptStatus first: a driver that sees DEVICE_NEEDS_RESET also sees why it was interrupted.
    Atomics.or(w, W.INTERRUPT_STATUS, Interrupt.CONFIG_CHANGE);
    Atomics.or(w, W.STATUS, Status.DEVICE_NEEDS_RESET);
    post({ type: "guest-error", reason });
    this.#interrupt(Interrupt.CONFIG_CHANGE);
  }

  watch(fd: number, onReady: () => void): void {
    this.#watched.set(fd, onReady);
    this.#waiter = undefined;
  }

  unwatch(fd: number): void {
    this.#watched.delete(fd);
    this.#waiter = undefined;
  }

  asyncStarted(): void {
    this.#async++;
  }

  asyncEnded(): void {
    this.#async--;
  }

  /** Wakes a blocking wait (a drain finished on a promise, not an fd). */
  #wake(): void {
    signalEventFd(this.#init.ctrlFd);
  }

  // ---- the loop ----

  #buildWaiter(): FdWaiter {
    const fds = [this.#init.ctrlFd, ...this.#init.notifyFds, ...this.#watched.keys()];
    const drain = fds.map((_, i) => i <= this.#init.notifyFds.length);
    return new FdWaiter(fds, drain);
  }

  onMessage(msg: IoWorkerRequest): void {
    this.#received++;
    this.#calls.push(msg);
  }

  async run(): Promise<void> {
    const notifyCount = this.#init.notifyFds.length;
    for (;;) {
      const ctrl = Atomics.exchange(this.state, W.CTRL, 0);
      if ((ctrl & Ctrl.SHUTDOWN) !== 0) break;
      // Posted calls not delivered yet: let the event loop run (a blocking wait would starve it).
      while (Atomics.load(this.state, W.MESSAGES) !== this.#received) {
        await new Promise((r) => setTimeout(r, 0));
      }
      if ((ctrl & Ctrl.MESSAGE) !== 0 || this.#calls.length > 0) this.#runCalls();
      if ((ctrl & Ctrl.RESET) !== 0 || Atomics.load(this.state, W.RESET_PENDING) !== 0) {
        await this.#reset();
      }
      if ((ctrl & Ctrl.ACTIVATE) !== 0) this.#activate();
      if ((ctrl & Ctrl.QUIESCE) !== 0 || Atomics.load(this.state, W.QUIESCED) === 1) {
        await this.#quiesce();
      }
      if ((ctrl & (Ctrl.RESUME | Ctrl.ACTIVATE)) !== 0) this.#processAll();

      // Control bits raised while a drain consumed their eventfd signal.
      if (Atomics.load(this.state, W.CTRL) !== 0) continue;
      this.#waiter ??= this.#buildWaiter();
      const blocking = this.#async === 0 && this.#quiesceHook === undefined;
      const bits = blocking
        ? this.#waiter.waitSync(SYNC_WAIT_MS)
        : await this.#waiter.wait(ASYNC_WAIT_MS);
      if (bits === 0) continue;
      if (this.canTake()) {
        for (let q = 0; q < notifyCount; q++) {
          if ((bits & (1 << (q + 1))) !== 0) this.backend?.process(q);
        }
      }
      let i = notifyCount + 1;
      for (const onReady of this.#watched.values()) {
        if (i < 32 && (bits & (1 << i)) !== 0) onReady();
        i++;
      }
      this.#busyPoll();
    }
  }

  /** Keeps taking work for up to pollUs after the last work found, before blocking again. */
  #busyPoll(): void {
    const poll = this.backend?.poll;
    const windowMs = this.#init.pollUs / 1000;
    if (poll === undefined || windowMs <= 0 || !this.canTake()) return;
    const b = this.backend;
    let last = performance.now();
    for (;;) {
      if (Atomics.load(this.state, W.CTRL) !== 0) break;
      if (poll.call(b)) last = performance.now();
      else if (performance.now() - last > windowMs) break;
    }
    b?.idle?.();
  }

  #runCalls(): void {
    const calls = this.#calls;
    this.#calls = [];
    for (const msg of calls) {
      if (msg.type !== "call") continue;
      const b = this.backend;
      if (b?.call === undefined) {
        post({ type: "reply-error", id: msg.id, error: `device '${this.name}' takes no calls` });
        continue;
      }
      this.asyncStarted();
      b.call(msg.method, msg.args).then(
        (value) => post({ type: "reply", id: msg.id, value }),
        (err: unknown) => post({ type: "reply-error", id: msg.id, error: errorText(err) }),
      ).finally(() => {
        this.asyncEnded();
        this.#wake();
      });
    }
  }

  #processAll(): void {
    if (!this.canTake()) return;
    for (let q = 0; q < this.queues.length; q++) {
      if (this.queues[q] !== null) this.backend?.process(q);
    }
  }

  #activate(): void {
    const w = this.state;
    if (Atomics.load(w, W.BACKEND) !== Backend.IDLE) return;
    const status = Atomics.load(w, W.STATUS);
    if ((status & Status.DRIVER_OK) === 0) return; // reset meanwhile
    if ((status & Status.FEATURES_OK) === 0) {
      return this.fail("DRIVER_OK without FEATURES_OK");
    }
    this.#featLo = w[W.DRIVER_FEATURES_LO] ?? 0;
    this.#featHi = w[W.DRIVER_FEATURES_HI] ?? 0;
    const eventIdx = this.negotiated(Feature.EVENT_IDX);
    const indirect = this.negotiated(Feature.INDIRECT_DESC);
    const queues: (SplitQueue | null)[] = [];
    const n = w[W.NUM_QUEUES] ?? 0;
    for (let q = 0; q < n; q++) {
      if ((w[queueWord(q, Q.READY)] ?? 0) === 0) {
        queues.push(null);
        continue;
      }
      const bad = checkQueueConfig(this.ram, w, q);
      if (bad !== null) return this.fail(bad);
      queues.push(new SplitQueue(this.ram, w, q, eventIdx, indirect));
    }
    this.queues = queues;
    Atomics.store(w, W.BACKEND, Backend.ACTIVE);
    this.backend?.activate();
  }

  /** Waits until nothing is in flight (completions arrive through fds or promises). */
  async #drain(): Promise<void> {
    this.#draining = true;
    try {
      while (Atomics.load(this.state, W.INFLIGHT) > 0) {
        this.#waiter ??= this.#buildWaiter();
        // Only the back end's own fds (completions) matter while draining; notifies wait.
        const bits = this.#async === 0
          ? this.#waiter.waitSync(SYNC_WAIT_MS)
          : await this.#waiter.wait(ASYNC_WAIT_MS);
        let i = this.#init.notifyFds.length + 1;
        for (const onReady of this.#watched.values()) {
          if (i < 32 && (bits & (1 << i)) !== 0) onReady();
          i++;
        }
      }
    } finally {
      this.#draining = false;
    }
  }

  async #quiesce(): Promise<void> {
    const w = this.state;
    if (Atomics.load(w, W.QUIESCED) !== 1) return;
    await this.#drain();
    const hook = this.backend?.quiesced?.();
    if (hook instanceof Promise) {
      this.#quiesceHook = hook;
      try {
        await hook;
      } finally {
        this.#quiesceHook = undefined;
      }
    }
    if (Atomics.compareExchange(w, W.QUIESCED, 1, 2) === 1) Atomics.notify(w, W.QUIESCED);
  }

  async #reset(): Promise<void> {
    const w = this.state;
    await this.#drain();
    this.backend?.reset();
    this.queues = [];
    this.#featLo = 0;
    this.#featHi = 0;
    resetTransportState(w); // clears RESET_PENDING, then STATUS
    Atomics.notify(w, W.RESET_PENDING);
  }
}

async function main(init: IoWorkerInit): Promise<void> {
  openShim(init.libPath);
  const loop = new IoLoop(init);
  self.onmessage = (e: MessageEvent<IoWorkerRequest>) => loop.onMessage(e.data);
  const mod: { createBackend?: unknown } = await import(init.backendModule);
  if (typeof mod.createBackend !== "function") {
    throw new Error(
      `back-end module ${init.backendModule} does not export createBackend(config, ctx)`,
    );
  }
  const factory = mod.createBackend as BackendFactory;
  loop.backend = await factory(init.backendConfig, loop);
  post({ type: "ready" });
  try {
    await loop.run();
  } finally {
    await loop.backend.close();
  }
  post({ type: "closed" });
}

self.onmessage = (e: MessageEvent<IoWorkerRequest>): void => {
  const init = e.data;
  if (init.type !== "init") return;
  self.onmessage = null;
  main(init).catch((err: unknown) => post({ type: "failed", error: errorText(err) }));
};
