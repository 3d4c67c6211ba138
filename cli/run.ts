/**
 * `vmkit run`: boots a kernel in a new microVM with COM1 on the terminal.
 *
 * The guest's serial console is stdout (or a file), stdin feeds its serial
 * input (a terminal is put in raw mode and restored on exit; Ctrl-A x quits),
 * and an optional control socket serves the Firecracker-style API. The exit
 * status is 0 when the guest powers off, else the run's status with a
 * one-line reason on stderr.
 *
 * @example
 * ```ts ignore
 * import { main } from "./run.ts";
 * Deno.exit(await main(["--kernel", "vmlinux", "--mem", "128", "--cmdline", "console=ttyS0"]));
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type ApiServer, startApiServer } from "../vmm/api/mod.ts";
import { BootError } from "../vmm/boot/errors.ts";
import { defaultDeviceSpecs, Serial16550 } from "../vmm/devices/mod.ts";
import { isUsageError, UsageError, usageFailure } from "./usage.ts";

/** Default kernel command line: console on COM1, reboot through the i8042 (which powers off). */
export const DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=1";
const FLUSH_MS = 50;
const INPUT_RETRY_MS = 10;
const CTRL_A = 0x01;

/** The usage text of `vmkit run`. */
export function usage(): string {
  return [
    "usage: vmkit run --kernel PATH [options]",
    "",
    "Boots a kernel (ELF vmlinux, PVH ELF or bzImage) in a new microVM; COM1 is the terminal.",
    "",
    "options:",
    "  --kernel PATH       kernel image (required)",
    "  --initrd PATH       initial ramdisk",
    `  --cmdline STR       kernel command line (default '${DEFAULT_CMDLINE}')`,
    "  --mem MiB           guest RAM, 1..65536 (default 256)",
    "  --vcpus N           vCPUs, 1..64 (default 1)",
    "  --api-sock PATH     serve the control API on this Unix socket",
    "  --serial-out PATH   write the guest's serial output to PATH (truncated) instead of stdout",
    "  --debug-exit PORT   add a debug-exit device on PORT (0..0xffff; a write of v exits with",
    "                      status (v << 1) | 1)",
    "  -h, --help          show this help",
    "",
    "Numbers may be decimal or 0x-prefixed hex. On a terminal, Ctrl-A x stops the VM.",
    "Exit status: 0 when the guest powers off, else the run's status.",
  ].join("\n");
}

/** Parses a decimal or 0x-hex integer flag in `[min, max]`. */
function intFlag(
  name: string,
  text: string | undefined,
  fallback: number,
  min: number,
  max: number,
  unit = "",
): number {
  if (text === undefined) return fallback;
  const t = text.trim();
  let v = Number.NaN;
  if (/^0x[0-9a-f]+$/i.test(t)) v = Number.parseInt(t.slice(2), 16);
  else if (/^[0-9]+$/.test(t)) v = Number.parseInt(t, 10);
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new UsageError(`--${name} must be an integer in ${min}..${max}${unit}, got '${text}'`);
  }
  return v;
}

async function readInput(what: string, path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Error(`cannot read ${what} '${path}': no such file`);
    }
    if (err instanceof Deno.errors.PermissionDenied) {
      throw new Error(`cannot read ${what} '${path}': permission denied`);
    }
    if (err instanceof Deno.errors.IsADirectory) {
      throw new Error(`cannot read ${what} '${path}': it is a directory`);
    }
    throw new Error(`cannot read ${what} '${path}': ${(err as Error).message}`);
  }
}

interface RunOptions {
  kernel: string;
  initrd: string | undefined;
  cmdline: string;
  memMiB: number;
  vcpus: number;
  apiSock: string | undefined;
  serialOut: string | undefined;
  debugExit: number | undefined;
}

function parse(args: string[]): RunOptions | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        kernel: { type: "string" },
        initrd: { type: "string" },
        cmdline: { type: "string" },
        mem: { type: "string" },
        vcpus: { type: "string" },
        "api-sock": { type: "string" },
        "serial-out": { type: "string" },
        "debug-exit": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    // parseArgs messages span lines and suggest `--`; keep the first sentence.
    const first = (err as Error).message.split("\n")[0] ?? "bad arguments";
    const ambiguous = /^Option '(--[a-z-]+)' argument is ambiguous/.exec(first);
    if (ambiguous !== null) {
      throw new UsageError(
        `${ambiguous[1]} needs a value (write ${ambiguous[1]}=VALUE for one starting with '-')`,
      );
    }
    throw new UsageError(first.replace(/\. To specify a positional argument.*$/, ""));
  }
  if (values.help === true) return "help";
  if (values.kernel === undefined || values.kernel === "") {
    throw new UsageError("--kernel PATH is required");
  }
  return {
    kernel: values.kernel,
    initrd: values.initrd,
    cmdline: values.cmdline ?? DEFAULT_CMDLINE,
    memMiB: intFlag("mem", values.mem, 256, 1, 65536, " (MiB)"),
    vcpus: intFlag("vcpus", values.vcpus, 1, 1, 64),
    apiSock: values["api-sock"],
    serialOut: values["serial-out"],
    debugExit: values["debug-exit"] === undefined
      ? undefined
      : intFlag("debug-exit", values["debug-exit"], 0, 0, 0xffff),
  };
}

