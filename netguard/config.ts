/**
 * netguard configuration: thresholds (per host default, per VM, per
 * direction), detector timing, policy actions, whitelist and VMs. JSON files
 * are validated field by field with messages that name the bad field.
 *
 * @module
 */

import { ConfigError } from "./errors.ts";
import { parsePrefix } from "./cidr.ts";

/** Which way traffic goes, seen from the VM. */
export type Direction = "inbound" | "outbound";

/** Every attack kind netguard detects. */
export const ATTACK_KINDS = [
  "syn_flood",
  "udp_flood",
  "icmp_flood",
  "rst_flood",
  "frag_flood",
  "pps",
  "bps",
  "flows",
] as const;

/** An attack kind: a protocol flood or a volumetric threshold. */
export type AttackKind = typeof ATTACK_KINDS[number];

/**
 * What to do on an attack:
 * - `suspend`: pause the VM the traffic belongs to (under attack when
 *   inbound, sending it when outbound);
 * - `suspend_lowest_priority`: pause the lowest-priority VMs of the host;
 * - `rate_limit`: let through at most `policy.rateLimitPps` of that traffic;
 * - `drop`: drop that traffic (frame-tap input only);
 * - `alert`: report only.
 */
export type Action = "suspend" | "suspend_lowest_priority" | "rate_limit" | "drop" | "alert";

const ACTIONS: readonly Action[] = [
  "suspend",
  "suspend_lowest_priority",
  "rate_limit",
  "drop",
  "alert",
];

/**
 * Rate thresholds; 0 disables one. Volumetric defaults are FastNetMon's
 * (`threshold_pps = 20000`, `threshold_mbps = 1000`, `threshold_flows = 3500`).
 */
export interface Thresholds {
  /** Packets per second. */
  pps: number;
  /** Bits per second. */
  bps: number;
  /** New flows per second. */
  flows: number;
  /** TCP SYN (without ACK) packets per second. */
  synPps: number;
  /** Smallest share of SYNs among SYN and ACK-carrying TCP packets for a SYN flood (0..1). */
  synRatio: number;
  /** UDP packets per second. */
  udpPps: number;
  /** ICMP/ICMPv6 packets per second. */
  icmpPps: number;
  /** TCP RST packets per second. */
  rstPps: number;
  /** IP fragments per second. */
  fragPps: number;
}

/** Thresholds per direction; each field falls back to the host default. */
export interface DirectionalThresholds {
  /** Thresholds for traffic to the VM. */
  inbound: Thresholds;
  /** Thresholds for traffic from the VM. */
  outbound: Thresholds;
}

/** Timing of the detectors. */
export interface DetectorConfig {
  /** Length of the rate window in ms. */
  windowMs: number;
  /** Width of one window bucket (and the evaluation period) in ms. */
  bucketMs: number;
  /** A threshold must be exceeded for this long before an alert ("ban only if exceeded for N"). */
  exceededForMs: number;
  /** An alert clears once the rate stays below `clearRatio × threshold`... */
  clearRatio: number;
  /** ...for this long (hysteresis, so decisions do not flap). */
  clearForMs: number;
  /** The adaptive (EWMA + CUSUM) detector. */
  adaptive: AdaptiveConfig;
  /** How traffic of working TCP connections is kept out of the volumetric detectors. */
  established: EstablishedConfig;
}

/**
 * Volume alone from a few established, acknowledged TCP flows (a bulk copy,
 * a backup, parallel streams between two hosts) is not a DoS indication:
 * the `pps` and `bps` thresholds and the adaptive packet-rate detector count
 * only the traffic that is not part of such flows, as long as those flows
 * come from at most `maxPeers` host pairs. Protocol floods (SYN, UDP, ICMP,
 * RST, fragments) are judged as before.
 */
export interface EstablishedConfig {
  /** Whether established traffic is discounted. */
  enabled: boolean;
  /** A flow counts as acknowledged while an ACK number advanced within this many ms. */
  ackWindowMs: number;
  /** More host pairs than this with established flows is spread traffic: nothing is discounted. */
  maxPeers: number;
}

