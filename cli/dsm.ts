/**
 * `vmkit dsm`: distributed shared memory nodes and programs.
 *
 * - `vmkit dsm node --listen HOST:PORT --peers HOST:PORT,… --program P` runs one node.
 * - `vmkit dsm run PROGRAM --nodes N` starts N local node processes on
 *   127.0.0.1 for PROGRAM and prints its result, counters and, with
 *   `--check`, whether the result equals the program's sequential run.
 *
 * PROGRAM is a built-in name (sor, matmul, lu, histogram, stress, …) or the path
 * of a module whose named export `program` is a `DsmProgram`.
 *
 * @module
 */

import { runLocalCluster } from "../dsm/cluster.ts";
import { DsmConfigError } from "../dsm/errors.ts";
import { loadClusterSecret, loadProgram, runNode } from "../dsm/node_main.ts";
import { parseParams, programRegions } from "../dsm/program.ts";
import { SECRET_ENV } from "../dsm/handshake.ts";
import { BUILTIN_PROGRAMS } from "../dsm/programs/mod.ts";
import { formatEndpoint, parseEndpoint } from "../dsm/transport.ts";
import { command, type Entry } from "./command.ts";
import { Exit } from "./exit.ts";
import { flag, int, list, str } from "./options.ts";
import { checkPathArg, UsageError } from "./usage.ts";

const PROGRAMS = `PROGRAM: ${Object.keys(BUILTIN_PROGRAMS).join(", ")}, or the path of a module
whose named export 'program' is a DsmProgram (see dsm/program.ts).`;

const SHARED = {
  workers: int("N", "workers per node", { min: 1, max: 31, default: 1 }),
  param: list("KEY=VALUE", "override a program parameter (a number)"),
  "blocking-stores": flag("stores wait for the exclusive copy (the baseline DSM)"),
};

/**
 * How `dsm run` starts its nodes: a compiled `vmkit` runs itself as
 * `vmkit dsm node` (its `Deno.execPath()` is not a `deno` that could run a
 * module); otherwise the cluster's default, this Deno running the node module.
 */
export function dsmNodeCommand(
  standalone: boolean = Deno.build.standalone,
  execPath: string = Deno.execPath(),
): string[] | undefined {
  return standalone ? [execPath, "dsm", "node"] : undefined;
}

/** Runs `parse` on command-line text: a malformed address or parameter is a usage error. */
function fromArgs<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof DsmConfigError) throw new UsageError(err.message);
    throw err;
  }
}

const node = command({
  name: "node",
  summary: "run one node of a DSM cluster",
  synopsis: "--listen HOST:PORT --peers HOST:PORT,... --program NAME|PATH [options]",
  description: "Every node gets the same program, the same membership (its own --listen\n" +
    "plus --peers) and the same cluster secret (--secret-file, else $" + SECRET_ENV + ");\n" +
    "nodes prove to each other that they know it and refuse any other connection.\n" +
    "Node ids are the members sorted by host then port.\n" + PROGRAMS,
  options: {
    listen: str("HOST:PORT", "this node's address (required)"),
    peers: str("HOST:PORT,...", "the other nodes"),
    program: str("NAME|PATH", "the program (required)", { complete: "file" }),
    "secret-file": str("FILE", `the cluster secret (default: $${SECRET_ENV})`, {
      complete: "file",
    }),
    "start-timeout": int("MS", "give up if the cluster has not formed after MS", {
      min: 1,
      default: 20_000,
    }),
    ...SHARED,
  },
  async run(ctx) {
    const o = ctx.values;
    if (o.listen === undefined) throw new UsageError("--listen HOST:PORT is required");
    if (o.program === undefined) throw new UsageError("--program NAME|PATH is required");
    checkPathArg("--program", o.program);
    if (o["secret-file"] !== undefined) checkPathArg("--secret-file", o["secret-file"]);
    const listen = fromArgs(() => parseEndpoint(o.listen ?? ""));
    const args = {
      listen,
      peers: fromArgs(() =>
        o.peers === undefined || o.peers === "" ? [] : o.peers.split(",").map(parseEndpoint)
      ),
      program: o.program,
      workers: o.workers,
      params: o.param,
      blockingStores: o["blocking-stores"],
      secret: fromArgs(() => loadClusterSecret(o["secret-file"])),
      startTimeoutMs: o["start-timeout"],
    };
    try {
      const report = await runNode(args, () => console.log("DSM-READY"));
      if (report.result !== undefined) console.log(`DSM-RESULT ${JSON.stringify(report.result)}`);
      console.log(`DSM-STATS ${JSON.stringify(report.stats)}`);
    } catch (err) {
      if (err instanceof Error && !(err instanceof DsmConfigError)) {
        throw new Error(`node ${formatEndpoint(listen)}: ${err.message}`, { cause: err });
      }
      throw err;
    }
    return Exit.OK;
  },
});

