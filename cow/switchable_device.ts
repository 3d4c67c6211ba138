/**
 * A {@link BlockDevice} whose target can be swapped atomically while a
 * writer keeps using it: the live overlay switch of a checkpoint, and the
 * pivot at the end of an active commit.
 *
 * @module
 */

import type { BlockDevice } from "./block_device.ts";
import { LiveOperationError } from "./errors.ts";

/** Options for {@link SwitchableDevice.switchTo}. */
export interface SwitchOptions {
  /** Flush the old target after draining, before the swap (default true). */
  flushOld?: boolean;
  /** Close the old target after the swap (default false). */
  closeOld?: boolean;
}

/**
 * Forwards every call to its current target. `switchTo` stops admitting new
 * requests, waits for the in-flight ones, flushes the old target, swaps and
 * then lets the held requests through to the new target, so no write is lost
 * and none reaches the old target after the switch.
 *
 * @example
 * ```ts
 * import { SwitchableDevice } from "./switchable_device.ts";
 * import { createImage, openImage } from "./chain.ts";
 * import { createOverlay } from "./overlay.ts";
 * const dir = await Deno.makeTempDir();
 * createImage(`${dir}/disk.qcow2`, { size: 1 << 20 }).closeSync();
 * const parent = openImage(`${dir}/disk.qcow2`);
 * const dev = new SwitchableDevice(parent);
 * // ... a writer uses `dev` ...
 * const overlay = createOverlay(parent, `${dir}/disk.ckpt.qcow2`, { adoptParent: true });
 * await dev.switchTo(overlay); // from here on, writes land in the overlay
 * await overlay.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class SwitchableDevice implements BlockDevice {
  #target: BlockDevice;
  #inflight = 0;
  #gate: Promise<void> | null = null;
  #openGate: (() => void) | null = null;
  #drained: (() => void) | null = null;
  #closed = false;

  /** Wraps `target`. */
  constructor(target: BlockDevice) {
    this.#target = target;
  }

  /** The current target. */
  get target(): BlockDevice {
    return this.#target;
  }

  /** Size of the current target. */
  get size(): number {
    return this.#target.size;
  }

  #leave(): void {
    this.#inflight--;
    if (this.#inflight === 0 && this.#drained !== null) {
      const done = this.#drained;
      this.#drained = null;
      done();
    }
  }

  async #run(op: (t: BlockDevice) => Promise<void>): Promise<void> {
    // Re-check the gate right before counting the request in, in the same
    // synchronous step, so a pause that starts meanwhile always sees it.
    while (this.#gate !== null) await this.#gate;
    if (this.#closed) throw new LiveOperationError("switchable device is closed");
    this.#inflight++;
    try {
      await op(this.#target);
    } finally {
      this.#leave();
    }
  }

  /** Reads from the current target. */
  read(offset: number, buf: Uint8Array): Promise<void> {
    return this.#run((t) => t.read(offset, buf));
  }
  /** Writes to the current target. */
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#run((t) => t.write(offset, data));
  }
  /** Flushes the current target. */
  flush(): Promise<void> {
    return this.#run((t) => t.flush());
  }
  /** Discards on the current target. */
  discard(offset: number, length: number): Promise<void> {
    return this.#run((t) => t.discard(offset, length));
  }

  /** Holds new requests and resolves once none is in flight. */
  async pause(): Promise<void> {
    if (this.#gate !== null) throw new LiveOperationError("device is already paused");
    this.#gate = new Promise((resolve) => (this.#openGate = resolve));
    if (this.#inflight > 0) {
      await new Promise<void>((resolve) => (this.#drained = resolve));
    }
  }

  /** Lets held requests through. */
  resume(): void {
    const open = this.#openGate;
    this.#gate = null;
    this.#openGate = null;
    if (open !== null) open();
  }

  /**
   * Atomically retargets the device to `next` (see class doc). Returns the
   * old target. If flushing the old target fails, nothing is swapped.
   */
  async switchTo(next: BlockDevice, options: SwitchOptions = {}): Promise<BlockDevice> {
    await this.pause();
    const old = this.#target;
    try {
      if (options.flushOld ?? true) await old.flush();
      this.#target = next;
    } finally {
      this.resume();
    }
    if (options.closeOld) await old.close();
    return old;
  }

  /** Waits for in-flight requests, then closes the current target. */
  async close(): Promise<void> {
    await this.pause();
    this.#closed = true;
    try {
      await this.#target.close();
    } finally {
      this.resume();
    }
  }
}