/** EWMA baseline with a one-sided CUSUM on the SYN and packet-rate series. */
export interface AdaptiveConfig {
  /** Whether the adaptive detector runs. */
  enabled: boolean;
  /** EWMA weight of a new sample (0..1) for the baseline mean and variance. */
  alpha: number;
  /** CUSUM slack, in baseline standard deviations. */
  k: number;
  /** CUSUM decision level, in baseline standard deviations. */
  h: number;
  /** No adaptive alert below this rate (packets/s), however unusual. */
  minPps: number;
  /** Baseline learning time before the detector may alert, in ms. */
  warmupMs: number;
}

/** Actions per attack kind, per direction. */
export interface ActionTable {
  /** Actions for attacks on the VM. */
  inbound: Record<AttackKind, Action>;
  /** Actions for attacks from the VM. */
  outbound: Record<AttackKind, Action>;
}

/** What netguard does about alerts. */
export interface PolicyConfig {
  /** Action per attack kind and direction. */
  actions: ActionTable;
  /** A suspended VM is resumed this long after its last attack cleared, in ms. */
  holdMs: number;
  /** Packets per second let through by `rate_limit`. */
  rateLimitPps: number;
  /** How many VMs `suspend_lowest_priority` pauses. */
  suspendCount: number;
}

/** One VM known from the configuration. */
export interface VmConfig {
  /** The VM id used in events. */
  id: string;
  /** Lower is suspended first by `suspend_lowest_priority` (default 100). */
  priority: number;
  /** Addresses or prefixes of the VM, to assign traffic seen on a shared interface. */
  addresses: string[];
  /** Never suspended when true. */
  protected: boolean;
  /** Threshold overrides for this VM. */
  thresholds: DirectionalThresholds;
  /** Action overrides for this VM. */
  actions: ActionTable;
}

/** The whole, validated configuration. */
export interface NetguardConfig {
  /** Host-wide default thresholds. */
  thresholds: DirectionalThresholds;
  /** Detector timing. */
  detector: DetectorConfig;
  /** Policy. */
  policy: PolicyConfig;
  /** Remote addresses/prefixes whose traffic is never counted toward an attack. */
  whitelist: string[];
  /** VMs known up front (more can be registered at run time). */
  vms: VmConfig[];
  /** VM id for traffic no VM address matches. */
  defaultVm: string;
  /** Packets of each attack kept as evidence in an alert. */
  samples: number;
  /** Top talkers listed in an alert. */
  topN: number;
}

/** Default thresholds (see {@link Thresholds}). */
export const DEFAULT_THRESHOLDS: Readonly<Thresholds> = Object.freeze({
  pps: 20_000,
  bps: 1_000_000_000,
  flows: 3_500,
  synPps: 5_000,
  synRatio: 0.5,
  udpPps: 10_000,
  icmpPps: 2_000,
  rstPps: 5_000,
  fragPps: 5_000,
});

function defaultActions(): Record<AttackKind, Action> {
  return {
    syn_flood: "suspend",
    udp_flood: "suspend",
    icmp_flood: "suspend",
    rst_flood: "suspend",
    frag_flood: "suspend",
    // Volumetric thresholds fire on legitimate bulk transfers too: report them.
    pps: "alert",
    bps: "alert",
    flows: "alert",
  };
}

/** A fresh configuration with every default. */
export function defaultConfig(): NetguardConfig {
  return {
    thresholds: { inbound: { ...DEFAULT_THRESHOLDS }, outbound: { ...DEFAULT_THRESHOLDS } },
    detector: {
      windowMs: 100,
      bucketMs: 10,
      exceededForMs: 30,
      clearRatio: 0.5,
      clearForMs: 500,
      adaptive: { enabled: true, alpha: 0.01, k: 3, h: 30, minPps: 2_000, warmupMs: 2_000 },
      established: { enabled: true, ackWindowMs: 1_000, maxPeers: 32 },
    },
    policy: {
      actions: { inbound: defaultActions(), outbound: defaultActions() },
      holdMs: 2_000,
      rateLimitPps: 1_000,
      suspendCount: 1,
    },
    whitelist: [],
    vms: [],
    defaultVm: "host",
    samples: 4,
    topN: 5,
  };
}

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
