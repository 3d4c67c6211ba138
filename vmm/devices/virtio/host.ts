/**
 * The main-thread handle of one virtio-mmio device: creates its shared
 * state and eventfds, starts its I/O Worker (which opens the back end),
 * registers the ioeventfds (one per queue, datamatch on the queue index at
 * QueueNotify) and the irqfd (edge-triggered GSI) with the VM, and offers
 * quiesce/resume and calls on the back end.
 *
 * Quiesce and resume travel through the shared state and the control
 * eventfd, never as a message: {@link VirtioDeviceHost.quiesce} resolves
 * once the Worker has nothing in flight, and after that
 * {@link VirtioDeviceHost.quiesced} is a synchronous check, so a checkpoint's
 * pause window needs no round trip to the Worker.
 *
 * @module
 */

import { loadShim } from "../../../native/ffi.ts";
import {
  EventFd,
  registerIoeventfd,
  registerIrqfd,
  signalEventFd,
  unregisterIoeventfd,
  unregisterIrqfd,
} from "../../../native/io_ffi.ts";
import type { MemoryRegion } from "../../guest_memory.ts";
import type { MmioSlot } from "../mmio_allocator.ts";
import type { DeviceSpec } from "../spec.ts";
import { Ctrl, Interrupt, Reg, Status, W } from "./layout.ts";
import { virtioMmioSpec, VirtioMmioTransport } from "./mmio.ts";
import type { IoWorkerInit, IoWorkerMessage } from "./worker_protocol.ts";

/** Longest {@link VirtioDeviceHost.close} waits for the Worker to close its back end. */
const CLOSE_TIMEOUT_MS = 10_000;

/** A virtio device to build: its transport shape and its back end. */
export interface VirtioDeviceConfig {
  /** Device name (checkpoint key, e.g. the drive id). */
  readonly name: string;
  /** Virtio device id. */
  readonly deviceId: number;
  /** Feature bits offered (device and transport bits; VERSION_1 is added). */
  readonly features: readonly number[];
  /** Maximum size of each queue. */
  readonly queueSizes: readonly number[];
  /** Bytes of device configuration space. */
  readonly configBytes: number;
  /** URL of the module exporting `createBackend(config, ctx)`. */
  readonly backendModule: string;
  /** The back end's configuration (structured-clone-able). */
  readonly backendConfig: unknown;
  /**
   * Busy-poll window of the I/O Worker after each wake-up, in microseconds
   * (default {@link DEFAULT_POLL_US}; 0 never polls).
   */
  readonly pollUs?: number;
}

/**
 * Default busy-poll window: none; a device asks for one (virtio-blk does:
 * `BLK_POLL_US`, measured with a C guest driver). With the old TypeScript
 * bench driver a 32 µs window gave no more throughput at 32 in flight, a
 * p50 4K-read latency 2 µs lower and a p99 two to four times higher.
 */
export const DEFAULT_POLL_US = 0;

/** Raised when a device's Worker or back end fails, or a call fails. */
export class VirtioDeviceError extends Error {
  /** Creates the error for device `name`. */
  constructor(name: string, detail: string) {
    super(`virtio device '${name}': ${detail}`);
    this.name = "VirtioDeviceError";
  }
}

/** One running virtio device (main-thread side). */
export class VirtioDeviceHost {
  /** The device's MMIO window and GSI. */
  readonly slot: MmioSlot;
  /** What the device was built from. */
  readonly config: VirtioDeviceConfig;
  /** The transport spec every vCPU thread builds its register file from. */
  readonly spec: DeviceSpec;
  /** Control eventfd. */
  readonly ctrl: EventFd;
  /** Each queue's notify eventfd. */
  readonly notify: readonly EventFd[];
  /** The interrupt eventfd (an irqfd once attached). */
  readonly irq: EventFd;
  /** Reasons the device gave for setting DEVICE_NEEDS_RESET, oldest first (at most 32). */
  readonly guestErrors: string[] = [];
  readonly #w: Int32Array;
  readonly #regs: VirtioMmioTransport;
  readonly #worker: Worker;
  readonly #calls = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void }
  >();
  #nextCall = 1;
  #failed: string | undefined;
  #closed: Promise<void> | undefined;
  #onClosed: (() => void) | undefined;
  #vmFd = -1;

