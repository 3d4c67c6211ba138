/**
 * Helpers of the netguard tests: shell commands, network namespaces that
 * always get deleted, and child processes standing in for VMs.
 *
 * @module
 */

import type { PausableVm } from "../../netguard/mod.ts";

/** Runs `cmd` with `args`; throws with its stderr when it fails (unless `allowFail`). */
export async function run(
  cmd: string,
  args: string[],
  allowFail = false,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  const r = { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  if (!out.success && !allowFail) {
    throw new Error(`'${cmd} ${args.join(" ")}' failed (${out.code}): ${r.stderr.trim()}`);
  }
  return r;
}

let nsCounter = 0;

/** A network namespace named after this process; delete it in a `finally`. */
export class Netns {
  /** Namespace name. */
  readonly name: string;
  private constructor(name: string) {
    this.name = name;
  }

  /** Creates a uniquely named namespace with loopback up. */
  static async create(tag: string): Promise<Netns> {
    const name = `ngt${Deno.pid}${tag}${nsCounter++}`;
    await run("ip", ["netns", "add", name]);
    const ns = new Netns(name);
    await ns.ip("link set lo up");
    return ns;
  }

  /** Runs `ip -n NS ARGS...`. */
  async ip(args: string): Promise<void> {
    await run("ip", ["-n", this.name, ...args.split(" ")]);
  }

  /** Runs a command inside the namespace. */
  exec(
    cmd: string[],
    allowFail = false,
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return run("ip", ["netns", "exec", this.name, ...cmd], allowFail);
  }

  /** Spawns a long-running command inside the namespace. */
  spawn(cmd: string[]): Deno.ChildProcess {
    return new Deno.Command("ip", {
      args: ["netns", "exec", this.name, ...cmd],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  }

  /** Deletes the namespace (its interfaces go with it). */
  async delete(): Promise<void> {
    await run("ip", ["netns", "del", this.name], true);
  }
}

/** A child process that counts, standing in for a VM: pause = SIGSTOP, resume = SIGCONT. */
export class ProcessVm implements PausableVm {
  /** Latest count printed by the process. */
  count = 0;
  /** Pause and resume calls seen, in order. */
  readonly calls: string[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #reading: Promise<void>;

  constructor() {
    this.#child = new Deno.Command("sh", {
      args: ["-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done"],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#reading = this.#read();
  }

  async #read(): Promise<void> {
    const dec = new TextDecoder();
    let rest = "";
    for await (const chunk of this.#child.stdout) {
      rest += dec.decode(chunk);
      const lines = rest.split("\n");
      rest = lines.pop() ?? "";
      const last = lines.at(-1);
      if (last !== undefined) this.count = Number(last);
    }
  }

  /** Stops the process. */
  pause(): Promise<void> {
    this.calls.push("pause");
    this.#child.kill("SIGSTOP");
    return Promise.resolve();
  }

  /** Continues the process. */
  resume(): Promise<void> {
    this.calls.push("resume");
    this.#child.kill("SIGCONT");
    return Promise.resolve();
  }

  /** Kills the process and waits for it. */
  async close(): Promise<void> {
    this.#child.kill("SIGCONT");
    this.#child.kill("SIGKILL");
    await this.#child.status;
    await this.#reading;
  }
}

/** Sleeps `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits until `cond()` holds, polling every 20 ms, up to `timeoutMs`; returns whether it held. */
export async function waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(20);
  }
  return cond();
}

/** Starts tcpdump in `ns` on `iface` writing `file`; resolves once it is capturing. */
export async function startTcpdump(
  ns: Netns,
  iface: string,
  file: string,
  snaplen = 2048,
): Promise<Deno.ChildProcess> {
  const p = ns.spawn(["tcpdump", "-i", iface, "-w", file, "-U", "-n", "-s", String(snaplen)]);
  const reader = p.stderr.getReader();
  let text = "";
  const dec = new TextDecoder();
  const deadline = Date.now() + 5000;
  while (!text.includes("listening on") && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value);
  }
  reader.releaseLock();
  // Drain the rest so tcpdump never blocks on a full pipe.
  void p.stderr.pipeTo(new WritableStream());
  void p.stdout.pipeTo(new WritableStream());
  if (!text.includes("listening on")) throw new Error(`tcpdump did not start: ${text}`);
  return p;
}

/** Stops a child with SIGTERM (one that already exited is fine) and waits for it. */
export async function stopProcess(p: Deno.ChildProcess): Promise<void> {
  try {
    p.kill("SIGTERM");
  } catch (err) {
    if (!(err instanceof TypeError)) throw err; // already exited
  }
  await p.status;
}

/**
 * A veth pair from `client` (interface `a`, address `${net}.1/24`, up) to
 * `server` (interface `b`, address `${net}.2/24`, up unless `serverUp` is false).
 */
export async function vethPair(
  client: Netns,
  server: Netns,
  a: string,
  b: string,
  net: string,
  serverUp = true,
): Promise<void> {
  await run("ip", [
    "link",
    "add",
    a,
    "netns",
    client.name,
    "type",
    "veth",
    "peer",
    b,
    "netns",
    server.name,
  ]);
  await client.ip(`addr add ${net}.1/24 dev ${a}`);
  await server.ip(`addr add ${net}.2/24 dev ${b}`);
  await client.ip(`link set ${a} up`);
  if (serverUp) await server.ip(`link set ${b} up`);
}
