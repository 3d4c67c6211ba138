/**
 * Reading netguard configuration: JSON (from a file or already parsed) is
 * validated field by field, with messages that name the bad field, and
 * merged over the defaults of `config.ts`.
 *
 * @module
 */

import { parsePrefix } from "./cidr.ts";
import {
  type Action,
  type ActionTable,
  ATTACK_KINDS,
  type AttackKind,
  defaultConfig,
  type DirectionalThresholds,
  type NetguardConfig,
  type Thresholds,
  type VmConfig,
} from "./config.ts";
import { ConfigError } from "./errors.ts";

const ACTIONS: readonly Action[] = [
  "suspend",
  "suspend_lowest_priority",
  "rate_limit",
  "drop",
  "alert",
];

type Json = Record<string, unknown>;

function isObject(x: unknown): x is Json {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function checkKeys(obj: Json, allowed: readonly string[], path: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) {
      throw new ConfigError(`${path}.${k}`, `unknown field; expected one of ${allowed.join(", ")}`);
    }
  }
}

function num(
  obj: Json,
  key: string,
  path: string,
  min: number,
  max: number,
  fallback: number,
): number {
  const v = obj[key];
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
    throw new ConfigError(
      `${path}.${key}`,
      `must be a number in [${min}, ${max}], got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

const THRESHOLD_KEYS: readonly (keyof Thresholds)[] = [
  "pps",
  "bps",
  "flows",
  "synPps",
  "synRatio",
  "udpPps",
  "icmpPps",
  "rstPps",
  "fragPps",
];

function parseThresholds(x: unknown, path: string, base: Thresholds): Thresholds {
  if (x === undefined) return { ...base };
  if (!isObject(x)) throw new ConfigError(path, "must be an object of thresholds");
  checkKeys(x, THRESHOLD_KEYS, path);
  const out = { ...base };
  for (const k of THRESHOLD_KEYS) out[k] = num(x, k, path, 0, k === "synRatio" ? 1 : 1e15, base[k]);
  return out;
}

/** Accepts `{...}` (both directions) or `{inbound: {...}, outbound: {...}}`. */
function parseDirThresholds(
  x: unknown,
  path: string,
  base: DirectionalThresholds,
): DirectionalThresholds {
  if (x === undefined) return { inbound: { ...base.inbound }, outbound: { ...base.outbound } };
  if (!isObject(x)) throw new ConfigError(path, "must be an object");
  if ("inbound" in x || "outbound" in x) {
    checkKeys(x, ["inbound", "outbound"], path);
    return {
      inbound: parseThresholds(x.inbound, `${path}.inbound`, base.inbound),
      outbound: parseThresholds(x.outbound, `${path}.outbound`, base.outbound),
    };
  }
  return {
    inbound: parseThresholds(x, path, base.inbound),
    outbound: parseThresholds(x, path, base.outbound),
  };
}

function parseActionMap(
  x: unknown,
  path: string,
  base: Record<AttackKind, Action>,
): Record<AttackKind, Action> {
  if (x === undefined) return { ...base };
  if (!isObject(x)) throw new ConfigError(path, "must be an object of attack kind to action");
  checkKeys(x, ATTACK_KINDS, path);
  const out = { ...base };
  for (const k of ATTACK_KINDS) {
    const v = x[k];
    if (v === undefined) continue;
    if (typeof v !== "string" || !(ACTIONS as readonly string[]).includes(v)) {
      throw new ConfigError(
        `${path}.${k}`,
        `must be one of ${ACTIONS.join(", ")}, got ${JSON.stringify(v)}`,
      );
    }
    out[k] = v as Action;
  }
  return out;
}

function parseActions(x: unknown, path: string, base: ActionTable): ActionTable {
  if (x === undefined) return { inbound: { ...base.inbound }, outbound: { ...base.outbound } };
  if (!isObject(x)) throw new ConfigError(path, "must be an object");
  if ("inbound" in x || "outbound" in x) {
    checkKeys(x, ["inbound", "outbound"], path);
    return {
      inbound: parseActionMap(x.inbound, `${path}.inbound`, base.inbound),
      outbound: parseActionMap(x.outbound, `${path}.outbound`, base.outbound),
    };
  }
  return {
    inbound: parseActionMap(x, path, base.inbound),
    outbound: parseActionMap(x, path, base.outbound),
  };
}

function strings(x: unknown, path: string): string[] {
  if (x === undefined) return [];
  if (!Array.isArray(x) || !x.every((s) => typeof s === "string")) {
    throw new ConfigError(path, "must be an array of strings");
  }
  return x as string[];
}

/**
 * Validates a configuration object (as parsed from JSON) and fills in defaults.
 *
 * @throws {ConfigError} naming the first bad field.
 */
export function parseConfig(x: unknown): NetguardConfig {
  const d = defaultConfig();
  if (x === undefined || x === null) return d;
  if (!isObject(x)) throw new ConfigError("(root)", "must be a JSON object");
  checkKeys(
    x,
    ["thresholds", "detector", "policy", "whitelist", "vms", "defaultVm", "samples", "topN"],
    "(root)",
  );
  const thresholds = parseDirThresholds(x.thresholds, "thresholds", d.thresholds);
  let detector = d.detector;
  if (x.detector !== undefined) {
    const o = x.detector;
    if (!isObject(o)) throw new ConfigError("detector", "must be an object");
    checkKeys(
      o,
      [
        "windowMs",
        "bucketMs",
        "exceededForMs",
        "clearRatio",
        "clearForMs",
        "adaptive",
        "established",
      ],
      "detector",
    );
    const bucketMs = num(o, "bucketMs", "detector", 1, 10_000, d.detector.bucketMs);
    const windowMs = num(
      o,
      "windowMs",
      "detector",
      bucketMs,
      600_000,
      Math.max(bucketMs, d.detector.windowMs),
    );
    let adaptive = d.detector.adaptive;
    if (o.adaptive !== undefined) {
      const a = o.adaptive;
      if (!isObject(a)) throw new ConfigError("detector.adaptive", "must be an object");
      checkKeys(a, ["enabled", "alpha", "k", "h", "minPps", "warmupMs"], "detector.adaptive");
      if (a.enabled !== undefined && typeof a.enabled !== "boolean") {
        throw new ConfigError("detector.adaptive.enabled", "must be true or false");
      }
      const p = "detector.adaptive";
      adaptive = {
        enabled: a.enabled ?? adaptive.enabled,
        alpha: num(a, "alpha", p, 0.0001, 1, adaptive.alpha),
        k: num(a, "k", p, 0, 1000, adaptive.k),
        h: num(a, "h", p, 0.1, 1e6, adaptive.h),
        minPps: num(a, "minPps", p, 0, 1e12, adaptive.minPps),
        warmupMs: num(a, "warmupMs", p, 0, 3_600_000, adaptive.warmupMs),
      };
    }
    let established = d.detector.established;
    if (o.established !== undefined) {
      const e = o.established;
      const p = "detector.established";
      if (!isObject(e)) throw new ConfigError(p, "must be an object");
      checkKeys(e, ["enabled", "ackWindowMs", "maxPeers"], p);
      if (e.enabled !== undefined && typeof e.enabled !== "boolean") {
        throw new ConfigError(`${p}.enabled`, "must be true or false");
      }
      established = {
        enabled: e.enabled ?? established.enabled,
        ackWindowMs: num(e, "ackWindowMs", p, 1, 600_000, established.ackWindowMs),
        maxPeers: num(e, "maxPeers", p, 0, 4096, established.maxPeers),
      };
    }
    detector = {
      windowMs,
      bucketMs,
      exceededForMs: num(o, "exceededForMs", "detector", 0, 3_600_000, d.detector.exceededForMs),
      clearRatio: num(o, "clearRatio", "detector", 0, 1, d.detector.clearRatio),
      clearForMs: num(o, "clearForMs", "detector", 0, 3_600_000, d.detector.clearForMs),
      adaptive,
      established,
    };
  }
  let policy = d.policy;
  if (x.policy !== undefined) {
    const o = x.policy;
    if (!isObject(o)) throw new ConfigError("policy", "must be an object");
    checkKeys(o, ["actions", "holdMs", "rateLimitPps", "suspendCount"], "policy");
    policy = {
      actions: parseActions(o.actions, "policy.actions", d.policy.actions),
      holdMs: num(o, "holdMs", "policy", 0, 86_400_000, d.policy.holdMs),
      rateLimitPps: num(o, "rateLimitPps", "policy", 0, 1e12, d.policy.rateLimitPps),
      suspendCount: num(o, "suspendCount", "policy", 1, 10_000, d.policy.suspendCount),
    };
  }
  const whitelist = strings(x.whitelist, "whitelist");
  whitelist.forEach((w, i) => parsePrefix(w, `whitelist[${i}]`));
  const vms: VmConfig[] = [];
  if (x.vms !== undefined) {
    if (!Array.isArray(x.vms)) throw new ConfigError("vms", "must be an array of VM objects");
    const seen = new Set<string>();
    x.vms.forEach((v: unknown, i: number) => {
      const p = `vms[${i}]`;
      if (!isObject(v)) throw new ConfigError(p, "must be an object with at least an id");
      checkKeys(v, ["id", "priority", "addresses", "protected", "thresholds", "actions"], p);
      if (typeof v.id !== "string" || v.id === "") {
        throw new ConfigError(`${p}.id`, "must be a non-empty string");
      }
      if (seen.has(v.id)) throw new ConfigError(`${p}.id`, `VM '${v.id}' is listed twice`);
      seen.add(v.id);
      if (v.protected !== undefined && typeof v.protected !== "boolean") {
        throw new ConfigError(`${p}.protected`, "must be true or false");
      }
      const addresses = strings(v.addresses, `${p}.addresses`);
      addresses.forEach((a, j) => parsePrefix(a, `${p}.addresses[${j}]`));
      vms.push({
        id: v.id,
        priority: num(v, "priority", p, -1e9, 1e9, 100),
        addresses,
        protected: v.protected ?? false,
        thresholds: parseDirThresholds(v.thresholds, `${p}.thresholds`, thresholds),
        actions: parseActions(v.actions, `${p}.actions`, policy.actions),
      });
    });
  }
  if (x.defaultVm !== undefined && (typeof x.defaultVm !== "string" || x.defaultVm === "")) {
    throw new ConfigError("defaultVm", "must be a non-empty string");
  }
  return {
    thresholds,
    detector,
    policy,
    whitelist,
    vms,
    defaultVm: typeof x.defaultVm === "string" ? x.defaultVm : d.defaultVm,
    samples: num(x, "samples", "(root)", 0, 64, d.samples),
    topN: num(x, "topN", "(root)", 1, 64, d.topN),
  };
}

const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/**
 * Reads and validates a JSON configuration file.
 *
 * @throws {ConfigError} when the file is unreadable, not JSON, or invalid.
 */
export async function loadConfigFile(path: string): Promise<NetguardConfig> {
  let text: string;
  try {
    // Only a regular file of sane size: /dev/zero or a FIFO would be read forever.
    const st = await Deno.stat(path);
    if (!st.isFile) {
      throw new ConfigError(path, st.isDirectory ? "is a directory" : "is not a regular file");
    }
    if (st.size > MAX_CONFIG_BYTES) {
      throw new ConfigError(path, `is ${st.size} bytes; a configuration is at most 4 MiB`);
    }
    text = new TextDecoder("utf-8", { fatal: true }).decode(await Deno.readFile(path));
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(
      path,
      `cannot read the file (${err instanceof Error ? err.message : String(err)})`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(
      path,
      `not valid JSON (${err instanceof Error ? err.message : String(err)})`,
    );
  }
  return parseConfig(json);
}
