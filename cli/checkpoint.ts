/**
 * `vmkit checkpoint info|verify|merge`: offline tools over checkpoint files.
 * (`create` drives a running VM through its API socket and comes with the
 * snapshot routes; `vmkit run --restore` restores.)
 *
 * @module
 */

import { CheckpointError } from "../checkpoint/errors.ts";
import { describeCheckpoint, mergeCheckpoint, verifyCheckpoint } from "../checkpoint/tools.ts";
import { command, type Entry } from "./command.ts";
import { Exit } from "./exit.ts";
import { UsageError } from "./usage.ts";

/** A refused file is corrupt input (2); other failures are 1. */
function exitCode(err: Error): number {
  return err instanceof CheckpointError && err.section !== undefined ? Exit.CORRUPT : Exit.FAILURE;
}

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(bytes % (1 << 20) === 0 ? 0 : 1)} MiB`;
}

const info = command({
  name: "info",
  summary: "describe a checkpoint file (and check its chain)",
  args: ["PATH"],
  options: {},
  output: true,
  exitCode,
  async run(ctx) {
    const [path] = ctx.positionals;
    if (path === undefined || ctx.positionals.length !== 1) throw new UsageError("give one PATH");
    const i = await describeCheckpoint(path);
    ctx.print(i, () =>
      [
        `${i.path}: vmkit checkpoint v${i.version}, ${i.type}, id ${i.id}`,
        `created: ${i.created}`,
        `memory: ${mib(i.memBytes)}: ${i.dataPages} data pages, ${i.zeroPages} zero` +
        (i.type === "diff" ? `, ${i.inheritedPages} from the parent` : ""),
        ...(i.memFile === undefined ? [] : [`memory file: ${i.memFile}`]),
        ...(i.chain.length > 1 ? [`chain: ${i.chain.join(" <- ")}`] : []),
        `sections: ${i.sections.map((s) => `${s.name} (${s.bytes} B)`).join(", ")}`,
      ].join("\n"));
    return Exit.OK;
  },
});

const verify = command({
  name: "verify",
  summary: "check every section and every memory page of a checkpoint and its chain",
  args: ["PATH"],
  options: {},
  output: true,
  exitCode,
  async run(ctx) {
    const [path] = ctx.positionals;
    if (path === undefined || ctx.positionals.length !== 1) throw new UsageError("give one PATH");
    const r = await verifyCheckpoint(path);
    ctx.print(
      { path, ok: true, ...r },
      () =>
        `${path}: ok (${r.files} file(s), ${r.dataPages} data pages, ${r.zeroPages} zero pages)`,
    );
    return Exit.OK;
  },
});

const merge = command({
  name: "merge",
  summary: "flatten a diff checkpoint and its parents into one full checkpoint",
  args: ["PATH", "OUT"],
  options: {},
  output: true,
  exitCode,
  async run(ctx) {
    const [path, out] = ctx.positionals;
    if (path === undefined || out === undefined || ctx.positionals.length !== 2) {
      throw new UsageError("give PATH (the newest diff) and OUT");
    }
    const r = await mergeCheckpoint(path, out);
    ctx.print(r, () => `${out}: full checkpoint ${r.id} from ${r.merged} file(s)`);
    return Exit.OK;
  },
});

/** The `checkpoint` command group. */
export const entry: Entry = {
  name: "checkpoint",
  summary: "live checkpoints: inspect, verify and merge checkpoint files",
  commands: [info, verify, merge],
};
