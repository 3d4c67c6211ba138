/**
 * Startup phase marks for `vmkit run`, off unless `VMKIT_TRACE_STARTUP` is
 * set: each {@link traceStartup} call writes one line to stderr,
 *
 * ```text
 * vmkit-startup <thread> <ms> <phase>
 * ```
 *
 * where `<ms>` counts from the origin: the value of `VMKIT_TRACE_STARTUP`
 * when it is a wall-clock time in milliseconds since the epoch (what
 * `bench/vmm_bench.ts` passes: the moment it spawned the process), else the
 * main thread's `performance.timeOrigin` (any other value, e.g. `1`). The
 * main thread hands that origin on to its Workers, so every thread's marks
 * share one clock.
 *
 * @example
 * ```ts
 * import { traceStartup } from "./startup_trace.ts";
 * traceStartup("vm created"); // writes nothing unless VMKIT_TRACE_STARTUP is set
 * ```
 *
 * @module
 */

const VAR = "VMKIT_TRACE_STARTUP";
const EPOCH_MS_MIN = 1e12; // 2001-09-09: anything smaller is a flag, not a time

function readOrigin(): number | undefined {
  // Without env permission (a library user's choice) tracing is simply off.
  if (Deno.permissions.querySync({ name: "env", variable: VAR }).state !== "granted") {
    return undefined;
  }
  const v = Deno.env.get(VAR);
  if (v === undefined || v === "" || v === "0") return undefined;
  const n = Number(v);
  if (Number.isFinite(n) && n >= EPOCH_MS_MIN) return n;
  // A flag: this thread's start is the origin, and Workers started later inherit it.
  const origin = performance.timeOrigin;
  Deno.env.set(VAR, String(origin));
  return origin;
}

const origin = readOrigin();
const scope = globalThis as { WorkerGlobalScope?: unknown; name?: unknown };
const thread = scope.WorkerGlobalScope === undefined
  ? "main"
  : typeof scope.name === "string" && scope.name !== ""
  ? scope.name
  : "worker";
const enc = new TextEncoder();

/** Whether startup tracing is on in this process. */
export function startupTraceOn(): boolean {
  return origin !== undefined;
}

/** Writes the mark `phase` (with this thread's name and the time from the origin) when on. */
export function traceStartup(phase: string): void {
  if (origin === undefined) return;
  const ms = performance.timeOrigin + performance.now() - origin;
  Deno.stderr.writeSync(enc.encode(`vmkit-startup ${thread} ${ms.toFixed(2)} ${phase}\n`));
}
