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

const CLI_MAIN = new URL("../../cli/main.ts", import.meta.url).pathname;

/** Runs `vmkit disk ARGS` from source in `cwd`; returns its status and output. */
export async function disk(cwd: string, ...args: string[]): Promise<ToolResult> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI_MAIN, "disk", ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** Starts `vmkit disk ARGS` in `cwd` without waiting for it. */
export function spawnDisk(cwd: string, ...args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI_MAIN, "disk", ...args],
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/**
 * An interactive qemu-io holding an image open (and so its locks), driven
 * command by command through its prompt.
 */
export class QemuIoSession implements AsyncDisposable {
  readonly pid: number;
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #stdout: ReadableStreamDefaultReader<Uint8Array>;
  #buffered = "";
  #closed = false;

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.pid = child.pid;
    this.#stdin = child.stdin.getWriter();
    this.#stdout = child.stdout.getReader();
  }

  /** Opens `image` in qemu-io with `args` (e.g. `-f qcow2`, `-r`) and waits for its prompt. */
  static async open(image: string, ...args: string[]): Promise<QemuIoSession> {
    const child = new Deno.Command("qemu-io", {
      args: [...args, image],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const s = new QemuIoSession(child);
    try {
      await s.#prompt();
    } catch (err) {
      s.#stdout.releaseLock();
      await child.stdout.cancel();
      const text = await new Response(child.stderr).text();
      await child.status;
      throw new Error(`qemu-io ${args.join(" ")} ${image} did not start: ${text}`, { cause: err });
    }
    return s;
  }

  async #prompt(): Promise<string> {
    const dec = new TextDecoder();
    while (!this.#buffered.endsWith("qemu-io> ")) {
      const { value, done } = await this.#stdout.read();
      if (done) throw new Error(`qemu-io exited; output so far: ${this.#buffered}`);
      this.#buffered += dec.decode(value, { stream: true });
    }
    const out = this.#buffered.slice(0, -"qemu-io> ".length);
    this.#buffered = "";
    return out;
  }

  /** Runs one qemu-io command and returns its output; asserts it reported no failure. */
  async cmd(command: string): Promise<string> {
    await this.#stdin.write(new TextEncoder().encode(command + "\n"));
    const out = await this.#prompt();
    assert.doesNotMatch(out, /failed|error|Operation not permitted/i, `qemu-io ${command}: ${out}`);
    return out;
  }

  /** Quits qemu-io and waits for it to exit (it may have exited already: a closed pipe is fine). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closedPipe = (err: unknown): void => {
      if (!(err instanceof Deno.errors.BrokenPipe)) throw err;
    };
    await this.#stdin.write(new TextEncoder().encode("quit\n")).catch(closedPipe);
    await this.#stdin.close().catch(closedPipe);
    this.#stdout.releaseLock();
    await this.#child.stdout.cancel();
    await this.#child.stderr.cancel();
    await this.#child.status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Hides the backing-format extension of `path` (its type becomes an unknown one, ignored). */
export async function dropBackingFormat(path: string): Promise<void> {
  const data = await Deno.readFile(path);
  const v = new DataView(data.buffer);
  for (let at = 112; at + 8 <= 4096; at += 8) {
    if (v.getUint32(at, false) === 0xe2792aca) {
      v.setUint32(at, 0x7fff0001, false);
      await Deno.writeFile(path, data);
      return;
    }
  }
  throw new Error(`${path} has no backing format extension`);
}
