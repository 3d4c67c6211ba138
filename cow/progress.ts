/**
 * Progress reporting, bandwidth limiting and yielding for the background
 * operations (copy, commit, stream).
 *
 * @module
 */

import { LiveOperationError } from "./errors.ts";

/** A progress report: bytes processed of the total. */
export interface Progress {
  /** Bytes of the virtual disk processed so far. */
  done: number;
  /** Total bytes to process. */
  total: number;
}

/** Options shared by the background operations. */
export interface BackgroundOptions {
  /** Called after each chunk. May throw to abort the operation. */
  onProgress?: (p: Progress) => void;
  /** Bytes per second of copying (default unlimited). */
  bandwidth?: number;
  /** Aborts the operation at the next chunk boundary. */
  signal?: AbortSignal;
  /** Bytes per step (default 1 MiB). */
  chunkSize?: number;
}

const YIELD_EVERY_MS = 4;

/**
 * Paces a copy loop: sleeps to keep under a bandwidth, and yields to the
 * event loop every few milliseconds so a live writer keeps running.
 */
export class Pacer {
  #start = performance.now();
  #lastYield = performance.now();
  #bytes = 0;
  #bandwidth: number;
  #signal: AbortSignal | undefined;

  /** Creates a pacer for `options`. */
  constructor(options: BackgroundOptions) {
    const bw = options.bandwidth ?? 0;
    if (!Number.isFinite(bw) || bw < 0) {
      throw new LiveOperationError(`bandwidth must be a positive number of bytes/s, got ${bw}`);
    }
    this.#bandwidth = bw;
    this.#signal = options.signal;
  }

  /** Accounts `bytes` copied; sleeps or yields as needed; throws if aborted. */
  async step(bytes: number): Promise<void> {
    this.#bytes += bytes;
    const now = performance.now();
    let wait = 0;
    if (this.#bandwidth > 0) {
      const due = this.#start + (this.#bytes / this.#bandwidth) * 1000;
      wait = Math.max(0, due - now);
    }
    if (wait > 0 || now - this.#lastYield >= YIELD_EVERY_MS) {
      await new Promise((resolve) => setTimeout(resolve, wait));
      this.#lastYield = performance.now();
    }
    if (this.#signal?.aborted) {
      throw new LiveOperationError("operation aborted", { cause: this.#signal.reason });
    }
  }
}

/** True when every byte of `buf` is zero. */
export function isZero(buf: Uint8Array): boolean {
  const words = buf.byteOffset % 4 === 0 ? Math.floor(buf.length / 4) : 0;
  if (words > 0) {
    const w = new Uint32Array(buf.buffer, buf.byteOffset, words);
    for (let i = 0; i < words; i++) if (w[i] !== 0) return false;
  }
  for (let i = words * 4; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
