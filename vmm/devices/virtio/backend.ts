/**
 * The contract between the I/O Worker's event loop (`worker.ts`) and a
 * virtio device back end (virtio-blk in `blk.ts`, virtio-net, or a device
 * from outside the tree): the back end processes its queues, the loop owns
 * the transport state machine (activation, reset, quiesce), the waiting on
 * eventfds and the messages from the main thread.
 *
 * A back end module exports `createBackend(config, ctx)`; the machine names
 * it by URL in the device's {@link VirtioDeviceConfig.backendModule}, so an
 * out-of-tree device is a module with that export.
 *
 * @module
 */

import type { GuestRam } from "./guest_ram.ts";
import type { SplitQueue } from "./queue.ts";

/** What the loop gives a back end. */
export interface VirtioBackendContext {
  /** Device name. */
  readonly name: string;
  /** Bounds-checked guest RAM. */
  readonly ram: GuestRam;
  /** The device's shared state words (`layout.ts`). */
  readonly state: Int32Array;
  /** The device-specific configuration space (in the shared state). */
  readonly config: Uint8Array;
  /** The activated queues (empty while the device is not active). */
  readonly queues: readonly (SplitQueue | null)[];
  /** Whether the driver accepted feature `bit`. */
  negotiated(bit: number): boolean;
  /** Whether the device may take new chains now (active and not quiesced or resetting). */
  canTake(): boolean;
  /** Counts `n` (default 1) requests taken from a queue (in flight until {@link VirtioBackendContext.completed}). */
  started(n?: number): void;
  /**
   * Counts `n` (default 1) requests put on the used ring; the loop finishes a
   * drain when none is left. A back end may count a batch at once, before it
   * returns to the loop.
   */
  completed(n?: number): void;
  /** Sends a used-buffer interrupt if queue `q` wants one (EVENT_IDX / flags). */
  interruptIfNeeded(q: number): void;
  /** Bumps ConfigGeneration and sends a configuration-change interrupt. */
  configChanged(): void;
  /**
   * Rewrites the configuration space with `write`, atomically for a driver
   * that reads it between two ConfigGeneration reads (virtio 1.2 §4.2.2.1),
   * then bumps ConfigGeneration and sends a configuration-change interrupt.
   */
  updateConfig(write: (config: Uint8Array) => void): void;
  /** The driver broke the device: DEVICE_NEEDS_RESET, a config interrupt, no more processing. */
  fail(reason: string): void;
  /** Watches `fd` for readability; `onReady` runs on the loop (fd counters are not drained). */
  watch(fd: number, onReady: () => void): void;
  /** Stops watching `fd`. */
  unwatch(fd: number): void;
  /** Counts an asynchronous operation the loop must not block its thread across. */
  asyncStarted(): void;
  /** Ends an operation counted by {@link VirtioBackendContext.asyncStarted}. */
  asyncEnded(): void;
}

/** A device back end, living on its I/O Worker. */
export interface VirtioBackend {
  /** The queues are valid and the driver set DRIVER_OK. */
  activate(): void;
  /** Takes and handles what queue `q` holds (called after a notify, on resume, after activate). */
  process(q: number): void;
  /**
   * Does whatever work is ready without waiting (new chains in a queue,
   * completions of the back end's own I/O); returns whether it found any.
   * The loop calls it in a short busy-poll window after each wake-up, so a
   * driver that resubmits at once is served without a sleep and a wake-up
   * (QEMU's IOThread adaptive polling).
   */
  poll?(): boolean;
  /**
   * The poll window ended: re-enable the driver notifications polling left
   * off and take what arrived meanwhile (the loop sleeps next).
   */
  idle?(): void;
  /** Called once everything in flight has completed during a quiesce; may switch disks. */
  quiesced?(): Promise<void> | void;
  /** Everything in flight has completed during a reset: forget per-activation state. */
  reset(): void;
  /** A call from the main-thread handle (e.g. a checkpoint's disk operations). */
  call?(method: string, args: unknown): Promise<unknown>;
  /** Releases the back end's resources (nothing is in flight). */
  close(): Promise<void>;
}

/** The shape of a back-end module's `createBackend`. */
export type BackendFactory = (
  config: unknown,
  ctx: VirtioBackendContext,
) => Promise<VirtioBackend>;

/** Raised by a back end for a problem the main thread should report (bad config, open failure). */
export class VirtioBackendError extends Error {
  /** Creates the error for device `name`. */
  constructor(name: string, detail: string) {
    super(`virtio device '${name}': ${detail}`);
    this.name = "VirtioBackendError";
  }
}
