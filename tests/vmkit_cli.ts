/**
 * Runs the `vmkit` CLI from source in a child process, the way a user runs
 * it, and collects its exit status and output: the one helper the CLI tests
 * of every folder share.
 *
 * @module
 */

/** Path of the CLI's entry module. */
export const VMKIT_MAIN: string = new URL("../cli/main.ts", import.meta.url).pathname;

/** What one `vmkit` run left behind. */
export interface CliResult {
  /** Exit status. */
  code: number;
  /** Standard output, decoded as UTF-8. */
  stdout: string;
  /** Standard error, decoded as UTF-8. */
  stderr: string;
  /** Milliseconds from spawn to exit. */
  ms: number;
}

/** Options of {@link vmkitCli}. */
export interface CliOptions {
  /** Bytes (or text) written to its stdin, which is then closed; default: no stdin. */
  stdin?: Uint8Array | string;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Working directory. */
  cwd?: string;
  /** Killed (SIGKILL) after this long (default 120 s): a hung CLI fails its test, never the suite. */
  timeoutMs?: number;
}

/** Runs `vmkit ARGS` to completion. */
export async function vmkitCli(args: readonly string[], opts: CliOptions = {}): Promise<CliResult> {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", VMKIT_MAIN, ...args],
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    ...(opts.env === undefined ? {} : { env: opts.env }),
    ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 120_000);
  try {
    if (opts.stdin !== undefined) {
      const bytes = typeof opts.stdin === "string"
        ? new TextEncoder().encode(opts.stdin)
        : opts.stdin;
      const w = child.stdin.getWriter();
      await w.write(bytes);
      await w.close();
    }
    const out = await child.output();
    const dec = new TextDecoder();
    return {
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      ms: performance.now() - t0,
    };
  } finally {
    clearTimeout(timer);
  }
}
