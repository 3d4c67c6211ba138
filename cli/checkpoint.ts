/**
 * `vmkit checkpoint create|info|verify|merge`: `create` takes a live
 * checkpoint of a running VM through its control socket (`PUT
 * /snapshot/create`, then `GET /snapshot` until the file is complete with
 * `--wait`); the others are offline tools over checkpoint files. `vmkit run
 * --restore PATH` restores one.
 *
 * @module
 */

import { CheckpointError } from "../checkpoint/errors.ts";
import { describeCheckpoint, mergeCheckpoint, verifyCheckpoint } from "../checkpoint/tools.ts";
import { ApiClientError, apiRequest } from "../vmm/api/client.ts";
import { command, type Entry } from "./command.ts";
import { Exit } from "./exit.ts";
import { flag, list, str } from "./options.ts";
import { checkPathArg, UsageError } from "./usage.ts";

/** How often `create --wait` asks how far the save is. */
const POLL_MS = 100;

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

function fault(body: unknown): string {
  const f = (body as { fault_message?: unknown } | undefined)?.fault_message;
  return typeof f === "string" ? f : JSON.stringify(body);
}

interface Snapshot {
  state: "saving" | "done" | "failed";
  bytes_written: number;
  bytes_total: number;
  pause_us: number;
  error?: string;
  warning?: string;
}

const create = command({
  name: "create",
  summary: "take a live checkpoint of a running VM through its control socket",
  description: "The VM is stopped only for the pause (well under a millisecond) and goes on\n" +
    "running while the file is written in the background; --wait returns once it is\n" +
    "complete (with a progress bar on a terminal). A paused VM stays paused, and\n" +
    "then create returns once the file is complete, with or without --wait.\n" +
    "Disks: each writable disk gets an overlay; by default its parent is kept\n" +
    "(read-only) for the checkpoint, with --copy-parent it is copied and the VM ends\n" +
    "on its own file again. A drive that is an iSCSI LUN needs --overlay ID=PATH: the\n" +
    "overlay's backing is then the LUN, which is kept as the checkpoint's parent.",
  args: ["PATH"],
  options: {
    "api-sock": str("PATH", "the VM's control socket (vmkit run --api-sock)", {
      complete: "file",
    }),
    diff: flag("save only the pages written since this VM's previous checkpoint"),
    "copy-parent": flag("copy the disks' parents for the checkpoint, then commit back"),
    "mem-file": str("PATH", "put guest RAM in this plain image file instead", {
      complete: "file",
    }),
    wait: flag("wait until the file is complete"),
    overlay: list("ID=PATH", "the new qcow2 overlay file for drive ID (needed for an iSCSI drive)"),
  },
  output: true,
  progress: true,
  exitCode,
  async run(ctx) {
    const [path] = ctx.positionals;
    if (path === undefined || ctx.positionals.length !== 1) throw new UsageError("give one PATH");
    const sock = ctx.values["api-sock"];
    if (sock === undefined) throw new UsageError("--api-sock PATH is required (the VM's socket)");
    const memFile = ctx.values["mem-file"];
    const req = {
      snapshot_path: checkPathArg("PATH", path),
      snapshot_type: ctx.values.diff ? "Diff" : "Full",
      disk_policy: ctx.values["copy-parent"] ? "copy-parent" : "keep-parent",
      ...(memFile === undefined ? {} : { mem_file_path: checkPathArg("--mem-file", memFile) }),
      ...(ctx.values.overlay.length === 0 ? {} : {
        disk_overlays: ctx.values.overlay.map((o) => {
          const m = /^([^=]+)=(.+)$/.exec(o);
          if (m === null || m[1] === undefined || m[2] === undefined) {
            throw new UsageError(`--overlay takes ID=PATH, got '${o}'`);
          }
          return { drive_id: m[1], path_on_host: checkPathArg("--overlay", m[2]) };
        }),
      }),
    };
    const call = async (method: string, resource: string, body?: unknown) => {
      try {
        return await apiRequest(sock, method, resource, body);
      } catch (err) {
        if (err instanceof ApiClientError) throw new Error(`cannot reach the VM: ${err.message}`);
        throw err;
      }
    };
    const following = async (): Promise<Snapshot> => {
      const r = await call("GET", "/snapshot");
      if (r.status !== 200) throw new Error(`cannot follow the save: ${fault(r.body)}`);
      return r.body as Snapshot;
    };
    const made = await call("PUT", "/snapshot/create", req);
    if (made.status !== 200 && made.status !== 204) {
      throw new Error(`the VM refused: ${fault(made.body)}`);
    }
    // 204: the VM was paused and the file is complete already (Firecracker's reply).
    const pauseUs = made.status === 204
      ? Number((await following()).pause_us)
      : Number((made.body as { pause_us?: unknown }).pause_us);
    if (!ctx.values.wait && made.status === 200) {
      ctx.print(
        { path, pauseUs, state: "saving" },
        () => `${path}: paused ${pauseUs} µs; the file is being written (GET /snapshot)`,
      );
      return Exit.OK;
    }
    const bar = ctx.progress("checkpoint");
    let s: Snapshot;
    for (;;) {
      s = await following();
      bar.update({ done: s.bytes_written, total: Math.max(1, s.bytes_total) });
      if (s.state !== "saving") break;
      await new Promise((res) => setTimeout(res, POLL_MS));
    }
    bar.done();
    if (s.state === "failed") throw new Error(`the checkpoint failed: ${s.error ?? "?"}`);
    if (s.warning !== undefined) console.error(`vmkit checkpoint create: ${s.warning}`);
    ctx.print(
      { path, pauseUs, state: s.state, bytesWritten: s.bytes_written },
      () => `${path}: complete; the VM was paused ${pauseUs} µs`,
    );
    return Exit.OK;
  },
});

/** The `checkpoint` command group. */
export const entry: Entry = {
  name: "checkpoint",
  summary: "live checkpoints: take, inspect, verify and merge them",
  commands: [create, info, verify, merge],
};
