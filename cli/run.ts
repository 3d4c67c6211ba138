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

import type { NetGuard } from "../netguard/mod.ts";
// Only what every run needs is imported here; the API server, snapshot loads and netguard
// (each a large module graph: checkpoint/, cow/, san/) load when a flag asks for them.
import { VmController } from "../vmm/api/controller.ts";
import type { ApiObservability } from "../vmm/api/fc_routes.ts";
import type { HttpExchange } from "../vmm/api/http.ts";
import type { ApiServer } from "../vmm/api/server.ts";
import { checkHostFile } from "../vmm/api/host_files.ts";
import { launchMachine, type LaunchOptions, machineApiVm } from "../vmm/api/launch.ts";
import { type FcLogger, VmConfigError } from "../vmm/api/vm_config.ts";
import type { VmResources } from "../vmm/api/vm_resources.ts";
import { defaultDeviceSpecs, Serial16550 } from "../vmm/devices/mod.ts";
import { JsonLogger } from "../vmm/log.ts";
import type { Machine } from "../vmm/machine.ts";
import { MetricsFile } from "../vmm/metrics/metrics_file.ts";
import { MetricsRegistry } from "../vmm/metrics/prometheus.ts";
import { command, type Entry, kebabKeys } from "./command.ts";
import { Exit } from "./exit.ts";
import { DEFAULT_CMDLINE, OPTIONS, planRun, type RunOptions, type RunPlan } from "./run_options.ts";
import { prewarmVcpuWorkers, releaseVcpuWorkers } from "../vmm/vcpu_pool.ts";
import { checkPathArg } from "./usage.ts";
import { traceStartup } from "../vmm/startup_trace.ts";

const FLUSH_MS = 50;
const INPUT_RETRY_MS = 10;
const CTRL_A = 0x01;

export { DEFAULT_CMDLINE } from "./run_options.ts";

/** The `vmkit run` command. */
export const entry: Entry = command({
  name: "run",
  summary: "boot a kernel in a new microVM; COM1 is the terminal",
  description:
    "The VM comes from --kernel and the flags, from --config-file (Firecracker's JSON layout),\n" +
    "or, with only --api-sock, from Firecracker API requests ending in InstanceStart.\n" +
    "Numbers may be decimal or 0x-prefixed hex. On a terminal, Ctrl-A x stops the VM.\n" +
    "Exit status: 0 when the guest powers off, else the run's status (see vmkit --help).\n" +
    "--output json prints the final status as JSON on stdout when the VM stops.",
  options: OPTIONS,
  output: true,
  async run(ctx) {
    traceStartup("run: options parsed");
    const plan = await planRun(ctx.values, ctx.given);
    traceStartup("run: planned");
    return await run(ctx.values, plan, ctx.json);
  },
});

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

/** The metrics the VMM serves: the machine's once it runs, the API's always. */
class VmmMetrics {
  readonly api = new MetricsRegistry();
  machine: Machine | undefined;
  guard: NetGuard | undefined;
  readonly #requests = new Map<string, number>();

  constructor() {
    this.api.add(() => [{
      name: "vmkit_api_requests_total",
      help: "Control API requests answered, by method and status.",
      type: "counter",
      samples: [...this.#requests].map(([k, value]) => {
        const [method = "", status = ""] = k.split(" ");
        return { labels: { method, status }, value };
      }),
    }]);
  }

  request(e: HttpExchange): void {
    const key = `${e.method === "" ? "-" : e.method} ${e.status}`;
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
  }

  text(): string {
    return this.api.text() + (this.machine?.metrics.registry.text() ?? "") +
      (this.guard?.metricsText() ?? "");
  }
}

