/**
 * Token buckets: netguard's `rate_limit` action (packets per second) and,
 * in Firecracker's terms (`size`, `one_time_burst`, `refill_time`), the
 * bandwidth and ops buckets of a device rate limiter.
 *
 * @module
 */

/** A bucket as Firecracker describes one. */
export interface TokenBucketOptions {
  /** Tokens the bucket holds when full (> 0). */
  size: number;
  /** Extra tokens spent before the bucket, once (default 0). */
  oneTimeBurst?: number;
  /** Milliseconds to refill the whole bucket from empty (> 0). */
  refillTimeMs: number;
}

/** What {@link TokenBucket.reduce} did. */
export type BucketReduction =
  /** Taken. */
  | "ok"
  /** Not enough tokens yet: nothing taken. */
  | "empty"
  /**
   * More than the whole bucket was asked for (Firecracker's
   * OverConsumption): taken from a full bucket, which goes into debt and
   * refuses everything until refill has paid it back.
   */
  | "overdraft";

/** Raised for a bucket whose size or refill time is not positive. */
export class TokenBucketError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(`token bucket: ${message}`);
    this.name = "TokenBucketError";
  }
}

/**
 * A token bucket refilled continuously at `size / refillTimeMs` per ms.
 * `new TokenBucket(pps)` is netguard's packets-per-second bucket with a
 * burst of one second's worth.
 */
export class TokenBucket {
  /** Tokens when full. */
  readonly size: number;
  /** Milliseconds to refill from empty. */
  readonly refillTimeMs: number;
  #tokens: number;
  #burst: number;
  #last = -1;

  /** Creates a full bucket: `ratePps` per second, or Firecracker-style options. */
  constructor(rate: number | TokenBucketOptions) {
    const o = typeof rate === "number" ? { size: rate, refillTimeMs: 1000 } : rate;
    if (!(o.size > 0) || !(o.refillTimeMs > 0) || !Number.isFinite(o.size)) {
      throw new TokenBucketError(
        `size ${o.size} and refill time ${o.refillTimeMs} ms must be positive`,
      );
    }
    this.size = o.size;
    this.refillTimeMs = o.refillTimeMs;
    this.#tokens = o.size;
    this.#burst = Math.max(0, o.oneTimeBurst ?? 0);
  }

  /** The rate of {@link TokenBucket} built from a number (tokens per second). */
  get ratePps(): number {
    return (this.size * 1000) / this.refillTimeMs;
  }

  #refill(nowMs: number): void {
    if (this.#last >= 0 && nowMs > this.#last) {
      this.#tokens = Math.min(
        this.size,
        this.#tokens + ((nowMs - this.#last) * this.size) / this.refillTimeMs,
      );
    }
    if (nowMs > this.#last) this.#last = nowMs;
  }

  /** Takes one token at `nowMs`; returns false when the packet must be dropped. */
  take(nowMs: number): boolean {
    return this.reduce(1, nowMs) !== "empty";
  }

  /** Takes `tokens` at `nowMs` (the one-time burst first); see {@link BucketReduction}. */
  reduce(tokens: number, nowMs: number): BucketReduction {
    this.#refill(nowMs);
    if (this.#burst > 0) {
      const fromBurst = Math.min(this.#burst, tokens);
      this.#burst -= fromBurst;
      tokens -= fromBurst;
      if (tokens === 0) return "ok";
    }
    if (tokens <= this.#tokens) {
      this.#tokens -= tokens;
      return "ok";
    }
    if (tokens > this.size && this.#tokens >= this.size) {
      this.#tokens -= tokens;
      return "overdraft";
    }
    return "empty";
  }

  /**
   * Takes `tokens` at `nowMs` even into debt (a cost known only after the
   * fact, such as the size of a frame already received).
   */
  force(tokens: number, nowMs: number): void {
    this.#refill(nowMs);
    const fromBurst = Math.min(this.#burst, tokens);
    this.#burst -= fromBurst;
    this.#tokens -= tokens - fromBurst;
  }

  /** Gives back `tokens` taken by {@link reduce} (when a second bucket refused the same request). */
  replenish(tokens: number): void {
    this.#tokens = Math.min(this.size, this.#tokens + tokens);
  }

  /** Milliseconds from `nowMs` until {@link reduce} of `tokens` can succeed (0: now). */
  msUntil(tokens: number, nowMs: number): number {
    this.#refill(nowMs);
    const want = Math.min(tokens - this.#burst, this.size);
    if (want <= this.#tokens) return 0;
    return ((want - this.#tokens) * this.refillTimeMs) / this.size;
  }

  /**
   * A bucket with new limits that goes on from this one's state at `nowMs`
   * (Firecracker's rate limiter update): the budget and the one-time burst
   * left are kept, capped at the new size and the new one-time burst, and a
   * debt stays owed.
   */
  resized(options: TokenBucketOptions, nowMs: number): TokenBucket {
    this.#refill(nowMs);
    const next = new TokenBucket(options);
    next.#tokens = Math.min(this.#tokens, next.size);
    next.#burst = Math.min(this.#burst, next.#burst);
    next.#last = this.#last;
    return next;
  }

  /** The one-time burst not yet spent. */
  get burstLeft(): number {
    return this.#burst;
  }

  /** Tokens available now, not counting the one-time burst (negative while in debt). */
  available(nowMs: number): number {
    this.#refill(nowMs);
    return this.#tokens;
  }
}
