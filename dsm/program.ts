/**
 * What a DSM program is: the regions it shares and the code each worker runs.
 *
 * A program module (built in, or any module given by path) has a named export
 * `program` of type {@link DsmProgram}.
 *
 * @module
 */

import type { RegionSpec } from "./layout.ts";
import type { Region } from "./region.ts";

/** Numeric parameters of a program run (problem size, iterations, seed…). */
export type Params = Record<string, number>;

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

/** A program the DSM runtime can run on a cluster. */
export interface DsmProgram {
  /** Short name, for reports. */
  readonly name: string;
  /** Default parameters; callers override them by name. */
  readonly defaults: Readonly<Params>;
  /** The shared regions of a run. */
  regions(params: Readonly<Params>, shape: ClusterShape): RegionSpec[];
  /** The code every worker runs. The runtime adds a barrier after it. */
  run(ctx: DsmContext): void | Promise<void>;
  /** Computed by rank 0 after every worker finished; must be JSON-serializable. */
  result?(ctx: DsmContext): unknown;
  /** The same result from a plain sequential run without DSM, to check a cluster run against. */
  sequential?(params: Readonly<Params>): unknown;
}
