/**
 * Decision state machines evaluated once per window bucket: a threshold
 * detector with "exceeded for N ms" and a hysteresis clear, and an adaptive
 * detector (EWMA baseline + one-sided CUSUM).
 *
 * @module
 */

/** What an evaluation changed. */
export const Transition = { none: 0, raised: 1, cleared: 2 } as const;

/**
 * Threshold with persistence and hysteresis: raises after the value stayed
 * at or above the threshold for `exceededForMs`; clears after it stayed below
 * `clearRatio × threshold` for `clearForMs`.
 */
export class ThresholdDetector {
  /** Whether the alert is raised. */
  active = false;
  /** When the value first went over (ms), or -1. */
  #overSince = -1;
  /** When the value first went under the clear level while active (ms), or -1. */
  #underSince = -1;
  /** Largest value seen while raised, for the clear event. */
  peak = 0;
  /** When the last clear condition was met (ms): the first time under plus the clear time. */
  clearedAt = 0;

  /** Creates a detector with the given timing. */
  constructor(
    readonly exceededForMs: number,
    readonly clearRatio: number,
    readonly clearForMs: number,
  ) {}

  /**
   * Feeds the value at `nowMs`; `over` says the attack condition holds (the
   * value is at or over the threshold and any extra condition holds), `under`
   * that it is below the clear level.
   *
   * @returns a {@link Transition} value.
   */
  update(nowMs: number, value: number, over: boolean, under: boolean): number {
    if (!this.active) {
      if (!over) {
        this.#overSince = -1;
        return Transition.none;
      }
      if (this.#overSince < 0) this.#overSince = nowMs;
      if (nowMs - this.#overSince < this.exceededForMs) return Transition.none;
      this.active = true;
      this.#underSince = -1;
      this.peak = value;
      return Transition.raised;
    }
    if (value > this.peak) this.peak = value;
    if (!under) {
      this.#underSince = -1;
      return Transition.none;
    }
    if (this.#underSince < 0) this.#underSince = nowMs;
    if (nowMs - this.#underSince < this.clearForMs) return Transition.none;
    this.active = false;
    this.#overSince = -1;
    this.clearedAt = this.#underSince + this.clearForMs;
    return Transition.cleared;
  }
}

/**
 * Adaptive detector: an EWMA of the series' mean and variance learnt while
 * quiet, and a one-sided CUSUM of the excess over `mean + k·σ` that raises
 * when it passes `h·σ`. Clears when the value is back within `mean + k·σ`
 * for `clearForMs`. The baseline does not learn while raised, so a long
 * attack does not become normal.
 */
export class CusumDetector {
  /** Whether the alert is raised. */
  active = false;
  /** Baseline mean. */
  mean = 0;
  /** Baseline variance. */
  variance = 0;
  /** CUSUM statistic. */
  s = 0;
  /** Largest value seen while raised. */
  peak = 0;
  /** When the last clear condition was met (ms). */
  clearedAt = 0;
  #start = -1;
  #underSince = -1;

  /** Creates the detector. */
  constructor(
    readonly alpha: number,
    readonly k: number,
    readonly h: number,
    readonly minValue: number,
    readonly warmupMs: number,
    readonly clearForMs: number,
  ) {}

  /** Standard deviation used for scaling, floored so a flat baseline is not infinitely sensitive. */
  sigma(): number {
    const floor = Math.max(this.mean * 0.1, this.minValue * 0.05, 1);
    const sd = Math.sqrt(this.variance);
    return sd > floor ? sd : floor;
  }

  /** Feeds the value at `nowMs`; returns a {@link Transition} value. */
  update(nowMs: number, value: number): number {
    if (this.#start < 0) {
      this.#start = nowMs;
      this.mean = value;
    }
    const sigma = this.sigma();
    const limit = this.mean + this.k * sigma;
    if (this.active) {
      if (value > this.peak) this.peak = value;
      if (value > limit) {
        this.#underSince = -1;
        return Transition.none;
      }
      if (this.#underSince < 0) this.#underSince = nowMs;
      if (nowMs - this.#underSince < this.clearForMs) return Transition.none;
      this.active = false;
      this.s = 0;
      this.clearedAt = this.#underSince + this.clearForMs;
      return Transition.cleared;
    }
    const d = value - this.mean;
    this.s = Math.max(0, this.s + d - this.k * sigma);
    const warm = nowMs - this.#start >= this.warmupMs;
    if (warm && this.s > this.h * sigma && value >= this.minValue) {
      this.active = true;
      this.peak = value;
      this.#underSince = -1;
      return Transition.raised;
    }
    // Learn only from samples that do not look like the start of an attack.
    if (this.s === 0 || !warm) {
      this.mean += this.alpha * d;
      this.variance = (1 - this.alpha) * (this.variance + this.alpha * d * d);
    }
    return Transition.none;
  }
}
