/**
 * Firecracker's API routes over a {@link VmController}, with Firecracker's
 * paths, bodies, status codes and pre-/post-boot rules (`firecracker.yaml`),
 * plus vmkit's own `GET /vm`, `GET /metrics` and the `Shutdown` action.
 *
 * | method    | path                           | when      | body / reply                              |
 * | --------- | ------------------------------ | --------- | ----------------------------------------- |
 * | GET       | `/`                            | any       | 200 `InstanceInfo`                        |
 * | GET       | `/version`                     | any       | 200 `{firecracker_version, vmkit_version}`|
 * | GET       | `/vm/config`                   | any       | 200 `FullVmConfiguration`                 |
 * | GET       | `/machine-config`              | any       | 200 `MachineConfiguration`                |
 * | PUT/PATCH | `/machine-config`              | pre-boot  | `MachineConfiguration` → 204              |
 * | PUT       | `/boot-source`                 | pre-boot  | `BootSource` → 204                        |
 * | PUT       | `/drives/{drive_id}`           | pre-boot  | `Drive` → 204                             |
 * | PATCH     | `/drives/{drive_id}`           | post-boot | `PartialDrive` → 204 (swaps the image)    |
 * | PUT       | `/network-interfaces/{id}`     | pre-boot  | `NetworkInterface` → 204                  |
 * | PATCH     | `/network-interfaces/{id}`     | post-boot | `PartialNetworkInterface` → 204 (limiters)|
 * | PUT       | `/logger`, `/metrics`          | pre-boot  | `Logger`, `Metrics` → 204                 |
 * | GET       | `/metrics`                     | any       | 200 Prometheus text (vmkit)               |
 * | PUT       | `/actions`                     | see below | `InstanceActionInfo` → 204                |
 * | GET/PATCH | `/vm`                          | any/post  | vmkit's state / Firecracker's `Vm` → 204  |
 *
 * Actions: `InstanceStart` (pre-boot), `SendCtrlAltDel` (post-boot),
 * `FlushMetrics` (any, once metrics are configured), `Shutdown` (vmkit: any).
 *
 * A `PATCH` of a rate limiter is merged as Firecracker merges it: a
 * direction or bucket left out is unchanged, a 0-sized bucket removes that
 * limit, any other replaces it with the budget carried over
 * (`RateLimiter.update`), on the running NIC's or drive's device.
 *
 * @module
 */

import { VERSION } from "../../version.ts";
import type { VmController } from "./controller.ts";
import { checkDrivePath, checkHostFile } from "./host_files.ts";
import { ApiFault, type ApiRoute, json, noContent, onlyFields } from "./router.ts";
import { type FcLogger, type FcMetrics, VmConfigError } from "./vm_config.ts";
import {
  parseBootSource,
  parseDrive,
  parseLogger,
  parseMachineConfig,
  parseMetrics,
  parseNetworkInterface,
  parsePartialDrive,
  parsePartialNetworkInterface,
} from "./vm_config_parse.ts";
import { rateLimiterConfig } from "./vm_resources.ts";

const MIB = 1024 * 1024;

/** What the routes need from the VMM's metrics and logs (each optional). */
export interface ApiObservability {
  /** Prometheus text for `GET /metrics`. */
  metricsText?(): string;
  /** `FlushMetrics`: writes the metrics file; throws when none is configured. */
  flushMetrics?(): Promise<void>;
  /** `PUT /metrics`: starts writing metrics to the given file. */
  configureMetrics?(m: FcMetrics): Promise<void>;
  /** `PUT /logger`: starts writing JSON log lines as configured. */
  configureLogger?(l: FcLogger): Promise<void>;
}

/** Firecracker routes for devices vmkit does not have: answered 400 naming what is missing. */
const UNSUPPORTED: ReadonlyArray<[string, readonly string[], string]> = [
  ["/balloon", ["GET", "PUT", "PATCH"], "balloon device"],
  ["/balloon/statistics", ["GET", "PATCH"], "balloon device"],
  ["/balloon/hinting/start", ["PATCH"], "balloon device"],
  ["/balloon/hinting/status", ["GET"], "balloon device"],
  ["/balloon/hinting/stop", ["PATCH"], "balloon device"],
  ["/cpu-config", ["PUT"], "CPU templates"],
  ["/entropy", ["PUT"], "entropy device"],
  ["/hotplug/memory", ["GET", "PUT", "PATCH"], "memory hotplug"],
  ["/mmds", ["GET", "PUT", "PATCH"], "MMDS"],
  ["/mmds/config", ["PUT"], "MMDS"],
  ["/pmem/{id}", ["PUT", "PATCH"], "pmem devices"],
  ["/serial", ["PUT"], "configurable serial device (use vmkit run --serial-out)"],
  ["/vsock", ["PUT"], "vsock device"],
];

