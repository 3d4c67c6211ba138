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

import { parseArgs } from "node:util";
import { runLocalCluster } from "../dsm/cluster.ts";
import { DsmError } from "../dsm/errors.ts";
import { loadProgram, nodeMain, parseParams } from "../dsm/node_main.ts";
import { BUILTIN_PROGRAMS } from "../dsm/programs/mod.ts";

const USAGE = `usage: vmkit dsm <node|run> [options]

  vmkit dsm node --listen HOST:PORT --peers HOST:PORT,... --program NAME|PATH
                 [--workers N] [--param KEY=VALUE]... [--blocking-stores]
      run one node of a cluster (see 'vmkit dsm node --help')

  vmkit dsm run PROGRAM --nodes N [--workers N] [--param KEY=VALUE]...
                [--blocking-stores] [--check] [--json]
      start N local node processes on 127.0.0.1 and run PROGRAM on them

PROGRAM: ${Object.keys(BUILTIN_PROGRAMS).join(", ")}, or the path of a module
whose named export 'program' is a DsmProgram (see dsm/program.ts).`;

/** Runs `vmkit dsm`; returns the exit status. */
export async function main(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
    console.log(USAGE);
    return sub === undefined ? 2 : 0;
  }
  if (sub === "node") return await nodeMain(rest);
  if (sub === "run") return await runMain(rest);
  console.error(`vmkit dsm: unknown subcommand '${sub}' (expected node or run)`);
  return 2;
}

async function runMain(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        nodes: { type: "string" },
        workers: { type: "string" },
        param: { type: "string", multiple: true },
        "blocking-stores": { type: "boolean" },
        check: { type: "boolean" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    console.error(`vmkit dsm run: ${err instanceof Error ? err.message : String(err)}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help === true) {
    console.log(USAGE);
    return 0;
  }
  const name = positionals[0];
  if (name === undefined || positionals.length > 1) {
    console.error("vmkit dsm run: give exactly one PROGRAM (a built-in name or a module path)");
    return 2;
  }
  const nodes = Number(values.nodes ?? "");
  const workers = Number(values.workers ?? "1");
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 32) {
    console.error(`vmkit dsm run: --nodes '${values.nodes ?? ""}' must be an integer from 1 to 32`);
    return 2;
  }
  if (!Number.isInteger(workers) || workers < 1 || workers > 31) {
    console.error(`vmkit dsm run: --workers '${values.workers}' must be an integer from 1 to 31`);
    return 2;
  }
  try {
    const { program } = await loadProgram(name);
    const params = parseParams(program.defaults, values.param ?? []);
    console.error(`vmkit dsm run: ${program.name} on ${nodes} node(s) x ${workers} worker(s)`);
    const run = await runLocalCluster({
      program: name,
      nodes,
      workers,
      params,
      blockingStores: values["blocking-stores"] === true,
    });
    let check: boolean | undefined;
    if (values.check === true) {
      if (program.sequential === undefined) {
        console.error(
          `vmkit dsm run: program '${program.name}' has no sequential version to check against`,
        );
        return 1;
      }
      check = JSON.stringify(program.sequential(params)) === JSON.stringify(run.result);
    }
    const messages = run.stats.reduce((s, x) => s + x.messages, 0);
    const bytes = run.stats.reduce((s, x) => s + x.bytes, 0);
    if (values.json === true) {
      console.log(JSON.stringify({ result: run.result, check, messages, bytes, stats: run.stats }));
    } else {
      console.log(`result: ${JSON.stringify(run.result)}`);
      if (check !== undefined) {
        console.log(
          `check: ${check ? "identical to the sequential run" : "DIFFERS from the sequential run"}`,
        );
      }
      console.log(`messages: ${messages}  bytes: ${bytes}  wall: ${run.wallMs.toFixed(0)} ms`);
      for (const s of run.stats) {
        console.log(
          `  node ${s.node}: ${s.messages} msgs, ${s.bytes} B, ${s.readMisses} read misses, ` +
            `${s.writeMisses} write misses, ${s.upgrades} upgrades, ${s.elapsedMs} ms`,
        );
      }
    }
    return check === false ? 1 : 0;
  } catch (err) {
    const msg = err instanceof DsmError || err instanceof Error ? err.message : String(err);
    console.error(`vmkit dsm run: ${msg}`);
    return 1;
  }
}
