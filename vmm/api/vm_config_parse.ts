/**
 * Validation of Firecracker's configuration objects (`vm_config.ts`): each
 * parser takes the decoded JSON of a request body (or a config-file section)
 * and returns the typed record or throws a {@link VmConfigError} naming the
 * field.
 *
 * An optional field given as `null` counts as absent (Firecracker's own
 * `GET /vm/config` writes nulls), so its output reads back as a config file.
 *
 * @module
 */

import {
  DEFAULT_MACHINE_CONFIG,
  type FcBootSource,
  type FcDrive,
  type FcLogger,
  type FcLogLevel,
  type FcMachineConfig,
  type FcMetrics,
  type FcNetworkInterface,
  type FcPartialDrive,
  type FcPartialNetworkInterface,
  type FcRateLimiter,
  type FcTokenBucket,
  LOG_LEVELS,
  MAX_MEM_MIB,
  MAX_VCPU_COUNT,
  VmConfigError,
} from "./vm_config.ts";

type Json = Record<string, unknown>;

function show(v: unknown): string {
  return v === undefined ? "nothing" : JSON.stringify(v);
}

function objectAt(v: unknown, what: string): Json {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new VmConfigError(`${what} must be a JSON object, got ${show(v)}`);
  }
  return v as Json;
}

function only(body: Json, what: string, allowed: readonly string[]): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) {
      throw new VmConfigError(
        `unknown field '${key}' in ${what} (allowed: ${allowed.join(", ")})`,
      );
    }
  }
}

function integer(body: Json, key: string, what: string, min: number, max: number): number;
function integer(
  body: Json,
  key: string,
  what: string,
  min: number,
  max: number,
  optional: true,
): number | undefined;
function integer(
  body: Json,
  key: string,
  what: string,
  min: number,
  max: number,
  optional = false,
): number | undefined {
  const v = body[key];
  if ((v === undefined || v === null) && optional) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new VmConfigError(
      `'${key}' of ${what} must be an integer in ${min}..${max}, got ${show(v)}`,
    );
  }
  return v;
}

function bool(body: Json, key: string, what: string, fallback?: boolean): boolean {
  const v = body[key];
  if ((v === undefined || v === null) && fallback !== undefined) return fallback;
  if (typeof v !== "boolean") {
    throw new VmConfigError(`'${key}' of ${what} must be true or false, got ${show(v)}`);
  }
  return v;
}

function string(body: Json, key: string, what: string): string;
function string(body: Json, key: string, what: string, optional: true): string | undefined;
function string(body: Json, key: string, what: string, optional = false): string | undefined {
  const v = body[key];
  if ((v === undefined || v === null) && optional) return undefined;
  if (typeof v !== "string") {
    throw new VmConfigError(`'${key}' of ${what} must be a string, got ${show(v)}`);
  }
  return v;
}

function path(body: Json, key: string, what: string): string;
function path(body: Json, key: string, what: string, optional: true): string | undefined;
function path(body: Json, key: string, what: string, optional = false): string | undefined {
  const v = optional ? string(body, key, what, true) : string(body, key, what);
  if (v === undefined) return undefined;
  if (v === "" || v.includes("\0")) {
    throw new VmConfigError(`'${key}' of ${what} must be a non-empty path without NUL bytes`);
  }
  return v;
}

function choice<const C extends string>(
  body: Json,
  key: string,
  what: string,
  choices: readonly C[],
  fallback: C,
): C {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "string" || !(choices as readonly string[]).includes(v)) {
    throw new VmConfigError(
      `'${key}' of ${what} must be one of ${choices.join(", ")}, got ${show(v)}`,
    );
  }
  return v as C;
}

/** Checks a resource id as Firecracker does: 1..64 characters of `[A-Za-z0-9_]`. */
export function checkId(id: string, what: string): string {
  if (!/^[A-Za-z0-9_]{1,64}$/.test(id)) {
    throw new VmConfigError(
      `${what} '${id}' is not valid: use 1 to 64 letters, digits or underscores`,
    );
  }
  return id;
}

