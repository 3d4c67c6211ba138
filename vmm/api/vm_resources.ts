/**
 * What a VM is to be built from, as Firecracker keeps it (its
 * `VmResources`): machine config, boot source, drives, network interfaces,
 * logger and metrics, filled by the API before `InstanceStart`, by a config
 * file (`--config-file`) or by the CLI, and turned into the machine's
 * `vmm/io_config.ts` records by {@link VmResources.ioConfig}.
 *
 * @module
 */

import type { DriveConfig, NetConfig, RateLimiterConfig } from "../io_config.ts";
import {
  DEFAULT_MACHINE_CONFIG,
  type FcBootSource,
  type FcDrive,
  type FcLogger,
  type FcMachineConfig,
  type FcMetrics,
  type FcNetworkInterface,
  type FcRateLimiter,
  type FcTokenBucket,
  VmConfigError,
} from "./vm_config.ts";
import {
  parseBootSource,
  parseDrive,
  parseLogger,
  parseMachineConfig,
  parseMetrics,
  parseNetworkInterface,
} from "./vm_config_parse.ts";

/** Config-file sections vmkit has no device for: accepted only when absent or null. */
const UNSUPPORTED_SECTIONS: Record<string, string> = {
  "balloon": "balloon device",
  "vsock": "vsock device",
  "mmds-config": "MMDS",
  "entropy": "entropy device",
  "cpu-config": "CPU templates",
  "pmem": "pmem devices",
  "memory-hotplug": "memory hotplug",
  "serial": "configurable serial device (use --serial-out)",
};

/** Firecracker's `FullVmConfiguration` as vmkit fills it (`GET /vm/config`, `--config-file`). */
export interface FullVmConfiguration {
  /** Boot source, or null before `PUT /boot-source`. */
  readonly "boot-source": FcBootSource | null;
  /** Machine configuration. */
  readonly "machine-config": FcMachineConfig;
  /** Drives, the root device first. */
  readonly "drives": FcDrive[];
  /** Network interfaces. */
  readonly "network-interfaces": FcNetworkInterface[];
  /** Logger, or null. */
  readonly "logger": FcLogger | null;
  /** Metrics, or null. */
  readonly "metrics": FcMetrics | null;
  /** Devices vmkit does not have, written as Firecracker writes absent ones (null). */
  readonly "balloon": null;
  /** No vsock device. */
  readonly "vsock": null;
  /** No MMDS. */
  readonly "mmds-config": null;
  /** No entropy device. */
  readonly "entropy": null;
  /** No CPU template. */
  readonly "cpu-config": null;
  /** No memory hotplug. */
  readonly "memory-hotplug": null;
  /** No pmem devices. */
  readonly "pmem": [];
}

function bucket(b: FcTokenBucket | undefined) {
  if (b === undefined) return undefined;
  return {
    size: b.size,
    refillTimeMs: b.refill_time,
    ...(b.one_time_burst === undefined ? {} : { oneTimeBurst: b.one_time_burst }),
  };
}

/** Firecracker's `RateLimiter` as the machine's {@link RateLimiterConfig}. */
export function rateLimiterConfig(r: FcRateLimiter | undefined): RateLimiterConfig | undefined {
  if (r === undefined) return undefined;
  const bandwidth = bucket(r.bandwidth);
  const ops = bucket(r.ops);
  return {
    ...(bandwidth === undefined ? {} : { bandwidth }),
    ...(ops === undefined ? {} : { ops }),
  };
}

/**
 * A rate limiter after a `PATCH`, as Firecracker merges it: each bucket the
 * update leaves out is kept, a 0-sized one is removed, any other replaces
 * the old. Undefined when no bucket is left.
 */
export function mergeRateLimiter(
  current: FcRateLimiter | undefined,
  update: FcRateLimiter,
): FcRateLimiter | undefined {
  const merged = (
    now: FcTokenBucket | undefined,
    next: FcTokenBucket | undefined,
  ): FcTokenBucket | undefined =>
    next === undefined ? now : next.size === 0 || next.refill_time === 0 ? undefined : next;
  const bandwidth = merged(current?.bandwidth, update.bandwidth);
  const ops = merged(current?.ops, update.ops);
  if (bandwidth === undefined && ops === undefined) return undefined;
  return {
    ...(bandwidth === undefined ? {} : { bandwidth }),
    ...(ops === undefined ? {} : { ops }),
  };
}

/** Whether a drive path names an iSCSI LUN rather than a host file. */
export function isIscsiUrl(path: string): boolean {
  return /^iscsi:\/\//i.test(path);
}

/**
 * A Firecracker drive as the machine's {@link DriveConfig}. A root drive
 * with a `partuuid` is not `root` to the machine (which would append
 * `root=/dev/vda`): {@link VmResources.cmdline} names its partition instead.
 */
