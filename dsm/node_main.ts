/**
 * Runs one DSM node from command-line arguments; the entry of
 * `vmkit dsm node` and of the processes a local cluster starts.
 *
 * Output: `DSM-READY` once every peer is connected; on success the node
 * then prints `DSM-STATS <json>` and, on node 0,
 * `DSM-RESULT <json>` to stdout, and exits 0. A failure (a dead peer, a
 * program error) prints one line to stderr and exits 1; usage errors exit 64.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import { DsmConfigError, DsmError } from "./errors.ts";
import { clusterAuth, MIN_SECRET_BYTES, SECRET_ENV } from "./handshake.ts";
import { DsmNode, type NodeReport } from "./node.ts";
import { type DsmProgram, parseParams } from "./program.ts";
import { BUILTIN_PROGRAMS } from "./programs/mod.ts";
import { type Endpoint, formatEndpoint, orderMembers, parseEndpoint } from "./transport.ts";

/** The usage text of a node. */
export const NODE_USAGE: string =
  `usage: vmkit dsm node --listen HOST:PORT --peers HOST:PORT,... --program NAME|PATH
                      [--workers N] [--param KEY=VALUE]... [--blocking-stores]
                      [--secret-file FILE] [--start-timeout MS]

Runs one node of a DSM cluster. Every node gets the same program, the same
membership (its own --listen plus --peers) and the same cluster secret
(--secret-file FILE, else $${SECRET_ENV}); nodes prove to each other that they
know it and refuse any other connection. Node ids are the members sorted by
host then port. PROGRAM is a built-in (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) or the
path of a module whose named export 'program' is a DsmProgram.`;

/** A loaded program and the URL its workers import. */
export interface LoadedProgram {
  /** Module URL. */
  url: string;
  /** The program. */
  program: DsmProgram;
}

/**
 * A program module must be a regular file: importing a FIFO or a device
 * (`/dev/zero`) would block or read forever.
 */
function checkProgramFile(spec: string): void {
  const names = Object.keys(BUILTIN_PROGRAMS).join(", ");
  if (spec.includes("\0")) {
    throw new DsmConfigError(`program path ${JSON.stringify(spec)} contains a NUL byte`);
  }
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(spec);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new DsmConfigError(`program '${spec}' is neither a built-in (${names}) nor a file`);
    }
    throw new DsmConfigError(
      `cannot read program '${spec}': ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  if (!st.isFile) {
    throw new DsmConfigError(
      `program '${spec}' is ${st.isDirectory ? "a directory" : "not a regular file"}; ` +
        `give a built-in (${names}) or a module file`,
    );
  }
}

/** Resolves a built-in name or a module path to a program. */
export async function loadProgram(spec: string): Promise<LoadedProgram> {
  const builtin = BUILTIN_PROGRAMS[spec];
  if (builtin === undefined) checkProgramFile(spec);
  const url = builtin ?? pathToFileURL(resolve(spec)).href;
  let mod: Record<string, unknown>;
  try {
    mod = await import(url);
  } catch (err) {
    throw new DsmConfigError(
      `program '${spec}' is neither a built-in (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) ` +
        `nor a loadable module: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  const program = mod.program as DsmProgram | undefined;
  if (typeof program?.run !== "function" || typeof program.regions !== "function") {
    throw new DsmConfigError(`module ${url} has no export 'program' with run() and regions()`);
  }
  return { url, program };
}

/** A parsed node command line. */
export interface NodeArgs {
  /** This node's address. */
  listen: Endpoint;
  /** The other nodes. */
  peers: Endpoint[];
  /** Program name or path. */
  program: string;
  /** Workers on this node. */
  workers: number;
  /** `KEY=VALUE` parameters. */
  params: string[];
  /** Blocking-store switch. */
  blockingStores: boolean;
  /** The cluster secret (see {@link loadClusterSecret}). */
  secret: Uint8Array;
  /** How long to wait for every peer (default 20 s). */
  startTimeoutMs?: number;
}

const MAX_SECRET_FILE = 4096;

/**
 * The cluster secret: the bytes of `secretFile` (one trailing newline
 * dropped), else of `$VMKIT_DSM_SECRET`.
 *
 * @throws {DsmConfigError} when there is none, it is too short, or the file
 * is not a small regular file.
 */
