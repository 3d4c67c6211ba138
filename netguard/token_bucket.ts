/**
 * A token bucket in packets per second, used by the `rate_limit` action.
 *
 * @module
 */

/** Lets through at most `ratePps` packets per second with a burst of one second's worth. */
export class TokenBucket {
  #tokens: number;
  #last = -1;

  /** Creates a full bucket. */
  constructor(readonly ratePps: number) {
    this.#tokens = ratePps;
  }

  /** Takes one token at `nowMs`; returns false when the packet must be dropped. */
  take(nowMs: number): boolean {
    if (this.#last >= 0 && nowMs > this.#last) {
      this.#tokens = Math.min(
        this.ratePps,
        this.#tokens + ((nowMs - this.#last) * this.ratePps) / 1000,
      );
    }
    if (nowMs > this.#last) this.#last = nowMs;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}
