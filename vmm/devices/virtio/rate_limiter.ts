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

import { TokenBucket } from "../../../netguard/token_bucket.ts";
import type { RateLimiterConfig, TokenBucketConfig } from "../../io_config.ts";

function bucket(c: TokenBucketConfig | undefined): TokenBucket | null {
  // Firecracker: a bucket of size 0 or refill time 0 is no limit.
  if (c === undefined || c.size === 0 || c.refillTimeMs === 0) return null;
  return new TokenBucket({
    size: c.size,
    refillTimeMs: c.refillTimeMs,
    ...(c.oneTimeBurst === undefined ? {} : { oneTimeBurst: c.oneTimeBurst }),
  });
}

/** Bandwidth and ops token buckets in front of a device queue. */
export class RateLimiter {
  /** The bandwidth bucket (bytes), or null for no limit. */
  readonly bandwidth: TokenBucket | null;
  /** The ops bucket, or null for no limit. */
  readonly ops: TokenBucket | null;
  /** Requests refused so far (each refusal once per attempt). */
  throttled = 0;

  /**
   * Builds the buckets of `config` (none: no limit).
   *
   * @throws {TokenBucketError} for a negative or non-finite size or refill time.
   */
  constructor(config: RateLimiterConfig | undefined) {
    this.bandwidth = bucket(config?.bandwidth);
    this.ops = bucket(config?.ops);
  }

  /** Whether this limiter limits anything. */
  get active(): boolean {
    return this.bandwidth !== null || this.ops !== null;
  }

  /** Takes `ops` operations and `bytes` bytes at `nowMs` if both buckets allow; else takes nothing. */
  consume(ops: number, bytes: number, nowMs: number): boolean {
    const o = this.ops;
    const b = this.bandwidth;
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

  /**
   * Charges `bytes` to the bandwidth bucket after the fact, even into debt
   * (a received frame's size is known only once it is read); later requests
   * wait until refill pays it back.
   */
  charge(bytes: number, nowMs: number): void {
    this.bandwidth?.force(bytes, nowMs);
  }

  /** Milliseconds from `nowMs` until {@link consume} of the same request can pass. */
  msUntil(ops: number, bytes: number, nowMs: number): number {
    return Math.max(this.ops?.msUntil(ops, nowMs) ?? 0, this.bandwidth?.msUntil(bytes, nowMs) ?? 0);
  }
}