function pathId(body: Json, key: string, what: string, fromPath: string | undefined): string {
  const id = checkId(string(body, key, what), key);
  if (fromPath !== undefined && fromPath !== id) {
    throw new VmConfigError(
      `the id from the path [${fromPath}] does not match the id from the body [${id}]`,
    );
  }
  return id;
}

/**
 * Parses a `TokenBucket`; a zero `size` or `refill_time` disables it, as in
 * Firecracker: absent in a configuration, kept in an `update` (where it
 * removes a running limit, and absence means "unchanged").
 */
function tokenBucket(v: unknown, what: string, update: boolean): FcTokenBucket | undefined {
  if (v === null || v === undefined) return undefined;
  const b = objectAt(v, what);
  only(b, what, ["size", "one_time_burst", "refill_time"]);
  const max = Number.MAX_SAFE_INTEGER;
  const size = integer(b, "size", what, 0, max);
  const refill = integer(b, "refill_time", what, 0, max);
  const burst = integer(b, "one_time_burst", what, 0, max, true);
  if (size === 0 || refill === 0) return update ? { size, refill_time: refill } : undefined;
  return { size, refill_time: refill, ...(burst === undefined ? {} : { one_time_burst: burst }) };
}

/**
 * Parses a `RateLimiter` (absent or null: none). With `update` (a `PATCH`),
 * 0-sized buckets are kept: they remove a running limit.
 */
export function parseRateLimiter(
  v: unknown,
  what: string,
  update = false,
): FcRateLimiter | undefined {
  if (v === null || v === undefined) return undefined;
  const r = objectAt(v, what);
  only(r, what, ["bandwidth", "ops"]);
  const bandwidth = tokenBucket(r.bandwidth, `${what}.bandwidth`, update);
  const ops = tokenBucket(r.ops, `${what}.ops`, update);
  if (bandwidth === undefined && ops === undefined) return undefined;
  return {
    ...(bandwidth === undefined ? {} : { bandwidth }),
    ...(ops === undefined ? {} : { ops }),
  };
}

const MACHINE_FIELDS = [
  "vcpu_count",
  "mem_size_mib",
  "smt",
  "track_dirty_pages",
  "huge_pages",
  "cpu_template",
] as const;

/**
 * Parses a `MachineConfiguration`. PUT (no `base`): `vcpu_count` and
 * `mem_size_mib` are required and the rest default. PATCH: fields absent
 * keep `base`'s values.
 */
export function parseMachineConfig(v: unknown, base?: FcMachineConfig): FcMachineConfig {
  const what = "machine-config";
  const b = objectAt(v, what);
  only(b, what, MACHINE_FIELDS);
  const from = base ?? DEFAULT_MACHINE_CONFIG;
  const vcpus = base !== undefined && b.vcpu_count === undefined
    ? from.vcpu_count
    : integer(b, "vcpu_count", what, 1, MAX_VCPU_COUNT);
  const mem = base !== undefined && b.mem_size_mib === undefined
    ? from.mem_size_mib
    : integer(b, "mem_size_mib", what, 1, MAX_MEM_MIB);
  const smt = bool(b, "smt", what, base?.smt ?? false);
  if (smt) {
    throw new VmConfigError("'smt' of machine-config: vmkit presents no SMT siblings; use false");
  }
  const cpuTemplate = b.cpu_template;
  if (cpuTemplate !== undefined && cpuTemplate !== null && cpuTemplate !== "None") {
    throw new VmConfigError(
      `'cpu_template' of machine-config: vmkit has no CPU templates (only "None"), got ${
        show(cpuTemplate)
      }`,
    );
  }
  const huge = choice(b, "huge_pages", what, ["None", "Transparent", "2M"], "None");
  if (huge !== "None") {
    throw new VmConfigError(
      `'huge_pages' of machine-config: vmkit backs guest RAM with 4 KiB pages (only "None")`,
    );
  }
  return {
    vcpu_count: vcpus,
    mem_size_mib: mem,
    smt: false,
    track_dirty_pages: bool(b, "track_dirty_pages", what, base?.track_dirty_pages ?? false),
    huge_pages: "None",
  };
}