export function driveConfig(d: FcDrive): DriveConfig {
  const rateLimiter = rateLimiterConfig(d.rate_limiter);
  return {
    id: d.drive_id,
    backend: isIscsiUrl(d.path_on_host)
      ? { kind: "iscsi", url: d.path_on_host }
      : { kind: "file", path: d.path_on_host },
    readOnly: d.is_read_only,
    root: d.is_root_device && d.partuuid === undefined,
    ...(rateLimiter === undefined ? {} : { rateLimiter }),
  };
}

/** A Firecracker network interface as the machine's {@link NetConfig}. */
export function netConfig(n: FcNetworkInterface): NetConfig {
  const rx = rateLimiterConfig(n.rx_rate_limiter);
  const tx = rateLimiterConfig(n.tx_rate_limiter);
  return {
    id: n.iface_id,
    tap: n.host_dev_name,
    ...(n.guest_mac === undefined ? {} : { mac: n.guest_mac }),
    ...(n.mtu === undefined ? {} : { mtu: n.mtu }),
    ...(rx === undefined ? {} : { rxRateLimiter: rx }),
    ...(tx === undefined ? {} : { txRateLimiter: tx }),
    ...(n.netns === undefined ? {} : { netns: n.netns }),
  };
}

/**
 * The resources of one VM.
 *
 * @example
 * ```ts
 * import { VmResources } from "./vm_resources.ts";
 * const r = VmResources.fromConfigFile({
 *   "boot-source": { kernel_image_path: "vmlinux", boot_args: "console=ttyS0" },
 *   "machine-config": { vcpu_count: 2, mem_size_mib: 256 },
 *   "drives": [{ drive_id: "rootfs", path_on_host: "root.img", is_root_device: true }],
 * });
 * console.log(r.ioConfig().drives[0]?.root); // true: the machine appends root=/dev/vda rw
 * ```
 */
export class VmResources {
  /** Machine configuration (Firecracker's defaults until set). */
  machine: FcMachineConfig = DEFAULT_MACHINE_CONFIG;
  /** Boot source, once set. */
  bootSource: FcBootSource | undefined;
  /** Logger configuration, once set. */
  logger: FcLogger | undefined;
  /** Metrics configuration, once set. */
  metrics: FcMetrics | undefined;
  readonly #drives = new Map<string, FcDrive>();
  readonly #nets = new Map<string, FcNetworkInterface>();

  /** Adds or replaces a drive; refuses a second root device. */
  putDrive(d: FcDrive): void {
    if (d.is_root_device) {
      for (const other of this.#drives.values()) {
        if (other.is_root_device && other.drive_id !== d.drive_id) {
          throw new VmConfigError(
            `a root block device already exists ('${other.drive_id}'); only one drive may be root`,
          );
        }
      }
    }
    this.#drives.set(d.drive_id, d);
  }

  /** The drive `id`, if configured. */
  drive(id: string): FcDrive | undefined {
    return this.#drives.get(id);
  }