  private constructor(
    config: VirtioDeviceConfig,
    slot: MmioSlot,
    spec: DeviceSpec,
    ctrl: EventFd,
    notify: EventFd[],
    irq: EventFd,
    worker: Worker,
  ) {
    this.config = config;
    this.slot = slot;
    this.spec = spec;
    this.ctrl = ctrl;
    this.notify = notify;
    this.irq = irq;
    this.#w = new Int32Array(spec.state);
    this.#regs = new VirtioMmioTransport(spec);
    this.#worker = worker;
  }

  /** Device name. */
  get name(): string {
    return this.slot.name;
  }

  /** The shared state words (for metrics and tests). */
  get state(): Int32Array {
    return this.#w;
  }

  /**
   * Starts the device's Worker over `regions` of guest RAM; resolves once
   * the back end is open (a bad image or a refused iSCSI login rejects here).
   */
  static async start(
    config: VirtioDeviceConfig,
    regions: readonly MemoryRegion[],
    slot: MmioSlot,
  ): Promise<VirtioDeviceHost> {
    const lib = await loadShim();
    const fds: EventFd[] = [];
    try {
      const ctrl = EventFd.create();
      fds.push(ctrl);
      const irq = EventFd.create();
      fds.push(irq);
      const notify = config.queueSizes.map(() => {
        const e = EventFd.create();
        fds.push(e);
        return e;
      });
      const spec = virtioMmioSpec({
        name: config.name,
        base: slot.base,
        deviceId: config.deviceId,
        features: config.features,
        queueSizes: config.queueSizes,
        configBytes: config.configBytes,
        ctrlFd: ctrl.fd,
        notifyFds: notify.map((e) => e.fd),
      });
      const worker = new Worker(new URL("./worker.ts", import.meta.url).href, {
        type: "module",
        name: `io-${config.name}`,
      });
      const host = new VirtioDeviceHost(config, slot, spec, ctrl, notify, irq, worker);
      await host.#boot({
        type: "init",
        libPath: lib.path,
        name: config.name,
        state: spec.state,
        regions: regions.map((r) => ({
          guestAddr: r.guestAddr,
          size: r.size,
          hostAddr: r.hostAddr,
        })),
        ctrlFd: ctrl.fd,
        notifyFds: notify.map((e) => e.fd),
        irqFd: irq.fd,
        backendModule: config.backendModule,
        backendConfig: config.backendConfig,
        pollUs: config.pollUs ?? DEFAULT_POLL_US,
      });
      return host;
    } catch (err) {
      for (const f of fds) f.close();
      throw err;
    }
  }

  /**
   * The back end died under a running driver: as for any error state that
   * needs a reset (virtio 1.2 §2.1.2), DEVICE_NEEDS_RESET and, after
   * DRIVER_OK, a configuration-change interrupt, so the driver stops waiting
   * for completions that will never come.
   */
  #needsReset(reason: string): void {
    const w = this.#w;
    if ((Atomics.load(w, W.STATUS) & Status.DRIVER_OK) === 0) return;
    if (this.guestErrors.length < 32) this.guestErrors.push(`I/O worker failed: ${reason}`);
    Atomics.or(w, W.INTERRUPT_STATUS, Interrupt.CONFIG_CHANGE);
    Atomics.or(w, W.STATUS, Status.DEVICE_NEEDS_RESET);
    this.irq.signal();
  }

  #boot(init: IoWorkerInit): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const w = this.#worker;
      w.onmessage = (e: MessageEvent<IoWorkerMessage>) => {
        const m = e.data;
        switch (m.type) {
          case "ready":
            return resolve();
          case "failed":
            this.#failed = m.error;
            Atomics.store(this.#w, W.WORKER_GONE, 1);
            this.#needsReset(m.error);
            reject(new VirtioDeviceError(this.name, m.error));
            this.#worker.terminate();
            this.#rejectCalls(m.error);
            return this.#onClosed?.();
          case "reply":
          case "reply-error": {
            const c = this.#calls.get(m.id);
            this.#calls.delete(m.id);
            if (m.type === "reply") c?.resolve(m.value);
            else c?.reject(new VirtioDeviceError(this.name, m.error));
            return;
          }
          case "guest-error":
            if (this.guestErrors.length < 32) this.guestErrors.push(m.reason);
            return;
          case "closed":
            return this.#onClosed?.();
        }
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#failed = e.message;
        Atomics.store(this.#w, W.WORKER_GONE, 1);
        this.#needsReset(e.message);
        reject(new VirtioDeviceError(this.name, `I/O worker failed: ${e.message}`));
        this.#rejectCalls(e.message);
        this.#onClosed?.();
      };
      w.postMessage(init);
    });
  }

  #rejectCalls(why: string): void {
    for (const c of this.#calls.values()) c.reject(new VirtioDeviceError(this.name, why));
    this.#calls.clear();
  }

  /** Registers the queue ioeventfds and the irqfd with VM `vmFd`. */
  attach(vmFd: number): void {
    const notifyAddr = this.slot.base + Reg.QUEUE_NOTIFY;
    const done: number[] = [];
    try {
      this.notify.forEach((e, q) => {
        registerIoeventfd(vmFd, e.fd, notifyAddr, 4, q);
        done.push(q);
      });
      registerIrqfd(vmFd, this.irq.fd, this.slot.gsi);
    } catch (err) {
      for (const q of done) {
        const e = this.notify[q];
        if (e !== undefined) unregisterIoeventfd(vmFd, e.fd, notifyAddr, 4, q);
      }
      throw err;
    }
    this.#vmFd = vmFd;
  }

  /** Undoes {@link attach}. */
  detach(): void {
    const vmFd = this.#vmFd;
    if (vmFd < 0) return;
    this.#vmFd = -1;
    const notifyAddr = this.slot.base + Reg.QUEUE_NOTIFY;
    this.notify.forEach((e, q) => unregisterIoeventfd(vmFd, e.fd, notifyAddr, 4, q));
    unregisterIrqfd(vmFd, this.irq.fd, this.slot.gsi);
  }

  #signal(bits: number): void {
    Atomics.or(this.#w, W.CTRL, bits);
    signalEventFd(this.ctrl.fd);
  }

  /** See {@link VirtioMmioTransport.quiesce}. */
  quiesce(): Promise<void> {
    if (this.#failed !== undefined) {
      return Promise.reject(new VirtioDeviceError(this.name, `failed: ${this.#failed}`));
    }
    return this.#regs.quiesce();
  }

  /** Whether the device is quiesced (nothing in flight, nothing taken). */
  get quiesced(): boolean {
    return this.#regs.quiesced;
  }

  /** Lets the device take requests again (no waiting). */
  resume(): void {
    this.#regs.resume();
  }

  /** Runs `method` on the back end in its Worker. */
  call(method: string, args: unknown = {}): Promise<unknown> {
    if (this.#failed !== undefined) {
      return Promise.reject(new VirtioDeviceError(this.name, `failed: ${this.#failed}`));
    }
    const id = this.#nextCall++;
    return new Promise((resolve, reject) => {
      this.#calls.set(id, { resolve, reject });
      this.#worker.postMessage({ type: "call", id, method, args });
      Atomics.add(this.#w, W.MESSAGES, 1);
      this.#signal(Ctrl.MESSAGE);
    });
  }

  /** Detaches from the VM, closes the back end (flushing it) and ends the Worker. */
  close(): Promise<void> {
    if (this.#closed !== undefined) return this.#closed;
    this.#closed = (async () => {
      this.detach();
      if (this.#failed === undefined) {
        const done = new Promise<void>((resolve) => (this.#onClosed = resolve));
        this.#signal(Ctrl.SHUTDOWN);
        let timer: ReturnType<typeof setTimeout> | undefined;
        const timeout = new Promise<void>((resolve) =>
          timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)
        );
        await Promise.race([done, timeout]);
        clearTimeout(timer);
      }
      this.#worker.terminate();
      Atomics.store(this.#w, W.WORKER_GONE, 1);
      this.#rejectCalls("device closed");
      this.ctrl.close();
      this.irq.close();
      for (const e of this.notify) e.close();
    })();
    return this.#closed;
  }
}