export function loadClusterSecret(secretFile?: string): Uint8Array {
  let bytes: Uint8Array;
  if (secretFile !== undefined) {
    try {
      const st = Deno.statSync(secretFile);
      if (!st.isFile || st.size > MAX_SECRET_FILE) {
        throw new DsmConfigError(
          `--secret-file '${secretFile}' must be a regular file of at most ${MAX_SECRET_FILE} bytes`,
        );
      }
      bytes = Deno.readFileSync(secretFile);
    } catch (err) {
      if (err instanceof DsmConfigError) throw err;
      throw new DsmConfigError(
        `cannot read --secret-file '${secretFile}': ${err instanceof Error ? err.message : err}`,
      );
    }
    if (bytes.at(-1) === 0x0a) bytes = bytes.subarray(0, bytes.length - 1);
  } else {
    const env = Deno.env.get(SECRET_ENV);
    if (env === undefined || env === "") {
      throw new DsmConfigError(
        `a cluster secret is required: give --secret-file FILE or set $${SECRET_ENV}, ` +
          `the same on every node (at least ${MIN_SECRET_BYTES} bytes)`,
      );
    }
    bytes = new TextEncoder().encode(env);
  }
  if (bytes.length < MIN_SECRET_BYTES) {
    throw new DsmConfigError(
      `the cluster secret has ${bytes.length} bytes; give at least ${MIN_SECRET_BYTES}`,
    );
  }
  return bytes;
}

/** Parses a node command line; returns `null` for `--help`. */
export function parseNodeArgs(args: string[]): NodeArgs | null {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      listen: { type: "string" },
      peers: { type: "string" },
      program: { type: "string" },
      workers: { type: "string" },
      param: { type: "string", multiple: true },
      "blocking-stores": { type: "boolean" },
      "secret-file": { type: "string" },
      "start-timeout": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help === true) return null;
  if (values.listen === undefined) throw new DsmConfigError("--listen HOST:PORT is required");
  if (values.program === undefined) throw new DsmConfigError("--program NAME|PATH is required");
  const peers = values.peers === undefined || values.peers === ""
    ? []
    : values.peers.split(",").map(parseEndpoint);
  const workers = Number(values.workers ?? "1");
  if (!Number.isInteger(workers) || workers < 1) {
    throw new DsmConfigError(`--workers '${values.workers}' must be a positive integer`);
  }
  const startTimeoutMs = Number(values["start-timeout"] ?? "20000");
  if (!Number.isInteger(startTimeoutMs) || startTimeoutMs < 1) {
    throw new DsmConfigError(
      `--start-timeout '${values["start-timeout"]}' must be a positive number of milliseconds`,
    );
  }
  return {
    listen: parseEndpoint(values.listen),
    peers,
    program: values.program,
    workers,
    params: values.param ?? [],
    blockingStores: values["blocking-stores"] === true,
    secret: loadClusterSecret(values["secret-file"]),
    startTimeoutMs,
  };
}

/** Runs a node to completion; `onReady` runs once every peer is connected. */
export async function runNode(a: NodeArgs, onReady?: () => void): Promise<NodeReport> {
  const { url, program } = await loadProgram(a.program);
  const { id, members } = orderMembers(a.listen, a.peers);
  const params = parseParams(program, a.params);
  const auth = await clusterAuth(a.secret, members.map(formatEndpoint));
  const node = new DsmNode({
    id,
    members,
    workers: a.workers,
    programUrl: url,
    program,
    params,
    blockingStores: a.blockingStores,
    auth,
    ...(a.startTimeoutMs === undefined ? {} : { startTimeoutMs: a.startTimeoutMs }),
    ...(onReady === undefined ? {} : { onReady }),
  });
  return await node.run();
}

/** Command-line entry: returns the exit status. */
export async function nodeMain(args: string[]): Promise<number> {
  let parsed: NodeArgs | null;
  try {
    parsed = parseNodeArgs(args);
  } catch (err) {
    console.error(`vmkit dsm node: ${err instanceof Error ? err.message : String(err)}`);
    return 64;
  }
  if (parsed === null) {
    console.log(NODE_USAGE);
    return 0;
  }
  try {
    const report = await runNode(parsed, () => console.log("DSM-READY"));
    if (report.result !== undefined) console.log(`DSM-RESULT ${JSON.stringify(report.result)}`);
    console.log(`DSM-STATS ${JSON.stringify(report.stats)}`);
    return 0;
  } catch (err) {
    const where = formatEndpoint(parsed.listen);
    const msg = err instanceof DsmError || err instanceof Error ? err.message : String(err);
    console.error(`vmkit dsm node ${where}: ${msg}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await nodeMain(Deno.args));
}
