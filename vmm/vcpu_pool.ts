/**
 * vCPU Workers started ahead of need. A Worker takes tens of milliseconds to
 * start here (it loads and compiles the vCPU loop and the devices), which
 * would be most of a restore's time to running; a VMM that will restore a
 * snapshot (or waits for its configuration) starts them early, and
 * `StandbyMachine.create` (so `Machine.create`) takes from the pool before it
 * starts new ones. `vmkit run` starts one at process start
 * ({@link prestartVcpuWorker}), so a boot never waits for its Worker either. A standby machine (`standby.ts`) goes further: its Workers
 * are also set up on their vCPUs.
 *
 * An idle Worker keeps the process alive: call {@link releaseVcpuWorkers}
 * when the pool is no longer wanted.
 *
 * @example
 * ```ts
 * import { prewarmVcpuWorkers, releaseVcpuWorkers } from "./vcpu_pool.ts";
 * await prewarmVcpuWorkers(2);
 * // ... Machine.create(...) now starts without waiting for its Workers ...
 * releaseVcpuWorkers();
 * ```
 *
 * @module
 */

import { builtShimPath } from "../native/build.ts";
import { loadShim } from "../native/ffi.ts";
import type { VcpuPreload } from "./vcpu.ts";

const URL_ = new URL("./vcpu_worker.ts", import.meta.url).href;
const pool: Worker[] = [];

function spawn(name: string): Worker {
  return new Worker(URL_, { type: "module", name });
}

/**
 * Starts Workers until `count` wait in the pool; each opens the shim (which
 * is built first if needed) while it waits.
 */
export async function prewarmVcpuWorkers(count: number): Promise<void> {
  const lib = await loadShim();
  while (pool.length < count) {
    const w = spawn(`vcpu-pool${pool.length}`);
    const preload: VcpuPreload = { preload: lib.path };
    w.postMessage(preload);
    pool.push(w);
  }
}

/**
 * Starts one vCPU Worker now without waiting for anything, e.g. at process
 * start (`vmkit run` does): it loads and compiles its modules, and opens the
 * shim when it is built already, while the main thread loads its own and
 * builds the VM. The next machine takes it from the pool.
 */
export function prestartVcpuWorker(): void {
  const w = spawn(`vcpu-pool${pool.length}`);
  pool.push(w);
  const path = builtShimPath();
  if (path !== undefined) {
    const preload: VcpuPreload = { preload: path };
    w.postMessage(preload);
  }
}

/** `count` vCPU Workers: pooled ones first, then new ones. */
export function takeVcpuWorkers(count: number): Worker[] {
  return Array.from({ length: count }, (_, id) => pool.shift() ?? spawn(`vcpu${id}`));
}

/** Terminates the Workers still in the pool. */
export function releaseVcpuWorkers(): void {
  for (const w of pool.splice(0)) w.terminate();
}