  /** Records a drive's new image or rate limiter after a `PATCH /drives/{id}`. */
  updateDrive(id: string, update: { path_on_host?: string; rate_limiter?: FcRateLimiter }): void {
    const d = this.#drives.get(id);
    if (d === undefined) throw new VmConfigError(`no drive '${id}' is configured`);
    const { rate_limiter: _old, ...rest } = d;
    const rl = update.rate_limiter === undefined
      ? d.rate_limiter
      : mergeRateLimiter(d.rate_limiter, update.rate_limiter);
    this.#drives.set(id, {
      ...rest,
      ...(update.path_on_host === undefined ? {} : { path_on_host: update.path_on_host }),
      ...(rl === undefined ? {} : { rate_limiter: rl }),
    });
  }

  /** The drives, the root device first, then in the order they were added. */
  get drives(): FcDrive[] {
    const all = [...this.#drives.values()];
    return [...all.filter((d) => d.is_root_device), ...all.filter((d) => !d.is_root_device)];
  }

  /** Adds or replaces an interface; refuses a TAP or MAC another interface uses. */
  putNet(n: FcNetworkInterface): void {
    for (const other of this.#nets.values()) {
      if (other.iface_id === n.iface_id) continue;
      if (other.host_dev_name === n.host_dev_name) {
        throw new VmConfigError(
          `host_dev_name '${n.host_dev_name}' is already used by interface '${other.iface_id}'`,
        );
      }
      if (n.guest_mac !== undefined && other.guest_mac === n.guest_mac) {
        throw new VmConfigError(
          `guest_mac '${n.guest_mac}' is already used by interface '${other.iface_id}'`,
        );
      }
    }
    this.#nets.set(n.iface_id, n);
  }

  /** The interface `id`, if configured. */
  net(id: string): FcNetworkInterface | undefined {
    return this.#nets.get(id);
  }

  /** Records an interface's new rate limiters after a `PATCH /network-interfaces/{id}`. */
  updateNet(
    id: string,
    update: { rx_rate_limiter?: FcRateLimiter; tx_rate_limiter?: FcRateLimiter },
  ): void {
    const n = this.#nets.get(id);
    if (n === undefined) throw new VmConfigError(`no network interface '${id}' is configured`);
    const { rx_rate_limiter: _rx, tx_rate_limiter: _tx, ...rest } = n;
    const rx = update.rx_rate_limiter === undefined
      ? n.rx_rate_limiter
      : mergeRateLimiter(n.rx_rate_limiter, update.rx_rate_limiter);
    const tx = update.tx_rate_limiter === undefined
      ? n.tx_rate_limiter
      : mergeRateLimiter(n.tx_rate_limiter, update.tx_rate_limiter);
    this.#nets.set(id, {
      ...rest,
      ...(rx === undefined ? {} : { rx_rate_limiter: rx }),
      ...(tx === undefined ? {} : { tx_rate_limiter: tx }),
    });
  }

  /** The interfaces, in the order they were added. */
  get nets(): FcNetworkInterface[] {
    return [...this.#nets.values()];
  }

  /**
   * The kernel command line the resources give: `boot_args` (or `fallback`),
   * and for a root drive with a `partuuid`, `root=PARTUUID=… ro|rw` as
   * Firecracker appends it. The machine itself appends the
   * `virtio_mmio.device=` entries and, for a root drive without a partuuid
   * (always the first drive, `/dev/vda`), `root=/dev/vda ro|rw`.
   */
  cmdline(fallback: string): string {
    const parts = [this.bootSource?.boot_args ?? fallback];
    const root = this.drives.find((d) => d.is_root_device);
    if (root?.partuuid !== undefined) {
      parts.push(`root=PARTUUID=${root.partuuid}`, root.is_read_only ? "ro" : "rw");
    }
    return parts.filter((p) => p !== "").join(" ");
  }

  /** The drives and interfaces as the machine's records (root drive first). */
  ioConfig(): { drives: DriveConfig[]; nets: NetConfig[] } {
    return { drives: this.drives.map(driveConfig), nets: this.nets.map(netConfig) };
  }

  /** Firecracker's `FullVmConfiguration` (`GET /vm/config`). */
  toJSON(): FullVmConfiguration {
    return {
      "boot-source": this.bootSource ?? null,
      "machine-config": this.machine,
      "drives": this.drives,
      "network-interfaces": this.nets,
      "logger": this.logger ?? null,
      "metrics": this.metrics ?? null,
      // Firecracker's own reply names every section, null (or []) when absent; clients index it.
      "balloon": null,
      "vsock": null,
      "mmds-config": null,
      "entropy": null,
      "cpu-config": null,
      "memory-hotplug": null,
      "pmem": [],
    };
  }

  /**
   * Builds resources from a Firecracker config file's JSON (`--config-file`):
   * `boot-source` is required; sections vmkit has no device for must be
   * absent or null.
   */
  static fromConfigFile(json: unknown): VmResources {
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      throw new VmConfigError("the config file must hold one JSON object");
    }
    const file = json as Record<string, unknown>;
    const known = [
      "boot-source",
      "machine-config",
      "drives",
      "network-interfaces",
      "logger",
      "metrics",
      ...Object.keys(UNSUPPORTED_SECTIONS),
    ];
    for (const key of Object.keys(file)) {
      if (!known.includes(key)) {
        throw new VmConfigError(`unknown section '${key}' (known: ${known.join(", ")})`);
      }
      const what = UNSUPPORTED_SECTIONS[key];
      const v = file[key];
      const empty = v === null || v === undefined || (Array.isArray(v) && v.length === 0);
      if (what !== undefined && !empty) {
        throw new VmConfigError(`section '${key}': vmkit has no ${what}; remove it or set null`);
      }
    }
    const r = new VmResources();
    if (file["boot-source"] === undefined || file["boot-source"] === null) {
      throw new VmConfigError("the config file needs a 'boot-source' section");
    }
    r.bootSource = parseBootSource(file["boot-source"]);
    if (file["machine-config"] !== undefined && file["machine-config"] !== null) {
      r.machine = parseMachineConfig(file["machine-config"]);
    }
    for (const d of list(file, "drives")) r.putDrive(parseDrive(d));
    for (const n of list(file, "network-interfaces")) r.putNet(parseNetworkInterface(n));
    if (file.logger !== undefined && file.logger !== null) r.logger = parseLogger(file.logger);
    if (file.metrics !== undefined && file.metrics !== null) r.metrics = parseMetrics(file.metrics);
    return r;
  }
}

function list(file: Record<string, unknown>, key: string): unknown[] {
  const v = file[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new VmConfigError(`section '${key}' must be a JSON array`);
  const ids = new Set<string>();
  for (const item of v) {
    const id = (item as Record<string, unknown> | null)
      ?.[key === "drives" ? "drive_id" : "iface_id"];
    if (typeof id === "string") {
      if (ids.has(id)) throw new VmConfigError(`section '${key}' lists '${id}' twice`);
      ids.add(id);
    }
  }
  return v;
}
