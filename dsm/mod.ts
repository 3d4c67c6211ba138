/**
 * vmkit `dsm`: lock-up free, fine-grained distributed shared memory across
 * processes and hosts, after the Shasta system (seed US5787480A).
 *
 * Programs share named regions split into blocks (64 B to 4 KiB per region)
 * of 64-byte lines. Every typed load and store runs an inline check: one
 * lookup in a per-line state table (a `Uint8Array` over a
 * `SharedArrayBuffer`), no allocation. A store to a block held shared or not
 * at all is lock-up free: the worker writes its local copy, records the bytes
 * it modified, sends one request (read-exclusive or upgrade) and continues;
 * when the exclusive copy arrives the node merges the recorded bytes into it.
 * A load of an invalid block waits, blocking only the worker that issued it.
 * Release consistency: `unlock`, `barrier` and `fence` wait until the
 * worker's earlier stores are performed, so data-race-free programs see
 * sequentially consistent results. `blockingStores` makes every store wait, to
 * measure the difference.
 *
 * The protocol is directory-based with a home node per block (cyclic or
 * blocked placement); line states are invalid, shared, exclusive, four
 * pending states and revoking (an exclusive copy being written back); the
 * requesting side is `cache.ts`, the home side `directory.ts`; messages are
 * READ, READX, UPGRADE, INVALIDATE, ACK, DATA, FETCH and WRITEBACK, plus lock
 * and barrier messages, in length-prefixed little-endian frames over TCP
 * (`frames.ts`). Nodes are Deno processes
 * from a static membership list; each runs N workers that share the node's
 * cached blocks through `SharedArrayBuffer` and `Atomics`. A node whose
 * connection closes without a goodbye is reported to every other node as a
 * {@link DsmNodeDeathError}; every cached line is then invalidated so no load
 * returns a value after the failure.
 *
 * A program is a module with a named export `program` ({@link DsmProgram});
 * built-ins: sor, matmul, lu, histogram, stress, store_kernel, read_latency,
 * death_watch, check_cost.
 *
 * Limits, by design: every node caches whole regions (no eviction, so a
 * node holds each region about three times: cache, recorded-store mask, home
 * copy); at most 32 nodes and 31 workers per node. The protocol thread takes
 * an exclusive copy away only after every worker has left any fast path it was
 * in (a worker proves that at its next miss, synchronization or wait), so a
 * worker that loops for long over hits alone delays other nodes' requests for
 * its exclusive blocks, like a Shasta processor that does not poll. For the
 * cheapest hits, hoist an accessor out of a hot loop
 * (`const load = region.loadF64`).
 *
 * Performance, as measured by `bench/dsm_*_bench.ts`: every worker has its
 * own authenticated request channel to every other node and writes its miss
 * requests there itself (`send(2)` through FFI, `socket_ffi.ts`; without FFI
 * it rings its node thread instead); answers and everything else travel on
 * the one link between two nodes, so nothing the home sends later can
 * overtake an answer. A remote read miss thus crosses worker → home node →
 * node thread → worker: a raw Deno TCP round trip plus one in-process wake-up
 * (`Atomics.wait`). The latency benchmark measures the raw round trip and a
 * "relayed" one (two wake-ups) as its peers, with no DSM code. A hit
 * costs a state-byte load and compare, but with the check's cold miss branch
 * (a call, or a deoptimization exit) inside a caller's loop V8 keeps more of
 * the loop's values in stack slots, and it checks the accessor's identity on
 * every iteration unless the accessor is hoisted: a tight loop of hits runs
 * about 3x (loads) to 5x (stores) slower than the same loop over a bare typed
 * array, a dot product about 5x; a loop bound by a dependence through memory
 * (an in-place SOR sweep) runs at the same speed.
 *
 * Hand-written rather than a library: no maintained TypeScript DSM exists, and
 * the protocol needs `SharedArrayBuffer` layouts no npm package provides.
 *
 * @example
 * ```ts
 * import { runLocalCluster } from "@vmkit/vmkit/dsm";
 *
 * // Three local node processes, two workers each, red-black SOR:
 * const run = await runLocalCluster({ program: "sor", nodes: 3, workers: 2 });
 * console.log(run.result, run.stats.map((s) => s.messages));
 * ```
 *
 * @module
 */

export * from "./errors.ts";
export {
  type HomePolicy,
  LINE_SIZE,
  MAX_BLOCK_SIZE,
  MAX_WORKERS,
  MIN_BLOCK_SIZE,
  type RegionSpec,
  State,
} from "./layout.ts";
export { type Message, MsgType, type MsgTypeValue } from "./frames.ts";
export {
  type ClusterShape,
  type DsmContext,
  type DsmProgram,
  intParam,
  type ParamLimit,
  type Params,
  parseParams,
  programRegions,
} from "./program.ts";
export {
  acceptHandshake,
  type ClusterAuth,
  clusterAuth,
  dialHandshake,
  MIN_SECRET_BYTES,
  SECRET_ENV,
} from "./handshake.ts";
export { Region } from "./region.ts";
export { DsmNode, MAX_NODES, type NodeOptions, type NodeReport, type NodeStats } from "./node.ts";
export {
  type Endpoint,
  formatEndpoint,
  orderMembers,
  parseEndpoint,
  type TrafficStats,
} from "./transport.ts";
export {
  type ClusterOptions,
  type ClusterResult,
  type LocalCluster,
  type NodeOutcome,
  runLocalCluster,
  startLocalCluster,
} from "./cluster.ts";
export {
  loadClusterSecret,
  type LoadedProgram,
  loadProgram,
  type NodeArgs,
  nodeMain,
  runNode,
} from "./node_main.ts";
export { BUILTIN_PROGRAMS } from "./programs/mod.ts";
