/**
 * Messages between a virtio device's main-thread handle (`host.ts`) and its
 * I/O Worker (`worker.ts`). Requests that must not wait for the Worker's
 * event loop (quiesce, resume, reset, shutdown) travel through the shared
 * state and the control eventfd instead.
 *
 * @module
 */

import type { RamRegion } from "./guest_ram.ts";

/** First message to an I/O Worker. */
export interface IoWorkerInit {
  readonly type: "init";
  /** Path of the built shim library. */
  readonly libPath: string;
  /** Device name. */
  readonly name: string;
  /** The device's shared state. */
  readonly state: SharedArrayBuffer;
  /** Guest RAM regions. */
  readonly regions: readonly RamRegion[];
  /** Control eventfd (vCPU and main threads signal it). */
  readonly ctrlFd: number;
  /** One notify eventfd per queue (KVM signals them through ioeventfds). */
  readonly notifyFds: readonly number[];
  /** The interrupt eventfd (an irqfd when attached to a VM). */
  readonly irqFd: number;
  /** URL of the module exporting `createBackend(config, ctx)`. */
  readonly backendModule: string;
  /** The back end's own configuration (structured-clone-able). */
  readonly backendConfig: unknown;
  /** Busy-poll window after each wake-up, in microseconds (0: none). */
  readonly pollUs: number;
}

/** A call on the back end. */
export interface IoWorkerCall {
  readonly type: "call";
  readonly id: number;
  readonly method: string;
  readonly args: unknown;
}

/** Messages to an I/O Worker. */
export type IoWorkerRequest = IoWorkerInit | IoWorkerCall;

/** Messages from an I/O Worker. */
export type IoWorkerMessage =
  | { readonly type: "ready" }
  | { readonly type: "failed"; readonly error: string }
  | { readonly type: "reply"; readonly id: number; readonly value: unknown }
  | { readonly type: "reply-error"; readonly id: number; readonly error: string }
  | { readonly type: "guest-error"; readonly reason: string }
  | { readonly type: "closed" };
