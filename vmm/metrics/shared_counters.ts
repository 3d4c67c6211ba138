/**
 * Counters in a `SharedArrayBuffer`, so the thread that counts (a vCPU
 * Worker, a device's I/O Worker) and the thread that reports (the main
 * thread, serving `GET /metrics`) share them without messages.
 *
 * Each counter is a float64 (exact to 2^53) written by **one thread only**
 * with a plain add: no atomics on the hot path. Readers on other threads may
 * see a value a few increments old, never a torn one on x86-64 (aligned
 * 8-byte stores are single-copy atomic there).
 *
 * @module
 */

/**
 * A fixed set of named counters over shared memory.
 *
 * @example
 * ```ts
 * import { SharedCounters } from "./shared_counters.ts";
 * const c = SharedCounters.create(["reads", "read_bytes"]);
 * // On the device's Worker: SharedCounters.over(buffer, names).
 * const mine = SharedCounters.over(c.buffer, c.names);
 * mine.add(0, 1);
 * mine.add(1, 4096);
 * console.log(c.get("read_bytes")); // 4096
 * ```
 */
export class SharedCounters {
  /** The shared memory, to post to the counting thread. */
  readonly buffer: SharedArrayBuffer;
  /** Counter names, in slot order. */
  readonly names: readonly string[];
  /** The slots, for hot loops that index them directly. */
  readonly values: Float64Array;

  private constructor(buffer: SharedArrayBuffer, names: readonly string[]) {
    if (buffer.byteLength < names.length * 8) {
      throw new Error(`shared counters: ${buffer.byteLength} bytes cannot hold ${names.length}`);
    }
    this.buffer = buffer;
    this.names = [...names];
    this.values = new Float64Array(buffer, 0, names.length);
  }

  /** New zeroed counters named `names`. */
  static create(names: readonly string[]): SharedCounters {
    return new SharedCounters(new SharedArrayBuffer(Math.max(8, names.length * 8)), names);
  }

  /** Counters over an existing `buffer` (from {@link SharedCounters.buffer} on another thread). */
  static over(buffer: SharedArrayBuffer, names: readonly string[]): SharedCounters {
    return new SharedCounters(buffer, names);
  }

  /** Adds `n` to slot `i` (the one writer of that slot only). */
  add(i: number, n = 1): void {
    this.values[i] = (this.values[i] ?? 0) + n;
  }

  /** The value of the counter named `name`; throws on an unknown name. */
  get(name: string): number {
    const i = this.names.indexOf(name);
    if (i < 0) throw new Error(`shared counters: no counter '${name}'`);
    return this.values[i] ?? 0;
  }

  /** Every counter by name. */
  snapshot(): Record<string, number> {
    return Object.fromEntries(this.names.map((n, i) => [n, this.values[i] ?? 0]));
  }
}