async function run(opts: RunOptions, plan: RunPlan, json: boolean): Promise<number> {
  const { resources } = plan;
  const serialOut = opts["serial-out"];
  if (serialOut !== undefined) {
    try {
      await Deno.writeFile(checkPathArg("--serial-out", serialOut), new Uint8Array(0));
    } catch (err) {
      throw new Error(`cannot write serial output '${serialOut}': ${(err as Error).message}`);
    }
  }
  const vmId = opts["vm-id"];
  const log = new JsonLogger(vmId === undefined ? {} : { vm: vmId });
  const metrics = new VmmMetrics();
  let metricsFile: MetricsFile | undefined;
  const configureLogger = async (l: FcLogger): Promise<void> => {
    await log.configure({
      level: l.level,
      ...(l.log_path === undefined ? {} : { path: l.log_path }),
      ...(l.module === undefined ? {} : { module: l.module }),
    });
  };
  const configureMetrics = async (path: string): Promise<void> => {
    const f = new MetricsFile(path, () => metrics.text());
    await f.check();
    f.start(undefined, (err) => log.warn("metrics", err.message));
    metricsFile = f;
  };
  const logPath = opts["log-path"];
  if (resources.logger !== undefined) await configureLogger(resources.logger);
  if (logPath !== undefined || plan.logLevel !== undefined) {
    await configureLogger({
      level: plan.logLevel ?? "Info",
      show_level: true,
      show_log_origin: false,
      ...(logPath === undefined ? {} : { log_path: checkPathArg("--log-path", logPath) }),
    });
  }
  const metricsPath = opts["metrics-path"] ?? resources.metrics?.metrics_path;
  if (metricsPath !== undefined) {
    await configureMetrics(checkPathArg("--metrics-path", metricsPath));
    resources.metrics = { metrics_path: metricsPath };
  }

  const launchOptions: LaunchOptions = {
    devices: (memMiB) =>
      defaultDeviceSpecs({
        memMiB,
        serialOut: serialOut === undefined ? "stdout" : { path: serialOut },
        serialIn: true,
        ...(opts["debug-exit"] === undefined ? {} : { debugExitPort: opts["debug-exit"] }),
      }),
    defaultCmdline: DEFAULT_CMDLINE,
    ...(plan.identity === undefined ? {} : { identity: plan.identity }),
  };
  const ctl = new VmController({
    ...(vmId === undefined ? {} : { id: vmId }),
    resources,
    launch: async (r) => {
      traceStartup("run: launch");
      const machine = await launchMachine(r, launchOptions);
      traceStartup("run: machine created");
      metrics.machine = machine;
      log.info("run", "vm started", {
        vcpus: machine.vcpuCount,
        mem_mib: machine.memory.size / (1024 * 1024),
        kernel: r.bootSource?.kernel_image_path,
      });
      return machineApiVm(machine);
    },
  });
  const observability: ApiObservability = {
    metricsText: () => metrics.text(),
    configureLogger,
    configureMetrics: (m) => configureMetrics(m.metrics_path),
    flushMetrics: async () => {
      if (metricsFile === undefined) {
        throw new VmConfigError(
          "the metrics system is not configured (PUT /metrics or --metrics-path)",
        );
      }
      await metricsFile.flush();
    },
  };

  // The API server's and netguard's modules load beside the machine's creation, so neither
  // waits for its import after the guest is running (netguard would miss the guest's first
  // frames); a run without the flags loads neither.
  const apiModule = opts["api-sock"] === undefined ? undefined : import("../vmm/api/server.ts");
  const guardModules = opts.netguard === undefined
    ? undefined
    : Promise.all([import("../netguard/mod.ts"), import("../vmm/net_guard.ts")]);
  apiModule?.catch(() => {}); // awaited below; a failed import is reported there
  guardModules?.catch(() => {});
  let api: ApiServer | undefined;
  let signalled: Deno.Signal | undefined;
  const onSignal = (sig: Deno.Signal) => () => {
    signalled ??= sig;
    log.info("run", "signal", { signal: sig });
    void ctl.shutdown();
  };
  const onInt = onSignal("SIGINT");
  const onTerm = onSignal("SIGTERM");
  const tty = Deno.stdin.isTerminal();
  let stopped = false;
  let flusher: ReturnType<typeof setInterval> | undefined;
  let serial: Serial16550 | undefined;
  let machine: Machine | undefined;
  try {
    Deno.addSignalListener("SIGINT", onInt);
    Deno.addSignalListener("SIGTERM", onTerm);
    // With a kernel or config file the VM is running before the socket appears (as
    // Firecracker builds it before serving requests); else the socket waits for InstanceStart.
    // A VMM that restores (or waits for its configuration, maybe a snapshot load) starts
    // its vCPU Workers now, so a restore does not wait for them.
    if (!plan.bootNow) await prewarmVcpuWorkers(plan.restore === undefined ? 1 : 2);
    const sock = opts["api-sock"];
    // Snapshot loads (--restore, PUT /snapshot/load) give the VM this VMM's console and NICs.
    const snapshots = sock === undefined && plan.restore === undefined
      ? undefined
      : await import("../vmm/snapshot_api.ts");
    snapshots?.setSnapshotHost(ctl, {
      devices: launchOptions.devices,
      restore: {
        ...(vmId === undefined ? {} : { vmId }),
        ...(plan.restore === undefined ? {} : { nets: plan.restore.nets }),
      },
    });
    if (plan.bootNow || plan.restore !== undefined) {
      try {
        if (plan.restore !== undefined && snapshots !== undefined) {
          await snapshots.loadSnapshot(ctl, { path: plan.restore.path, resume: true });
        } else await ctl.start();
      } catch (err) {
        // The launch error, without the API's "cannot start the microVM: " prefix.
        throw new Error((err as Error).message.replace(/^cannot start the microVM: /, ""));
      }
    }
    if (sock !== undefined) {
      const { startApiServer } = await (apiModule ?? import("../vmm/api/server.ts"));
      api = await startApiServer(checkPathArg("--api-sock", sock), ctl, {
        observability,
        onExchange: (e) => {
          metrics.request(e);
          log.debug("api", "request", {
            method: e.method,
            path: e.path,
            status: e.status,
            ms: e.ms,
          });
        },
      });
      log.info("api", "listening", { socket: sock });
    }
    if (!plan.bootNow && plan.restore === undefined) {
      log.info("run", "waiting for InstanceStart", {});
    }
    const vm = await ctl.launched();
    machine = vm?.machine;
    metrics.machine ??= machine;
    if (machine === undefined) {
      // Shut down (API Shutdown or a signal) before anything started.
      const code = signalled === undefined
        ? Exit.OK
        : signalled === "SIGINT"
        ? Exit.SIGINT
        : Exit.SIGTERM;
      const reason = signalled === undefined ? "shut down before start" : `stopped by ${signalled}`;
      if (json) console.log(JSON.stringify(kebabKeys({ status: 0, reason, exitCode: code })));
      if (code !== 0) console.error(`vmkit run: ${reason}`);
      return code;
    }
    const m = machine;
    if (signalled !== undefined) void m.stop(); // a signal while the machine was being built
    const com1 = m.device("com1");
    serial = com1 instanceof Serial16550 ? com1 : undefined;
    const com = serial;
    if (com !== undefined) flusher = setInterval(() => com.flush(), FLUSH_MS);
    if (tty) Deno.stdin.setRaw(true);
    if (com !== undefined) {
      pumpStdin(com, tty, () => stopped, () => void m.stop()).catch((err: unknown) => {
        console.error(`vmkit run: reading stdin failed: ${(err as Error).message}`);
      });
    }
    const watch = opts.netguard === undefined
      ? undefined
      : await startNetguard(opts.netguard, vmId ?? "vm", m, resources, log, metrics, guardModules);
    let exit;
    try {
      traceStartup("run: waiting");
      exit = await m.wait();
      traceStartup("run: guest stopped");
    } finally {
      await watch?.[Symbol.asyncDispose]();
    }
    stopped = true;
    const code = signalled !== undefined
      ? (signalled === "SIGINT" ? Exit.SIGINT : Exit.SIGTERM)
      : exit.status === 0
      ? Exit.OK
      : (exit.status & 0xff) === 0
      ? Exit.FAILURE
      : exit.status & 0xff;
    const reason = signalled !== undefined ? `stopped by ${signalled}` : exit.reason;
    log.info("run", "vm stopped", { status: exit.status, reason, exit_code: code });
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
    releaseVcpuWorkers();
    await (machine ?? metrics.machine)?.[Symbol.asyncDispose]();
    try {
      await metricsFile?.close();
    } catch (err) {
      console.error(`vmkit run: ${(err as Error).message}`);
    }
    await log.close();
    traceStartup("run: cleaned up");
  }
}

/** Starts netguard on the VM's NICs (`--netguard [POLICY]`). */
async function startNetguard(
  policy: string,
  vmId: string,
  machine: Machine,
  resources: VmResources,
  log: JsonLogger,
  metrics: VmmMetrics,
  modules: Promise<[typeof import("../netguard/mod.ts"), typeof import("../vmm/net_guard.ts")]> =
    Promise.all([import("../netguard/mod.ts"), import("../vmm/net_guard.ts")]),
): Promise<AsyncDisposable> {
  const [{ defaultConfig, loadConfigFile, NetGuard }, { VmNetWatch }] = await modules;
  if (policy !== "") await checkHostFile(policy, "--netguard policy");
  const guard = new NetGuard(policy === "" ? defaultConfig() : await loadConfigFile(policy));
  guard.onEvent((e) => {
    if (e.event !== "stats") log.info("netguard", e.event, { ...e });
  });
  metrics.guard = guard;
  return await VmNetWatch.start(guard, vmId, machine, resources.ioConfig().nets);
}
