/**
 * The built-in DSM programs, by name.
 *
 * @module
 */

/** Built-in program names and the modules that export them. */
export const BUILTIN_PROGRAMS: Readonly<Record<string, string>> = {
  sor: new URL("./sor.ts", import.meta.url).href,
  matmul: new URL("./matmul.ts", import.meta.url).href,
  lu: new URL("./lu.ts", import.meta.url).href,
  histogram: new URL("./histogram.ts", import.meta.url).href,
  stress: new URL("./stress.ts", import.meta.url).href,
  store_kernel: new URL("./store_kernel.ts", import.meta.url).href,
  read_latency: new URL("./read_latency.ts", import.meta.url).href,
  death_watch: new URL("./death_watch.ts", import.meta.url).href,
  check_cost: new URL("./check_cost.ts", import.meta.url).href,
};
