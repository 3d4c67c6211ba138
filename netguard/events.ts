/**
 * The structured events netguard emits: alerts, clears, decisions and stats.
 * Each serialises to one JSON line with at least `ts`, `event`, `vm`,
 * `direction` and `kind`.
 *
 * @module
 */

import type { Action, AttackKind, Direction } from "./config.ts";

/** A top talker in an alert's evidence. */
export interface Talker {
  /** Address (or `proto/port` for ports). */
  key: string;
  /** Estimated packets in the recent window. */
  packets: number;
}

/** A sample packet kept as evidence. */
export interface SamplePacket {
  /** Capture time, ms since the epoch. */
  ts: number;
  /** One-line summary, tcpdump style. */
  summary: string;
  /** The first bytes (up to 128) of the packet from its IP header on, hex. */
  hex: string;
}

/** Why an alert was raised: the traffic that crossed the line. */
export interface Evidence {
  /** Heaviest sources. */
  topSources: Talker[];
  /** Heaviest destinations. */
  topDestinations: Talker[];
  /** Heaviest destination ports (`tcp/80`, `udp/53`). */
  topPorts: Talker[];
  /** A few packets of the attack. */
  samples: SamplePacket[];
  /** Rates of every series over the window when raised. */
  rates: Record<string, number>;
}

/** Fields every event carries. */
export interface EventBase {
  /** Time of the event, ms since the epoch (capture time for replayed captures). */
  ts: number;
  /** VM id. */
  vm: string;
  /** Direction seen from the VM. */
  direction: Direction;
  /** Interface the traffic was seen on ("" when the input does not say). */
  iface: string;
}

/** An attack detected. */
export interface AlertEvent extends EventBase {
  /** Event type. */
  event: "alert";
  /** The attack kind. */
  kind: AttackKind;
  /** Which detector raised it. */
  detector: "threshold" | "cusum";
  /** The measured rate (packets/s, bits/s or flows/s). */
  rate: number;
  /** The limit it crossed (for CUSUM: the baseline's mean + k·σ). */
  threshold: number;
  /** Unit of `rate` and `threshold`. */
  unit: "pps" | "bps" | "flows/s";
  /** Why. */
  evidence: Evidence;
}

/** An attack ended. */
export interface ClearEvent extends EventBase {
  /** Event type. */
  event: "clear";
  /** The attack kind. */
  kind: AttackKind;
  /** Which detector cleared. */
  detector: "threshold" | "cusum";
  /** Rate when cleared. */
  rate: number;
  /** Peak rate during the attack. */
  peak: number;
  /** How long the alert lasted, ms. */
  durationMs: number;
}

/** What netguard did (or decided not to do). */
export interface DecisionEvent extends EventBase {
  /** Event type. */
  event: "decision";
  /** The attack kind that caused it. */
  kind: AttackKind;
  /** What was done: an {@link Action}, or `resume`/`unblock` when lifted. */
  action: Action | "resume" | "unblock";
  /** VMs acted on. */
  targets: string[];
  /** Human-readable reason. */
  reason: string;
  /** Set when acting on a VM failed. */
  error?: string;
}

/** Periodic counters of one monitor. */
export interface StatsEvent extends EventBase {
  /** Event type. */
  event: "stats";
  /** Always "stats". */
  kind: "stats";
  /** Rates over the window (per second). */
  rates: Record<string, number>;
  /** Totals since start. */
  totals: Record<string, number>;
}

/** Any netguard event. */
export type NetguardEvent = AlertEvent | ClearEvent | DecisionEvent | StatsEvent;

/** One JSON line for `e` (no trailing newline). */
export function eventToJson(e: NetguardEvent): string {
  return JSON.stringify(e);
}

/** A one-line human summary of `e`. */
export function eventToText(e: NetguardEvent): string {
  const t = new Date(e.ts).toISOString();
  const where = `vm=${e.vm} ${e.direction}${e.iface ? ` iface=${e.iface}` : ""}`;
  switch (e.event) {
    case "alert": {
      const src = e.evidence.topSources.slice(0, 3).map((s) => s.key).join(",");
      const ports = e.evidence.topPorts.slice(0, 3).map((s) => s.key).join(",");
      return `${t} ALERT ${e.kind} ${where} rate=${fmt(e.rate)} ${e.unit} > ${fmt(e.threshold)} ` +
        `(${e.detector}) sources=[${src}] ports=[${ports}]`;
    }
    case "clear":
      return `${t} CLEAR ${e.kind} ${where} after ${Math.round(e.durationMs)} ms, peak ${
        fmt(e.peak)
      }`;
    case "decision":
      return `${t} DECISION ${e.action} [${
        e.targets.join(",")
      }] for ${e.kind} ${where}: ${e.reason}` +
        (e.error ? ` (failed: ${e.error})` : "");
    case "stats":
      return `${t} STATS ${where} pps=${fmt(e.rates.packets ?? 0)} bps=${
        fmt((e.rates.bytes ?? 0) * 8)
      } ` +
        `syn=${fmt(e.rates.syn ?? 0)} udp=${fmt(e.rates.udp ?? 0)} icmp=${fmt(e.rates.icmp ?? 0)}`;
  }
}

function fmt(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return `${Math.round(n)}`;
}
