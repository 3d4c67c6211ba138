/**
 * netguard configuration: thresholds (per host default, per VM, per
 * direction), detector timing, policy actions, whitelist and VMs, and the
 * defaults. JSON files are read and validated in `config_parse.ts`.
 *
 * @module
 */

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
 * - `drop`: drop that traffic (where it is enforced: the frame tap's
 *   verdict, or a VMM NIC's own device, `enforceAt`);
 * - `alert`: report only.
 */
export type Action = "suspend" | "suspend_lowest_priority" | "rate_limit" | "drop" | "alert";

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

/** Whether `table` drops or rate-limits any traffic (actions that need an enforcer). */
export function blocksTraffic(table: ActionTable): boolean {
  return [table.inbound, table.outbound].some((d) =>
    Object.values(d).some((a) => a === "drop" || a === "rate_limit")
  );
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