/** Feeds stdin to COM1 until stdin ends or `stopped` is set; Ctrl-A x on a terminal calls `quit`. */
async function pumpStdin(
  serial: Serial16550,
  tty: boolean,
  isStopped: () => boolean,
  quit: () => void,
): Promise<void> {
  const reader = Deno.stdin.readable.getReader();
  let escape = false;
  const push = async (bytes: Uint8Array): Promise<void> => {
    let off = 0;
    while (off < bytes.length && !isStopped()) {
      off += serial.pushInput(bytes.subarray(off));
      if (off < bytes.length) await new Promise((r) => setTimeout(r, INPUT_RETRY_MS));
    }
  };
  try {
    while (!isStopped()) {
      const { done, value } = await reader.read();
      if (done) return;
      if (!tty) {
        await push(value);
        continue;
      }
      const out: number[] = [];
      for (const b of value) {
        if (escape) {
          escape = false;
          if (b === 0x78 /* x */) {
            quit();
            return;
          }
          if (b !== CTRL_A) out.push(CTRL_A);
          out.push(b);
        } else if (b === CTRL_A) escape = true;
        else out.push(b);
      }
      await push(new Uint8Array(out));
    }
  } finally {
    reader.releaseLock();
  }
}

/** Runs `vmkit run`; returns the exit status. */
export async function main(args: string[]): Promise<number> {
  let opts: RunOptions | "help";
  try {
    opts = parse(args);
  } catch (err) {
    if (isUsageError(err)) return usageFailure("run", err);
    throw err;
  }
  if (opts === "help") {
    console.log(usage());
    return 0;
  }
  try {
    return await run(opts);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    console.error(`vmkit run: ${msg.split("\n")[0]}`);
    return 1;
  }
}

async function run(opts: RunOptions): Promise<number> {
  const kernel = await readInput("kernel", opts.kernel);
  const initrd = opts.initrd === undefined ? undefined : await readInput("initrd", opts.initrd);
  if (opts.serialOut !== undefined) {
    try {
      await Deno.writeFile(opts.serialOut, new Uint8Array(0));
    } catch (err) {
      throw new Error(`cannot write serial output '${opts.serialOut}': ${(err as Error).message}`);
    }
  }
  const devices = defaultDeviceSpecs({
    memMiB: opts.memMiB,
    serialOut: opts.serialOut === undefined ? "stdout" : { path: opts.serialOut },
    serialIn: true,
    ...(opts.debugExit === undefined ? {} : { debugExitPort: opts.debugExit }),
  });
  const { Machine } = await import("../vmm/machine.ts");
  let machine;
  try {
    machine = await Machine.create({
      memMiB: opts.memMiB,
      vcpus: opts.vcpus,
      kernel,
      cmdline: opts.cmdline,
      devices,
      ...(initrd === undefined ? {} : { initrd }),
    });
  } catch (err) {
    if (err instanceof BootError) throw new Error(`cannot boot '${opts.kernel}': ${err.message}`);
    throw err;
  }
  const vm = machine;
  const com1 = vm.device("com1");
  const serial = com1 instanceof Serial16550 ? com1 : undefined;
  let api: ApiServer | undefined;
  let signalled: Deno.Signal | undefined;
  const onSignal = (sig: Deno.Signal) => () => {
    signalled ??= sig;
    void vm.stop();
  };
  const onInt = onSignal("SIGINT");
  const onTerm = onSignal("SIGTERM");
  const tty = Deno.stdin.isTerminal();
  let stopped = false;
  const flusher = serial === undefined ? undefined : setInterval(() => serial.flush(), FLUSH_MS);
  try {
    Deno.addSignalListener("SIGINT", onInt);
    Deno.addSignalListener("SIGTERM", onTerm);
    if (opts.apiSock !== undefined) api = await startApiServer(opts.apiSock, vm);
    if (tty) Deno.stdin.setRaw(true);
    await vm.start();
    if (serial !== undefined) {
      pumpStdin(serial, tty, () => stopped, () => void vm.stop()).catch((err: unknown) => {
        console.error(`vmkit run: reading stdin failed: ${(err as Error).message}`);
      });
    }
    const exit = await vm.wait();
    stopped = true;
    if (signalled !== undefined) {
      console.error(`vmkit run: stopped by ${signalled}`);
      return signalled === "SIGINT" ? 130 : 143;
    }
    if (exit.status === 0) return 0;
    console.error(`vmkit run: ${exit.reason}`);
    const code = exit.status & 0xff;
    return code === 0 ? 1 : code;
  } finally {
    stopped = true;
    if (flusher !== undefined) clearInterval(flusher);
    serial?.close();
    if (tty) Deno.stdin.setRaw(false);
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGTERM", onTerm);
    await api?.close();
    await vm[Symbol.asyncDispose]();
  }
}
