/**
 * A mutex over one `Int32Array` word of a `SharedArrayBuffer`, usable from
 * every Worker that shares the buffer: a short spin (the bus is held for well
 * under a microsecond), then `Atomics.wait` (the futex protocol of Drepper's
 * "Futexes Are Tricky": 0 free, 1 held, 2 held with waiters).
 *
 * @module
 */

/** Bytes a lock word occupies. */
export const LOCK_BYTES = 4;

const FREE = 0;
const HELD = 1;
const CONTENDED = 2;
const SPINS = 200;

/** A mutex stored in one 32-bit word of shared memory. */
export class SharedMutex {
  readonly #word: Int32Array;
  readonly #index: number;

  /**
   * Wraps the lock word at byte `byteOffset` (4-aligned) of `buffer`.
   *
   * @example
   * ```ts
   * import { SharedMutex } from "./lock.ts";
   * const m = new SharedMutex(new SharedArrayBuffer(4));
   * m.lock();
   * m.unlock();
   * ```
   */
  constructor(buffer: SharedArrayBuffer, byteOffset = 0) {
    if (byteOffset % 4 !== 0 || byteOffset + LOCK_BYTES > buffer.byteLength) {
      throw new RangeError(
        `shared mutex: lock word at byte ${byteOffset} does not fit a 4-aligned slot of a ` +
          `${buffer.byteLength}-byte buffer`,
      );
    }
    this.#word = new Int32Array(buffer);
    this.#index = byteOffset >> 2;
  }

  /** Takes the lock, blocking the thread until it is free. */
  lock(): void {
    const w = this.#word;
    const i = this.#index;
    let c = Atomics.compareExchange(w, i, FREE, HELD);
    if (c === FREE) return;
    for (let n = 0; n < SPINS; n++) {
      if (Atomics.load(w, i) === FREE) {
        c = Atomics.compareExchange(w, i, FREE, HELD);
        if (c === FREE) return;
      }
    }
    if (c !== CONTENDED) c = Atomics.exchange(w, i, CONTENDED);
    while (c !== FREE) {
      Atomics.wait(w, i, CONTENDED);
      c = Atomics.exchange(w, i, CONTENDED);
    }
  }

  /** Takes the lock if it is free; returns whether it did. */
  tryLock(): boolean {
    return Atomics.compareExchange(this.#word, this.#index, FREE, HELD) === FREE;
  }

  /** Releases the lock, waking one waiter if there are any. */
  unlock(): void {
    const w = this.#word;
    const i = this.#index;
    if (Atomics.sub(w, i, 1) !== HELD) {
      Atomics.store(w, i, FREE);
      Atomics.notify(w, i, 1);
    }
  }
}
