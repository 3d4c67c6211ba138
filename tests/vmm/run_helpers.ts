/**
 * Helpers for end-to-end tests that boot the suite's guests with `vmkit run`
 * in a child process (the same path a user takes).
 *
 * @module
 */

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
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}cli/main.ts`, ...args],
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 30_000);
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
