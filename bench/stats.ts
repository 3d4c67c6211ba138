/**
 * What every benchmark prints the same way: the median of its runs with the
 * range, and the machine it ran on with the load at that moment (the brief:
 * "median of ≥5 with the range and the machine load printed; never a
 * best-of").
 *
 * @module
 */

/** Median of `xs` (the mean of the two middle values for an even count); NaN when empty. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
}

/** Median, smallest and largest of some runs. */
export interface Spread {
  /** The median run. */
  readonly med: number;
  /** The smallest run. */
  readonly min: number;
  /** The largest run. */
  readonly max: number;
}

/** The median and range of `xs`. */
export function spread(xs: readonly number[]): Spread {
  return { med: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

/** "median [min-max]" of `xs`, each number written by `fmt`. */
export function medianRange(
  xs: readonly number[],
  fmt: (x: number) => string = (x) => x.toFixed(2),
): string {
  const s = spread(xs);
  return `${fmt(s.med)} [${fmt(s.min)}-${fmt(s.max)}]`;
}

/** The 1, 5 and 15 minute load averages, e.g. "3.10 4.80 6.00". */
export function loadAverage(): string {
  return Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
}

/** One line naming the machine: CPU count, CPU model and the load now. */
export function machineLine(): string {
  let cpu = "unknown CPU";
  try {
    cpu = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ?? cpu;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return `nproc ${navigator.hardwareConcurrency}, ${cpu}, load ${loadAverage()}`;
}