/** Parses a `BootSource`. */
export function parseBootSource(v: unknown): FcBootSource {
  const what = "boot-source";
  const b = objectAt(v, what);
  only(b, what, ["kernel_image_path", "boot_args", "initrd_path"]);
  const kernel = path(b, "kernel_image_path", what);
  const args = string(b, "boot_args", what, true);
  const initrd = path(b, "initrd_path", what, true);
  if (args !== undefined && args.includes("\0")) {
    throw new VmConfigError("'boot_args' of boot-source must not contain NUL bytes");
  }
  return {
    kernel_image_path: kernel,
    ...(args === undefined ? {} : { boot_args: args }),
    ...(initrd === undefined ? {} : { initrd_path: initrd }),
  };
}

/** Parses a `Drive`; `id` is the path's `{drive_id}` when it came over the API. */
export function parseDrive(v: unknown, id?: string): FcDrive {
  const what = "drive";
  const b = objectAt(v, what);
  if (b.socket !== undefined && b.socket !== null) {
    throw new VmConfigError("'socket' of drive: vmkit has no vhost-user-block; use path_on_host");
  }
  only(b, what, [
    "drive_id",
    "path_on_host",
    "is_root_device",
    "is_read_only",
    "partuuid",
    "cache_type",
    "io_engine",
    "rate_limiter",
    "socket",
  ]);
  const driveId = pathId(b, "drive_id", what, id);
  const partuuid = string(b, "partuuid", what, true);
  if (partuuid !== undefined && !/^[0-9A-Za-z-]{1,64}$/.test(partuuid)) {
    throw new VmConfigError(
      `'partuuid' of drive must be a UUID-like string, got ${show(partuuid)}`,
    );
  }
  const rateLimiter = parseRateLimiter(b.rate_limiter, "drive rate_limiter");
  return {
    drive_id: driveId,
    path_on_host: path(b, "path_on_host", what),
    is_root_device: bool(b, "is_root_device", what),
    is_read_only: bool(b, "is_read_only", what, false),
    ...(partuuid === undefined ? {} : { partuuid }),
    cache_type: choice(b, "cache_type", what, ["Unsafe", "Writeback"], "Unsafe"),
    io_engine: choice(b, "io_engine", what, ["Sync", "Async"], "Sync"),
    ...(rateLimiter === undefined ? {} : { rate_limiter: rateLimiter }),
  };
}

/** Parses a `PartialDrive`. */
export function parsePartialDrive(v: unknown, id: string): FcPartialDrive {
  const what = "drive update";
  const b = objectAt(v, what);
  only(b, what, ["drive_id", "path_on_host", "rate_limiter"]);
  const driveId = pathId(b, "drive_id", what, id);
  const p = path(b, "path_on_host", what, true);
  const hasLimiter = Object.hasOwn(b, "rate_limiter");
  const rateLimiter = parseRateLimiter(b.rate_limiter, "drive rate_limiter", true);
  if (p === undefined && !hasLimiter) {
    throw new VmConfigError("a drive update needs 'path_on_host' or 'rate_limiter'");
  }
  return {
    drive_id: driveId,
    ...(p === undefined ? {} : { path_on_host: p }),
    ...(rateLimiter === undefined ? {} : { rate_limiter: rateLimiter }),
  };
}

/** Checks a MAC written `aa:bb:cc:dd:ee:ff`; returns it in lower case. */
export function checkMac(mac: string, what: string): string {
  if (!/^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/.test(mac)) {
    throw new VmConfigError(`${what} '${mac}' is not a MAC address like 06:00:ac:10:00:02`);
  }
  if ((Number.parseInt(mac.slice(0, 2), 16) & 1) !== 0) {
    throw new VmConfigError(`${what} '${mac}' is a multicast address; a NIC needs a unicast one`);
  }
  return mac.toLowerCase();
}

