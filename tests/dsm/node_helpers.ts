/**
 * Helpers of the DSM tests that drive node processes directly: free ports,
 * a node process with a cluster secret, and a fake peer that speaks the
 * handshake (or does not).
 *
 * @module
 */

import { clusterAuth, dialHandshake, SECRET_ENV } from "../../dsm/handshake.ts";

const NODE_MAIN = new URL("../../dsm/node_main.ts", import.meta.url).pathname;

/** The secret the tests give their nodes. */
export const SECRET = "dsm-test-secret-0123456789abcdef";

/** `n` free loopback ports, ascending (so node id = index). */
export function freePorts(n: number): number[] {
  const ls = Array.from({ length: n }, () => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  const ports = ls.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of ls) l.close();
  return ports.sort((a, b) => a - b);
}

/** A node process and its output, killed after `killMs` if it has not exited. */
export interface NodeProcess {
  /** Resolves when the process exits. */
  done: Promise<{ code: number; stdout: string; stderr: string; ms: number; killed: boolean }>;
}

/** Starts `dsm/node_main.ts` listening on `port` with `peers`, the secret in its environment. */
export function startNode(
  port: number,
  peers: number[],
  opts: {
    program?: string;
    params?: string[];
    secret?: string;
    extra?: string[];
    killMs?: number;
  } = {},
): NodeProcess {
  const args = [
    "run",
    "-A",
    NODE_MAIN,
    "--listen",
    `127.0.0.1:${port}`,
    "--peers",
    peers.map((p) => `127.0.0.1:${p}`).join(","),
    "--program",
    opts.program ?? "sor",
    ...(opts.params ?? ["n=16", "iters=2"]).flatMap((p) => ["--param", p]),
    ...(opts.extra ?? []),
  ];
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args,
    env: { [SECRET_ENV]: opts.secret ?? SECRET },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, opts.killMs ?? 60_000);
  const done = child.output().then((out) => {
    clearTimeout(timer);
    const dec = new TextDecoder();
    return {
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      ms: performance.now() - t0,
      killed,
    };
  });
  return { done };
}

/** Connects to `port`, retrying while nothing listens there yet. */
export async function connectRetry(port: number): Promise<Deno.TcpConn> {
  for (let i = 0;; i++) {
    try {
      return await Deno.connect({ hostname: "127.0.0.1", port });
    } catch (err) {
      if (!(err instanceof Deno.errors.ConnectionRefused) || i > 1000) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/**
 * Joins as member `self` of the cluster on `ports` by dialing `peer`: the
 * real handshake with `secret`. Returns the authenticated connection.
 */
export async function joinAs(
  ports: number[],
  self: number,
  peer: number,
  secret = SECRET,
): Promise<Deno.TcpConn> {
  const auth = await clusterAuth(
    new TextEncoder().encode(secret),
    ports.map((p) => `127.0.0.1:${p}`),
  );
  const conn = await connectRetry(ports[peer] ?? 0);
  await dialHandshake(conn, auth, self, peer, Date.now() + 20_000);
  return conn;
}
