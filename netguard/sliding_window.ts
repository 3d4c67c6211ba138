/**
 * Counters over a sliding time window: a ring of fixed-width buckets with
 * running sums, so adding a sample and reading a rate are O(1) and allocate
 * nothing.
 *
 * @module
 */

/** Index of each series kept per monitor. */
export const Metric = {
  packets: 0,
  bytes: 1,
  syn: 2,
  synAck: 3,
  ack: 4,
  rst: 5,
  udp: 6,
  icmp: 7,
  fragments: 8,
  newFlows: 9,
  tcp: 10,
  malformed: 11,
  /** Packets of established, acknowledged TCP flows (see `conn_tracker.ts`). */
  establishedPackets: 12,
  /** Bytes of established, acknowledged TCP flows. */
  establishedBytes: 13,
} as const;

/** Number of series in {@link Metric}. */
export const METRIC_COUNT = 14;

/** Names of {@link Metric} series, indexed by value. */
export const METRIC_NAMES: readonly string[] = [
  "packets",
  "bytes",
  "syn",
  "syn_ack",
  "ack",
  "rst",
  "udp",
  "icmp",
  "fragments",
  "new_flows",
  "tcp",
  "malformed",
  "established_packets",
  "established_bytes",
];

/** {@link METRIC_COUNT} series over a window of `buckets × bucketMs`. */
export class SlidingCounters {
  /** Width of one bucket in ms. */
  readonly bucketMs: number;
  /** Number of buckets in the window. */
  readonly buckets: number;
  readonly #cells: Float64Array;
  /** Sums of every bucket in the window but the current one. */
  readonly #sums: Float64Array;
  /** Index (time / bucketMs) of the current bucket; -1 before the first sample. */
  #current = -1;
  #slot = 0;

  /** Creates counters whose window is `windowMs` long, cut into `bucketMs` buckets. */
  constructor(windowMs: number, bucketMs: number) {
    this.bucketMs = bucketMs;
    this.buckets = Math.max(1, Math.round(windowMs / bucketMs));
    this.#cells = new Float64Array(this.buckets * METRIC_COUNT);
    this.#sums = new Float64Array(METRIC_COUNT);
  }

  /** Window length in ms. */
  get windowMs(): number {
    return this.buckets * this.bucketMs;
  }

  /** Bucket index of the current bucket (-1 before any time was seen). */
  get currentBucket(): number {
    return this.#current;
  }

  /**
   * Moves the current bucket to the one holding `bucket`, clearing the ones
   * that fell out of the window. Earlier buckets are ignored.
   */
  rotateTo(bucket: number): void {
    if (this.#current < 0) {
      this.#current = bucket;
      return;
    }
    let steps = bucket - this.#current;
    if (steps <= 0) return;
    if (steps > this.buckets) steps = this.buckets;
    const cells = this.#cells;
    const sums = this.#sums;
    for (let s = 0; s < steps; s++) {
      // The current bucket joins the closed ones; the oldest leaves the window.
      let base = this.#slot * METRIC_COUNT;
      for (let m = 0; m < METRIC_COUNT; m++) sums[m] = (sums[m] ?? 0) + (cells[base + m] ?? 0);
      this.#slot = this.#slot + 1 === this.buckets ? 0 : this.#slot + 1;
      base = this.#slot * METRIC_COUNT;
      for (let m = 0; m < METRIC_COUNT; m++) {
        sums[m] = (sums[m] ?? 0) - (cells[base + m] ?? 0);
        cells[base + m] = 0;
      }
    }
    this.#current = bucket;
  }

  /** Adds `value` to series `metric` in the current bucket (one write: sums fold in at rotation). */
  add(metric: number, value: number): void {
    const i = this.#slot * METRIC_COUNT + metric;
    this.#cells[i] = (this.#cells[i] ?? 0) + value;
  }

  /** Sum of series `metric` over the window. */
  sum(metric: number): number {
    const s = (this.#sums[metric] ?? 0) + (this.#cells[this.#slot * METRIC_COUNT + metric] ?? 0);
    // Subtracting floats can leave -0.0000001; a count is never negative.
    return s < 0 ? 0 : s;
  }

  /** Rate of series `metric` per second over the window. */
  rate(metric: number): number {
    return (this.sum(metric) * 1000) / this.windowMs;
  }
}
