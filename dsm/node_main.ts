/**
 * Runs one DSM node from command-line arguments; the entry of
 * `vmkit dsm node` and of the processes a local cluster starts.
 *
 * Output: `DSM-READY` once every peer is connected; on success the node
 * then prints `DSM-STATS <json>` and, on node 0,
 * `DSM-RESULT <json>` to stdout, and exits 0. A failure (a dead peer, a
 * program error) prints one line to stderr and exits 1; usage errors exit 2.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";
import { DsmConfigError, DsmError } from "./errors.ts";
import { DsmNode, type NodeReport } from "./node.ts";
import type { DsmProgram, Params } from "./program.ts";
import { BUILTIN_PROGRAMS } from "./programs/mod.ts";
import { type Endpoint, formatEndpoint, orderMembers, parseEndpoint } from "./transport.ts";

/** The usage text of a node. */
export const NODE_USAGE: string =
  `usage: vmkit dsm node --listen HOST:PORT --peers HOST:PORT,... --program NAME|PATH
                      [--workers N] [--param KEY=VALUE]... [--blocking-stores]

Runs one node of a DSM cluster. Every node gets the same program and the same
membership (its own --listen plus --peers); node ids are the members sorted by
host then port. PROGRAM is a built-in (${Object.keys(BUILTIN_PROGRAMS).join(", ")}) or the
path of a module whose named export 'program' is a DsmProgram.`;

/** A loaded program and the URL its workers import. */
export interface LoadedProgram {
  /** Module URL. */
  url: string;
  /** The program. */
  program: DsmProgram;
}

/** Resolves a built-in name or a module path to a program. */
export async function loadProgram(spec: string): Promise<LoadedProgram> {
  const url = BUILTIN_PROGRAMS[spec] ?? pathToFileURL(resolve(spec)).href;
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

/** Parses `KEY=VALUE` parameters (numbers) over a program's defaults. */
export function parseParams(defaults: Readonly<Params>, pairs: string[]): Params {
  const out: Params = { ...defaults };
  for (const pair of pairs) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(-?[0-9.e+]+)$/.exec(pair);
    const v = Number(m?.[2]);
    if (m === null || m[1] === undefined || !Number.isFinite(v)) {
      throw new DsmConfigError(`parameter '${pair}' is not KEY=NUMBER`);
    }
    out[m[1]] = v;
  }
  return out;
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
  return {
    listen: parseEndpoint(values.listen),
    peers,
    program: values.program,
    workers,
    params: values.param ?? [],
    blockingStores: values["blocking-stores"] === true,
  };
}

/** Runs a node to completion; `onReady` runs once every peer is connected. */
export async function runNode(a: NodeArgs, onReady?: () => void): Promise<NodeReport> {
  const { url, program } = await loadProgram(a.program);
  const { id, members } = orderMembers(a.listen, a.peers);
  const node = new DsmNode({
    id,
    members,
    workers: a.workers,
    programUrl: url,
    program,
    params: parseParams(program.defaults, a.params),
    blockingStores: a.blockingStores,
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
    return 2;
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