const run = command({
  name: "run",
  summary: "start N local node processes on 127.0.0.1 and run PROGRAM on them",
  args: ["PROGRAM"],
  synopsis: "PROGRAM --nodes N [options]",
  description: "--check compares the result with the program's sequential run (exit 1 if it\n" +
    "differs).\n" + PROGRAMS,
  options: {
    nodes: int("N", "node processes (required)", { min: 1, max: 32 }),
    ...SHARED,
    check: flag("compare the result with the program's sequential run"),
  },
  output: true,
  async run(ctx) {
    const o = ctx.values;
    const [name = ""] = ctx.positionals;
    checkPathArg("PROGRAM", name);
    if (o.nodes === undefined) throw new UsageError("--nodes N is required");
    const { program } = await loadProgram(name);
    const params = fromArgs(() => parseParams(program, o.param));
    const shape = { nodes: o.nodes, workers: o.workers };
    // A bad region declaration is the program's error, reported before any node starts.
    programRegions(program, params, shape);
    console.error(`vmkit dsm run: ${program.name} on ${o.nodes} node(s) x ${o.workers} worker(s)`);
    const nodeCommand = dsmNodeCommand();
    const result = await runLocalCluster({
      program: name,
      nodes: o.nodes,
      workers: o.workers,
      params,
      blockingStores: o["blocking-stores"],
      ...(nodeCommand === undefined ? {} : { nodeCommand }),
    });
    let check: boolean | undefined;
    if (o.check) {
      if (program.sequential === undefined) {
        throw new Error(`program '${program.name}' has no sequential version to check against`);
      }
      check = JSON.stringify(program.sequential(params, shape)) === JSON.stringify(result.result);
    }
    const messages = result.stats.reduce((s, x) => s + x.messages, 0);
    const bytes = result.stats.reduce((s, x) => s + x.bytes, 0);
    ctx.print(
      { result: result.result, check, messages, bytes, wallMs: result.wallMs, stats: result.stats },
      () =>
        [
          `result: ${JSON.stringify(result.result)}`,
          ...(check === undefined ? [] : [
            `check: ${
              check ? "identical to the sequential run" : "DIFFERS from the sequential run"
            }`,
          ]),
          `messages: ${messages}  bytes: ${bytes}  wall: ${result.wallMs.toFixed(0)} ms`,
          ...result.stats.map((s) =>
            `  node ${s.node}: ${s.messages} msgs, ${s.bytes} B, ${s.readMisses} read misses, ` +
            `${s.writeMisses} write misses, ${s.upgrades} upgrades, ${s.elapsedMs} ms`
          ),
        ].join("\n"),
    );
    return check === false ? Exit.FAILURE : Exit.OK;
  },
});

/** The `vmkit dsm` command group. */
export const entry: Entry = {
  name: "dsm",
  summary: "distributed shared memory nodes and programs",
  description: PROGRAMS,
  commands: [node, run],
};
