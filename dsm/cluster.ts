/**
 * Starts a local cluster: N node processes on 127.0.0.1, each running
 * `node_main.ts` with the same program and membership, and gathers their
 * results and counters.
 *
 * @module
 */

import { DsmConfigError, DsmError } from "./errors.ts";
import type { NodeStats } from "./node.ts";
import type { Params } from "./program.ts";
import { SECRET_ENV } from "./handshake.ts";

/** Options of a local cluster run. */
export interface ClusterOptions {
  /** Built-in program name or module path. */
  program: string;
  /** Number of node processes (1 to 32). */
  nodes: number;
  /** Workers per node (default 1). */
  workers?: number;
  /** Parameters overriding the program's defaults. */
  params?: Params;
  /** Run with blocking stores instead of lock-up free stores. */
  blockingStores?: boolean;
  /** Kill every node after this long (default 120 s). */
  timeoutMs?: number;
  /**
   * The command that starts one node, before the node's own arguments
   * (default: this Deno running `node_main.ts`; a compiled `vmkit` passes
   * itself and `dsm node`).
   */
  nodeCommand?: readonly string[];
}

/** How one node process ended. */
export interface NodeOutcome {
  /** Node id. */
  node: number;
  /** Exit code (or 128+signal). */
  code: number;
  /** Its stdout. */
  stdout: string;
  /** Its stderr. */
  stderr: string;
  /** The `DSM-RESULT` it printed (node 0), if any. */
  result?: unknown;
  /** The `DSM-STATS` it printed, if any. */
  stats?: NodeStats;
}

/** A running local cluster. */
export interface LocalCluster {
  /** Process ids, by node id. */
  readonly pids: number[];
  /** Sends a signal to node `id`'s process. */
  kill(id: number, signal: Deno.Signal): void;
  /** Resolves when every node has connected to every other (rejects if one exits first). */
  readonly ready: Promise<void>;
  /** Resolves when every node has exited. */
  readonly finished: Promise<NodeOutcome[]>;
}

/** The result of a successful local run. */
export interface ClusterResult {
  /** The program's result from node 0. */
  result: unknown;
  /** Every node's counters. */
  stats: NodeStats[];
  /** Wall-clock milliseconds of the whole run, process start included. */
  wallMs: number;
}

const NODE_MAIN = new URL("./node_main.ts", import.meta.url).href;
const PORT_ATTEMPTS = 3;

async function freePorts(n: number): Promise<number[]> {
  const listeners = Array.from(
    { length: n },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0, transport: "tcp" }),
  );
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  await Promise.resolve();
  return ports;
}

/** Starts the node processes of a local cluster. */
export async function startLocalCluster(opts: ClusterOptions): Promise<LocalCluster> {
  if (!Number.isInteger(opts.nodes) || opts.nodes < 1 || opts.nodes > 32) {
    throw new DsmConfigError(`--nodes ${opts.nodes} must be 1 to 32`);
  }
  const ports = await freePorts(opts.nodes);
  // Node ids are the members sorted by host then port: sort so id = index here.
  ports.sort((a, b) => a - b);
  const addrs = ports.map((p) => `127.0.0.1:${p}`);
  const params = Object.entries(opts.params ?? {}).flatMap(([k, v]) => ["--param", `${k}=${v}`]);
  // A fresh cluster secret per run: only these processes can join each other.
  const secret = Array.from(
    crypto.getRandomValues(new Uint8Array(32)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  const children = addrs.map((addr) => {
    const peers = addrs.filter((x) => x !== addr).join(",");
    const [cmd = Deno.execPath(), ...prefix] = opts.nodeCommand ??
      [Deno.execPath(), "run", "-A", "--no-prompt", NODE_MAIN];
    const args = [
      ...prefix,
      "--listen",
      addr,
      "--peers",
      peers,
      "--program",
      opts.program,
      "--workers",
      String(opts.workers ?? 1),
      ...params,
    ];
    if (opts.blockingStores === true) args.push("--blocking-stores");
    return new Deno.Command(cmd, {
      args,
      // In the environment, not argv: other users can read a process's arguments.
      env: { [SECRET_ENV]: secret },
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    })
      .spawn();
  });
  const timer = setTimeout(() => {
    for (const c of children) {
      try {
        c.kill("SIGKILL");
      } catch (err) {
        if (!(err instanceof TypeError)) throw err;
      }
    }
  }, opts.timeoutMs ?? 120_000);
  const dec = new TextDecoder();
  const readyFlags = children.map(() => false);
  let markReady: () => void = () => {};
  let failReady: (e: Error) => void = () => {};
  const ready = new Promise<void>((resolve, reject) => {
    markReady = resolve;
    failReady = reject;
  });
  // Callers that never await `ready` must not see an unhandled rejection.
  ready.catch(() => {});
  const finished = Promise.all(children.map(async (c, node): Promise<NodeOutcome> => {
    const stderr = new Response(c.stderr).text();
    let stdout = "";
    for await (const chunk of c.stdout) {
      stdout += dec.decode(chunk, { stream: true });
      if (!readyFlags[node] && stdout.includes("DSM-READY")) {
        readyFlags[node] = true;
        if (readyFlags.every((f) => f)) markReady();
      }
    }
    const status = await c.status;
    if (!readyFlags[node]) {
      failReady(new DsmError(`node ${node} exited before the cluster formed`));
      // The others cannot form the cluster without it: stop them now rather
      // than after their connect timeout.
      for (const other of children) {
        if (other === c) continue;
        try {
          other.kill("SIGKILL");
        } catch (err) {
          if (!(err instanceof TypeError)) throw err;
        }
      }
    }
    const outcome: NodeOutcome = {
      node,
      code: status.signal === null ? status.code : 128 + (status.code || 9),
      stdout,
      stderr: await stderr,
    };
    for (const line of stdout.split("\n")) {
      if (line.startsWith("DSM-RESULT ")) outcome.result = JSON.parse(line.slice(11));
      if (line.startsWith("DSM-STATS ")) outcome.stats = JSON.parse(line.slice(10)) as NodeStats;
    }
    return outcome;
  })).finally(() => clearTimeout(timer));
  return {
    pids: children.map((c) => c.pid),
    kill: (id: number, signal: Deno.Signal) => {
      const c = children[id];
      if (c === undefined) throw new DsmConfigError(`no node ${id} in this cluster`);
      c.kill(signal);
    },
    ready,
    finished,
  };
}

/** Runs a program on a local cluster and returns node 0's result and all counters. */
export async function runLocalCluster(opts: ClusterOptions): Promise<ClusterResult> {
  const t0 = performance.now();
  let outcomes: NodeOutcome[] = [];
  for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
    const cluster = await startLocalCluster(opts);
    outcomes = await cluster.finished;
    // A free port picked for a node may be taken by another process before the
    // node binds it: start over with new ports.
    if (!outcomes.some((o) => /address already in use|AddrInUse/i.test(o.stderr))) break;
  }
  const bad = outcomes.filter((o) => o.code !== 0);
  if (bad.length > 0) {
    const lines = bad.map((o) =>
      `node ${o.node} exited ${o.code}: ${o.stderr.trim().split("\n").slice(-3).join(" | ")}`
    );
    throw new DsmError(
      `program '${opts.program}' failed on ${bad.length} node(s): ${lines.join("; ")}`,
    );
  }
  const stats: NodeStats[] = [];
  for (const o of outcomes) if (o.stats !== undefined) stats.push(o.stats);
  return { result: outcomes[0]?.result, stats, wallMs: performance.now() - t0 };
}