/** Checks a host interface name (at most 15 bytes, no '/', whitespace or ':'). */
export function checkIfName(name: string, what: string): string {
  if (!/^[^\s/:]{1,15}$/.test(name) || new TextEncoder().encode(name).length > 15) {
    throw new VmConfigError(
      `${what} '${name}' is not a host interface name (1 to 15 bytes, no '/', ':' or spaces)`,
    );
  }
  return name;
}

/** Parses a `NetworkInterface`; `id` is the path's `{iface_id}` when it came over the API. */
export function parseNetworkInterface(v: unknown, id?: string): FcNetworkInterface {
  const what = "network-interface";
  const b = objectAt(v, what);
  only(b, what, [
    "iface_id",
    "host_dev_name",
    "guest_mac",
    "mtu",
    "rx_rate_limiter",
    "tx_rate_limiter",
    "netns",
  ]);
  const ifaceId = pathId(b, "iface_id", what, id);
  const mac = string(b, "guest_mac", what, true);
  const netns = path(b, "netns", what, true);
  const mtu = integer(b, "mtu", what, 68, 65535, true);
  const rx = parseRateLimiter(b.rx_rate_limiter, "rx_rate_limiter");
  const tx = parseRateLimiter(b.tx_rate_limiter, "tx_rate_limiter");
  return {
    iface_id: ifaceId,
    host_dev_name: checkIfName(string(b, "host_dev_name", what), "host_dev_name"),
    ...(mac === undefined ? {} : { guest_mac: checkMac(mac, "guest_mac") }),
    ...(mtu === undefined ? {} : { mtu }),
    ...(rx === undefined ? {} : { rx_rate_limiter: rx }),
    ...(tx === undefined ? {} : { tx_rate_limiter: tx }),
    ...(netns === undefined ? {} : { netns }),
  };
}

/** Parses a `PartialNetworkInterface`. */
export function parsePartialNetworkInterface(v: unknown, id: string): FcPartialNetworkInterface {
  const what = "network-interface update";
  const b = objectAt(v, what);
  only(b, what, ["iface_id", "rx_rate_limiter", "tx_rate_limiter"]);
  const ifaceId = pathId(b, "iface_id", what, id);
  const rx = parseRateLimiter(b.rx_rate_limiter, "rx_rate_limiter", true);
  const tx = parseRateLimiter(b.tx_rate_limiter, "tx_rate_limiter", true);
  return {
    iface_id: ifaceId,
    ...(rx === undefined ? {} : { rx_rate_limiter: rx }),
    ...(tx === undefined ? {} : { tx_rate_limiter: tx }),
  };
}

/** Parses a log level, case-insensitively as Firecracker does. */
export function parseLogLevel(v: unknown, what: string): FcLogLevel {
  const found = typeof v === "string"
    ? LOG_LEVELS.find((l) => l.toLowerCase() === v.toLowerCase())
    : undefined;
  if (found === undefined) {
    throw new VmConfigError(`${what} must be one of ${LOG_LEVELS.join(", ")}, got ${show(v)}`);
  }
  return found;
}

/** Parses a `Logger`. */
export function parseLogger(v: unknown): FcLogger {
  const what = "logger";
  const b = objectAt(v, what);
  only(b, what, ["log_path", "level", "show_level", "show_log_origin", "module"]);
  const logPath = path(b, "log_path", what, true);
  const module = string(b, "module", what, true);
  return {
    ...(logPath === undefined ? {} : { log_path: logPath }),
    level: b.level === undefined || b.level === null
      ? "Info"
      : parseLogLevel(b.level, "'level' of logger"),
    show_level: bool(b, "show_level", what, false),
    show_log_origin: bool(b, "show_log_origin", what, false),
    ...(module === undefined ? {} : { module }),
  };
}

/** Parses a `Metrics`. */
export function parseMetrics(v: unknown): FcMetrics {
  const what = "metrics";
  const b = objectAt(v, what);
  only(b, what, ["metrics_path"]);
  return { metrics_path: path(b, "metrics_path", what) };
}
