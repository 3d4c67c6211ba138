/**
 * What a DSM program is: the regions it shares and the code each worker runs.
 *
 * A program module (built in, or any module given by path) has a named export
 * `program` of type {@link DsmProgram}.
 *
 * @module
 */

import { DsmConfigError } from "./errors.ts";
import { type RegionSpec, validateRegionSpec } from "./layout.ts";
import type { Region } from "./region.ts";

/** Numeric parameters of a program run (problem size, iterations, seed…). */
export type Params = Record<string, number>;

/** The values a program accepts for one parameter. */
export interface ParamLimit {
  /** Smallest value. */
  readonly min: number;
  /** Largest value. */
  readonly max: number;
  /** Whether only integers are accepted. */
  readonly integer: boolean;
}

/** An integer parameter from `min` to `max`. */
export function intParam(min: number, max: number): ParamLimit {
  return { min, max, integer: true };
}

/** The shape of a cluster run. */
export interface ClusterShape {
  /** Number of nodes (processes). */
  nodes: number;
  /** Workers per node. */
  workers: number;
}

/** What a worker's code sees: its place in the cluster, regions and synchronization. */
export interface DsmContext {
  /** This node's id (0-based). */
  readonly nodeId: number;
  /** Number of nodes. */
  readonly nodeCount: number;
  /** This worker's index within its node. */
  readonly workerId: number;
  /** Workers per node. */
  readonly workersPerNode: number;
  /** Global worker index: `nodeId * workersPerNode + workerId`. */
  readonly rank: number;
  /** Total workers in the cluster. */
  readonly size: number;
  /** The run's parameters (the program's defaults overridden by the caller). */
  readonly params: Readonly<Params>;
  /** The shared region named `name`. */
  region(name: string): Region;
  /** Acquires cluster-wide lock `id` (a non-negative integer). */
  lock(id: number): void;
  /** Releases lock `id` once this worker's earlier stores are performed. */
  unlock(id: number): void;
  /** Waits until every worker of every node reaches the barrier (a release and an acquire). */
  barrier(): void;
  /** Waits until this worker's earlier stores are performed. */
  fence(): void;
  /** Blocks holding stores of this worker that are not performed yet (lock-up free stores in flight). */
  pendingStores(): number;
}

/**
 * A program the DSM runtime can run on a cluster. Put it in a module as the
 * named export `program` and run it with `vmkit dsm run ./sum.ts --nodes 3
 * --workers 2 --check` (or `runLocalCluster({ program: "./sum.ts", ... })`).
 * Every worker runs {@link DsmProgram.run}; regions are zero-filled at start;
 * stores need no lock to be lock-up free, but other workers see them only
 * after a synchronization (`unlock`, `barrier`, `fence`).
 *
 * @example
 * ```ts
 * import type { DsmProgram } from "./mod.ts";
 *
 * // Each worker adds rank + 1 to a shared total under lock 0.
 * export const program: DsmProgram = {
 *   name: "sum",
 *   defaults: { rounds: 10 },
 *   limits: { rounds: { min: 1, max: 1000, integer: true } },
 *   regions: () => [{ name: "total", size: 8, blockSize: 64 }],
 *   run(ctx) {
 *     const total = ctx.region("total");
 *     for (let i = 0; i < (ctx.params.rounds ?? 0); i++) {
 *       ctx.lock(0);
 *       total.storeF64(0, total.loadF64(0) + ctx.rank + 1);
 *       ctx.unlock(0);
 *     }
 *   },
 *   result: (ctx) => ctx.region("total").loadF64(0),
 *   sequential: (params, shape) => {
 *     const n = (shape?.nodes ?? 1) * (shape?.workers ?? 1);
 *     return (params.rounds ?? 0) * n * (n + 1) / 2;
 *   },
 * };
 * ```
 */
export interface DsmProgram {
  /** Short name, for reports. */
  readonly name: string;
  /** Default parameters; callers override them by name (and only these names). */
  readonly defaults: Readonly<Params>;
  /**
   * What each parameter accepts; a value outside is refused before any node
   * starts (a negative size must not become a bogus run). Parameters without
   * a limit accept any finite number.
   */
  readonly limits?: Readonly<Record<string, ParamLimit>>;
  /** The shared regions of a run. */
  regions(params: Readonly<Params>, shape: ClusterShape): RegionSpec[];
  /** The code every worker runs. The runtime adds a barrier after it. */
  run(ctx: DsmContext): void | Promise<void>;
  /** Computed by rank 0 after every worker finished; must be JSON-serializable. */
  result?(ctx: DsmContext): unknown;
  /**
   * The same result from a plain sequential run without DSM, to check a
   * cluster run against (`vmkit dsm run --check`); `shape` is the cluster's
   * (`--check` always gives it), for results that depend on how many workers ran.
   */
  sequential?(params: Readonly<Params>, shape?: ClusterShape): unknown;
}

/**
 * The regions `program` declares for a run, each checked (block size, size,
 * name) and no name twice: what every node allocates, checkable before any
 * node starts.
 *
 * @throws {DsmConfigError} naming the region and what is wrong.
 */
export function programRegions(
  program: Pick<DsmProgram, "regions">,
  params: Readonly<Params>,
  shape: ClusterShape,
): RegionSpec[] {
  const specs = program.regions(params, shape);
  if (!Array.isArray(specs)) {
    throw new DsmConfigError("the program's regions() must return an array of region specs");
  }
  const names = new Set<string>();
  for (const spec of specs) {
    validateRegionSpec(spec);
    if (names.has(spec.name)) throw new DsmConfigError(`region '${spec.name}' is declared twice`);
    names.add(spec.name);
  }
  return specs;
}

/**
 * Parses `KEY=VALUE` parameters over a program's defaults, checking each
 * against the program's parameter names and {@link DsmProgram.limits}.
 *
 * @throws {DsmConfigError} naming the parameter and what it accepts.
 */
export function parseParams(
  program: Pick<DsmProgram, "name" | "defaults" | "limits">,
  pairs: readonly string[],
): Params {
  const out: Params = { ...program.defaults };
  const names = Object.keys(program.defaults);
  for (const pair of pairs) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(pair);
    const key = m?.[1];
    const text = m?.[2]?.trim() ?? "";
    const v = text === "" ? NaN : Number(text);
    if (key === undefined || !Number.isFinite(v)) {
      throw new DsmConfigError(`parameter '${pair}' is not KEY=NUMBER`);
    }
    if (!names.includes(key)) {
      throw new DsmConfigError(
        `program '${program.name}' has no parameter '${key}' ` +
          `(its parameters: ${names.join(", ") || "none"})`,
      );
    }
    const lim = program.limits?.[key];
    if (
      lim !== undefined && (v < lim.min || v > lim.max || (lim.integer && !Number.isInteger(v)))
    ) {
      throw new DsmConfigError(
        `parameter ${key}=${text} is out of range: program '${program.name}' takes ${key} as ` +
          `${lim.integer ? "an integer" : "a number"} from ${lim.min} to ${lim.max}`,
      );
    }
    out[key] = v;
  }
  return out;
}
