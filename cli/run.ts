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
 * import { entry } from "./run.ts";
 * import { runEntry } from "./command.ts";
 * Deno.exit(await runEntry(entry, ["--kernel", "vmlinux", "--mem", "128"]));
 * ```
 *
 * @module
 */

import { type ApiServer, startApiServer } from "../vmm/api/mod.ts";
import { BootError } from "../vmm/boot/errors.ts";
import { defaultDeviceSpecs, Serial16550 } from "../vmm/devices/mod.ts";
import { command, type Entry, kebabKeys } from "./command.ts";
import { Exit } from "./exit.ts";
import { int, str, type Values } from "./options.ts";
import { UsageError } from "./usage.ts";

/** Default kernel command line: console on COM1, reboot through the i8042 (which powers off). */
export const DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=1";
const FLUSH_MS = 50;
const INPUT_RETRY_MS = 10;
const CTRL_A = 0x01;

/** `vmkit run`'s options. */
const OPTIONS = {
  kernel: str("PATH", "kernel image: ELF vmlinux, PVH ELF or bzImage (required)", {
    complete: "file",
  }),
  initrd: str("PATH", "initial ramdisk", { complete: "file" }),
  cmdline: str("STR", "kernel command line", { default: DEFAULT_CMDLINE }),
  mem: int("MiB", "guest RAM", { min: 1, max: 65536, default: 256, unit: "MiB" }),
  vcpus: int("N", "vCPUs", { min: 1, max: 64, default: 1 }),
  "api-sock": str("PATH", "serve the control API on this Unix socket", { complete: "file" }),
  "serial-out": str("PATH", "write the guest's serial output to PATH (truncated), not stdout", {
    complete: "file",
  }),
  "debug-exit": int("PORT", "add a debug-exit device on PORT (a write of v exits (v << 1) | 1)", {
    max: 0xffff,
  }),
};

type RunOptions = Values<typeof OPTIONS> & { kernel: string };

/** The `vmkit run` command. */
export const entry: Entry = command({
  name: "run",
  summary: "boot a kernel in a new microVM; COM1 is the terminal",
  description:
    "Numbers may be decimal or 0x-prefixed hex. On a terminal, Ctrl-A x stops the VM.\n" +
    "Exit status: 0 when the guest powers off, else the run's status (see vmkit --help).\n" +
    "--output json prints the final status as JSON on stdout when the VM stops.",
  options: OPTIONS,
  output: true,
  async run(ctx) {
    const opts = ctx.values;
    if (opts.kernel === undefined || opts.kernel === "") {
      throw new UsageError("--kernel PATH is required");
    }
    return await run({ ...opts, kernel: opts.kernel }, ctx.json);
  },
});

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

async function run(opts: RunOptions, json: boolean): Promise<number> {
  const kernel = await readInput("kernel", opts.kernel);
  const initrd = opts.initrd === undefined ? undefined : await readInput("initrd", opts.initrd);
  if (opts["serial-out"] !== undefined) {
    try {
      await Deno.writeFile(opts["serial-out"], new Uint8Array(0));
    } catch (err) {
      throw new Error(
        `cannot write serial output '${opts["serial-out"]}': ${(err as Error).message}`,
      );
    }
  }
  const devices = defaultDeviceSpecs({
    memMiB: opts.mem,
    serialOut: opts["serial-out"] === undefined ? "stdout" : { path: opts["serial-out"] },
    serialIn: true,
    ...(opts["debug-exit"] === undefined ? {} : { debugExitPort: opts["debug-exit"] }),
  });
  const { Machine } = await import("../vmm/machine.ts");
  let machine;
  try {
    machine = await Machine.create({
      memMiB: opts.mem,
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
    if (opts["api-sock"] !== undefined) api = await startApiServer(opts["api-sock"], vm);
    if (tty) Deno.stdin.setRaw(true);
    await vm.start();
    if (serial !== undefined) {
      pumpStdin(serial, tty, () => stopped, () => void vm.stop()).catch((err: unknown) => {
        console.error(`vmkit run: reading stdin failed: ${(err as Error).message}`);
      });
    }
    const exit = await vm.wait();
    stopped = true;
    const code = signalled !== undefined
      ? (signalled === "SIGINT" ? Exit.SIGINT : Exit.SIGTERM)
      : exit.status === 0
      ? Exit.OK
      : (exit.status & 0xff) === 0
      ? Exit.FAILURE
      : exit.status & 0xff;
    const reason = signalled !== undefined ? `stopped by ${signalled}` : exit.reason;
    if (json) {
      serial?.flush();
      console.log(JSON.stringify(kebabKeys({ status: exit.status, reason, exitCode: code })));
    }
    if (code !== 0) console.error(`vmkit run: ${reason}`);
    return code;
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
