/**
 * Helpers for end-to-end tests that boot the suite's guests with `vmkit run`
 * in a child process (the same path a user takes).
 *
 * @module
 */

import { VMKIT_MAIN, vmkitCli } from "../vmkit_cli.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Path of a guest built by tests/guests/build.ts. */
export function guest(
  name: "guest-pvh.elf" | "guest-vmlinux.elf" | "guest.bzImage" | "demo.elf",
): string {
  return `${ROOT}tests/guests/out/${name}`;
}

/** Result of one `vmkit run`. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `vmkit <args>` to completion with optional stdin bytes; kills it after `timeoutMs`. */
export async function vmkit(
  args: string[],
  opts: { stdin?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  const r = await vmkitCli(args, {
    timeoutMs: opts.timeoutMs ?? 30_000,
    ...(opts.stdin === undefined ? {} : { stdin: opts.stdin }),
  });
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/** A `vmkit` child process that is killed on dispose unless it already exited. */
export class VmkitChild implements AsyncDisposable {
  #exited = false;
  private constructor(readonly child: Deno.ChildProcess) {}

  /** Starts `vmkit <args>` (stdout discarded, stderr kept for the exit report). */
  static spawn(args: string[], opts: { stdin?: "piped" | "null" } = {}): VmkitChild {
    return new VmkitChild(
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", VMKIT_MAIN, ...args],
        stdin: opts.stdin ?? "null",
        stdout: "null",
        stderr: "piped",
      }).spawn(),
    );
  }

  /** Waits for the process to exit; returns its status and stderr. */
  async exit(): Promise<{ code: number; stderr: string }> {
    const out = await this.child.output();
    this.#exited = true;
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
  }

  /** Kills the process if it is still running. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#exited) return;
    this.child.kill("SIGKILL");
    await this.child.output();
    this.#exited = true;
  }
}

/** Polls `cond` every 25 ms until it holds; throws naming `what` after `ms`. */
export async function waitFor(
  what: string,
  cond: () => boolean | Promise<boolean>,
  ms = 30_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Whether `path` exists (without following a symlink). */
export async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}
