/**
 * Shared helpers for the cow/ tests: running qemu-img, a seeded PRNG, temp
 * folders, an in-memory disk model.
 *
 * @module
 */

import assert from "node:assert/strict";

/** Result of running a tool. */
export interface ToolResult {
  /** Exit status. */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/** Runs `cmd args`; returns its status and output (never throws on non-zero). */
export async function run(cmd: string, ...args: string[]): Promise<ToolResult> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs qemu-img and asserts success; returns stdout. */
export async function qemuImg(...args: string[]): Promise<string> {
  const r = await run("qemu-img", ...args);
  assert.equal(r.code, 0, `qemu-img ${args.join(" ")} failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Runs qemu-io commands on an image and asserts success and no "Pattern verification failed". */
export async function qemuIo(image: string, fmt: string, ...cmds: string[]): Promise<string> {
  const args = ["-f", fmt];
  for (const c of cmds) args.push("-c", c);
  args.push(image);
  const r = await run("qemu-io", ...args);
  assert.equal(r.code, 0, `qemu-io ${cmds.join("; ")} failed: ${r.stderr}${r.stdout}`);
  assert.doesNotMatch(r.stdout + r.stderr, /failed|error/i, `qemu-io: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Asserts `qemu-img check` finds no errors (leaks allowed when `allowLeaks`). */
export async function assertQemuCheck(image: string, allowLeaks = false): Promise<void> {
  const r = await run("qemu-img", "check", "-f", "qcow2", image);
  const ok = r.code === 0 || (allowLeaks && r.code === 3);
  assert.ok(ok, `qemu-img check ${image} exited ${r.code}:\n${r.stdout}${r.stderr}`);
  assert.doesNotMatch(r.stdout, /ERROR/, r.stdout);
}

/**
 * Creates a temp folder; `using` removes it. `inMemory` puts it on tmpfs
 * (/dev/shm) when there is one: for the crash tests, whose simulated crash
 * (an exception at a write point) keeps the page cache, so fdatasync only
 * costs time there.
 */
export async function tempDir(inMemory = false): Promise<{ path: string } & AsyncDisposable> {
  let dir: string | undefined;
  if (inMemory) {
    try {
      if ((await Deno.stat("/dev/shm")).isDirectory) dir = "/dev/shm";
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  const path = await Deno.makeTempDir({ prefix: "vmkit_cow_", ...(dir ? { dir } : {}) });
  return {
    path,
    async [Symbol.asyncDispose]() {
      await Deno.remove(path, { recursive: true });
    },
  };
}

export { prng } from "../prng.ts";

/** Random integer in [0, n). */
export function randInt(rand: () => number, n: number): number {
  return Math.floor(rand() * n);
}

/** Bytes derived from (seed, offset): distinct per write, cheap to make. */
export function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = (seed * 2654435761) >>> 0;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = (x >>> 16) & 0xff;
  }
  return b;
}

/** Index of the first differing byte of two arrays, or -1. */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Asserts two byte arrays are equal, naming the first difference. */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  const d = firstDiff(actual, expected);
  assert.equal(
    d,
    -1,
    `${what}: first difference at byte ${d} (got ${actual[d]}, want ${expected[d]})`,
  );
}
