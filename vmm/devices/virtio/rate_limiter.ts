/**
 * A device rate limiter as Firecracker's: a bandwidth bucket (bytes) and an
 * ops bucket (requests or frames), each optional, built from
 * {@link RateLimiterConfig}. A request passes only when both buckets have
 * room; a refused request takes nothing, and the device retries it after
 * {@link RateLimiter.msUntil} (Firecracker arms a timer the same way).
 *
 * @example
 * ```ts
 * import { RateLimiter } from "./rate_limiter.ts";
 * const rl = new RateLimiter({ ops: { size: 100, refillTimeMs: 1000 } });
 * if (!rl.consume(1, 1514, performance.now())) {
 *   setTimeout(() => {}, rl.msUntil(1, 1514, performance.now()));
 * }
 * ```
 *
 * @module
 */

import { TokenBucket, type TokenBucketOptions } from "../../../netguard/token_bucket.ts";
import type { RateLimiterConfig, TokenBucketConfig } from "../../io_config.ts";

/** Whether `c` asks for no limit: Firecracker's 0-sized (or 0 refill time) bucket. */
function unlimited(c: TokenBucketConfig): boolean {
  return c.size === 0 || c.refillTimeMs === 0;
}

function options(c: TokenBucketConfig): TokenBucketOptions {
  return {
    size: c.size,
    refillTimeMs: c.refillTimeMs,
    ...(c.oneTimeBurst === undefined ? {} : { oneTimeBurst: c.oneTimeBurst }),
  };
}

function bucket(c: TokenBucketConfig | undefined): TokenBucket | null {
  if (c === undefined || unlimited(c)) return null;
  return new TokenBucket(options(c));
}

/** A bucket after an update: absent keeps it, 0-sized removes it, else new limits on its state. */
function updated(
  current: TokenBucket | null,
  c: TokenBucketConfig | undefined,
  nowMs: number,
): TokenBucket | null {
  if (c === undefined) return current;
  if (unlimited(c)) return null;
  return current === null ? new TokenBucket(options(c)) : current.resized(options(c), nowMs);
}

/** Bandwidth and ops token buckets in front of a device queue. */
export class RateLimiter {
  #bandwidth: TokenBucket | null;
  #ops: TokenBucket | null;
  /** Requests refused so far (each refusal once per attempt). */
  throttled = 0;

  /**
   * Builds the buckets of `config` (none: no limit).
   *
   * @throws {TokenBucketError} for a negative or non-finite size or refill time.
   */
  constructor(config: RateLimiterConfig | undefined) {
    this.#bandwidth = bucket(config?.bandwidth);
    this.#ops = bucket(config?.ops);
  }

  /** The bandwidth bucket (bytes), or null for no limit. */
  get bandwidth(): TokenBucket | null {
    return this.#bandwidth;
  }

  /** The ops bucket, or null for no limit. */
  get ops(): TokenBucket | null {
    return this.#ops;
  }

  /**
   * Applies an update at `nowMs` as Firecracker's `PATCH` does, bucket by
   * bucket: a bucket `update` leaves out stays as it is; a 0-sized one (or
   * one with refill time 0) removes the limit; any other replaces the
   * limits, keeping the budget and one-time burst left (capped at the new
   * limits), so limiting goes on smoothly instead of starting full.
   *
   * @throws {TokenBucketError} for a negative or non-finite size or refill time.
   */
  update(update: RateLimiterConfig, nowMs: number): void {
    const bandwidth = updated(this.#bandwidth, update.bandwidth, nowMs);
    const ops = updated(this.#ops, update.ops, nowMs);
    this.#bandwidth = bandwidth;
    this.#ops = ops;
  }

  /** Whether this limiter limits anything. */
  get active(): boolean {
    return this.#bandwidth !== null || this.#ops !== null;
  }

  /** Takes `ops` operations and `bytes` bytes at `nowMs` if both buckets allow; else takes nothing. */
  consume(ops: number, bytes: number, nowMs: number): boolean {
    const o = this.#ops;
    const b = this.#bandwidth;
    if (o !== null && o.reduce(ops, nowMs) === "empty") {
      this.throttled++;
      return false;
    }
    if (b !== null && b.reduce(bytes, nowMs) === "empty") {
      o?.replenish(ops);
      this.throttled++;
      return false;
    }
    return true;
  }

  /** Gives back what a {@link consume} that passed took (the request was not made after all). */
  refund(ops: number, bytes: number): void {
    this.#ops?.replenish(ops);
    this.#bandwidth?.replenish(bytes);
  }

  /**
   * Charges `bytes` to the bandwidth bucket after the fact, even into debt
   * (a received frame's size is known only once it is read); later requests
   * wait until refill pays it back.
   */
  charge(bytes: number, nowMs: number): void {
    this.#bandwidth?.force(bytes, nowMs);
  }

  /** Milliseconds from `nowMs` until {@link consume} of the same request can pass. */
  msUntil(ops: number, bytes: number, nowMs: number): number {
    return Math.max(
      this.#ops?.msUntil(ops, nowMs) ?? 0,
      this.#bandwidth?.msUntil(bytes, nowMs) ?? 0,
    );
  }
}