/** Runs `fn`, turning a {@link VmConfigError} into a 400. */
async function config<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof VmConfigError) throw new ApiFault(400, err.message);
    throw err;
  }
}

/**
 * The Firecracker-compatible routes of `ctl`.
 *
 * @example
 * ```ts ignore
 * import { ApiRouter } from "./router.ts";
 * import { VmController } from "./controller.ts";
 * import { firecrackerRoutes } from "./fc_routes.ts";
 * const router = new ApiRouter().add(firecrackerRoutes(new VmController({ launch })));
 * ```
 */
export function firecrackerRoutes(ctl: VmController, obs: ApiObservability = {}): ApiRoute[] {
  const r = ctl.resources;
  return [
    {
      method: "GET",
      path: "/",
      handler: () =>
        json(200, { id: ctl.id, state: ctl.state, vmm_version: VERSION, app_name: "vmkit" }),
    },
    {
      method: "GET",
      path: "/version",
      // Firecracker's clients read `firecracker_version`; it carries vmkit's version.
      handler: () => json(200, { firecracker_version: VERSION, vmkit_version: VERSION }),
    },
    { method: "GET", path: "/vm/config", handler: () => json(200, r.toJSON()) },
    { method: "GET", path: "/machine-config", handler: () => json(200, r.machine) },
    {
      method: "PUT",
      path: "/machine-config",
      handler: async (c) => {
        ctl.requirePreBoot();
        const body = await c.body();
        r.machine = await config(() => parseMachineConfig(body));
        return noContent();
      },
    },
    {
      method: "PATCH",
      path: "/machine-config",
      handler: async (c) => {
        ctl.requirePreBoot();
        const body = await c.body();
        r.machine = await config(() => parseMachineConfig(body, r.machine));
        return noContent();
      },
    },
    {
      method: "PUT",
      path: "/boot-source",
      handler: async (c) => {
        ctl.requirePreBoot();
        const body = await c.body();
        const boot = await config(async () => {
          const b = parseBootSource(body);
          await checkHostFile(b.kernel_image_path, "kernel_image_path");
          if (b.initrd_path !== undefined) await checkHostFile(b.initrd_path, "initrd_path");
          return b;
        });
        ctl.requirePreBoot();
        r.bootSource = boot;
        return noContent();
      },
    },
    {
      method: "PUT",
      path: "/drives/{drive_id}",
      handler: async (c) => {
        ctl.requirePreBoot();
        const body = await c.body();
        await config(async () => {
          const d = parseDrive(body, c.params.drive_id);
          await checkDrivePath(d.path_on_host, d.is_read_only, "path_on_host");
          ctl.requirePreBoot();
          r.putDrive(d);
        });
        return noContent();
      },
    },
    {
      method: "PATCH",
      path: "/drives/{drive_id}",
      handler: async (c) => {
        const vm = ctl.requireStarted();
        const body = await c.body();
        const id = c.params.drive_id ?? "";
        const update = await config(() => parsePartialDrive(body, id));
        const drive = r.drive(id);
        if (drive === undefined) throw new ApiFault(400, `no drive '${id}' is configured`);
        if (vm.updateDrive === undefined) {
          throw new ApiFault(400, "this VM cannot update its drives");
        }
        const updateDrive = vm.updateDrive.bind(vm);
        if (update.path_on_host !== undefined) {
          const p = update.path_on_host;
          await config(() => checkDrivePath(p, drive.is_read_only, "path_on_host"));
        }
        const limiter = rateLimiterConfig(update.rate_limiter);
        await ctl.serial(async () => {
          await updateDrive(id, {
            ...(update.path_on_host === undefined ? {} : { path: update.path_on_host }),
            ...(limiter === undefined ? {} : { rateLimiter: limiter }),
          });
          r.updateDrive(id, {
            ...(update.path_on_host === undefined ? {} : { path_on_host: update.path_on_host }),
            ...(update.rate_limiter === undefined ? {} : { rate_limiter: update.rate_limiter }),
          });
        });
        return noContent();
      },
    },
    {
      method: "PUT",
      path: "/network-interfaces/{iface_id}",
      handler: async (c) => {
        ctl.requirePreBoot();
        const body = await c.body();
        await config(() => r.putNet(parseNetworkInterface(body, c.params.iface_id)));
        return noContent();
      },
    },
    {
      method: "PATCH",
      path: "/network-interfaces/{iface_id}",
      handler: async (c) => {
        const vm = ctl.requireStarted();
        const body = await c.body();
        const id = c.params.iface_id ?? "";
        const update = await config(() => parsePartialNetworkInterface(body, id));
        if (r.net(id) === undefined) {
          throw new ApiFault(400, `no network interface '${id}' is configured`);
        }
        if (vm.updateNet === undefined) {
          throw new ApiFault(400, "this VM cannot update its network interfaces");
        }
        const updateNet = vm.updateNet.bind(vm);
        const rx = rateLimiterConfig(update.rx_rate_limiter);
        const tx = rateLimiterConfig(update.tx_rate_limiter);
        await ctl.serial(async () => {
          await updateNet(id, {
            ...(rx === undefined ? {} : { rxRateLimiter: rx }),
            ...(tx === undefined ? {} : { txRateLimiter: tx }),
          });
          r.updateNet(id, {
            ...(update.rx_rate_limiter === undefined
              ? {}
              : { rx_rate_limiter: update.rx_rate_limiter }),
            ...(update.tx_rate_limiter === undefined
              ? {}
              : { tx_rate_limiter: update.tx_rate_limiter }),
          });
        });
        return noContent();
      },
    },
    {
      method: "PUT",
      path: "/logger",
      handler: async (c) => {
        ctl.requirePreBoot();
        const body = await c.body();
        const logger = await config(() => parseLogger(body));
        if (obs.configureLogger === undefined) {
          throw new ApiFault(400, "this VMM has no logger to configure");
        }
        await config(() => obs.configureLogger?.(logger));
        r.logger = logger;
        return noContent();
      },
    },
    {
      method: "PUT",
      path: "/metrics",
      handler: async (c) => {
        ctl.requirePreBoot();
        const body = await c.body();
        const metrics = await config(() => parseMetrics(body));
        if (r.metrics !== undefined) {
          throw new ApiFault(400, "the metrics system is already configured");
        }
        if (obs.configureMetrics === undefined) {
          throw new ApiFault(400, "this VMM has no metrics file to configure");
        }
        await config(() => obs.configureMetrics?.(metrics));
        r.metrics = metrics;
        return noContent();
      },
    },
    {
      method: "GET",
      path: "/metrics",
      handler: () =>
        new Response(obs.metricsText?.() ?? "", {
          status: 200,
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        }),
    },
    {
      method: "PUT",
      path: "/actions",
      handler: async (c) => {
        const body = await c.body();
        onlyFields(body, ["action_type"]);
        const action = body.action_type;
        if (action === "InstanceStart") {
          await ctl.start();
        } else if (action === "SendCtrlAltDel") {
          const vm = ctl.requireStarted();
          if (vm.sendCtrlAltDel === undefined) {
            throw new ApiFault(400, "this VM has no i8042 keyboard controller");
          }
          vm.sendCtrlAltDel();
        } else if (action === "FlushMetrics") {
          if (obs.flushMetrics === undefined) {
            throw new ApiFault(400, "the metrics system is not configured (PUT /metrics first)");
          }
          await config(() => obs.flushMetrics?.());
        } else if (action === "Shutdown") {
          await ctl.shutdown();
        } else {
          throw new ApiFault(
            400,
            `'action_type' must be one of InstanceStart, SendCtrlAltDel, FlushMetrics, Shutdown, ` +
              `got ${JSON.stringify(action)}`,
          );
        }
        return noContent();
      },
    },
    {
      method: "GET",
      path: "/vm",
      handler: () => {
        const vm = ctl.vm;
        if (vm === undefined) {
          return json(200, {
            state: ctl.state,
            vcpus: r.machine.vcpu_count,
            memory: { mib: r.machine.mem_size_mib, regions: [] },
          });
        }
        return json(200, {
          state: vm.state,
          vcpus: vm.vcpuCount,
          memory: {
            mib: vm.memory.size / MIB,
            regions: vm.memory.regions.map((g) => ({ guest_addr: g.guestAddr, size: g.size })),
          },
        });
      },
    },
    {
      method: "PATCH",
      path: "/vm",
      handler: async (c) => {
        const body = await c.body();
        onlyFields(body, ["state"]);
        const want = body.state;
        if (want !== "Paused" && want !== "Resumed") {
          throw new ApiFault(
            400,
            `'state' must be "Paused" or "Resumed", got ${JSON.stringify(want)}`,
          );
        }
        const vm = ctl.requireStarted();
        await ctl.serial(async () => {
          const now = vm.state;
          if (want === "Paused") {
            if (now === "Paused") return;
            if (now !== "Running") throw new ApiFault(400, `cannot pause a VM that is ${now}`);
            await vm.pause();
          } else {
            if (now === "Running") return;
            if (now !== "Paused") throw new ApiFault(400, `cannot resume a VM that is ${now}`);
            await vm.resume();
          }
        });
        return noContent();
      },
    },
    ...UNSUPPORTED.flatMap(([path, methods, what]) =>
      methods.map((method) => ({
        method,
        path,
        handler: (): Response => {
          throw new ApiFault(400, `vmkit has no ${what}: ${method} ${path} is not supported`);
        },
      }))
    ),
  ];
}
