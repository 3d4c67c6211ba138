/**
 * netguard's policy: what {@link NetGuard} does when a detector raises or
 * clears an alert. Per the VM's action table an attack is only reported,
 * its traffic dropped or rate-limited at the frame tap, or a VM suspended
 * (the one under attack or sending it, or the lowest-priority ones); a VM is
 * resumed once every attack that suspended it has ended and a hold time has
 * passed, the hold doubling each time it is suspended again soon after.
 * Pauses and resumes of one VM run one after another.
 *
 * @module
 */

import type {
  Action,
  ActionTable,
  AttackKind,
  Direction,
  DirectionalThresholds,
} from "./config.ts";
import type { NetguardConfig } from "./config.ts";
import type { DecisionEvent, NetguardEvent } from "./events.ts";
import type { DirectionMonitor, TransitionReport } from "./monitor.ts";
import { PacketClass } from "./packet.ts";
import { TokenBucket } from "./token_bucket.ts";

/**
 * A VM netguard can act on: the vmm `Machine` has exactly these two methods;
 * so has anything else that can be stopped and continued.
 */
export interface PausableVm {
  /** Stops the VM's vCPUs (or process) until {@link PausableVm.resume}. */
  pause(): Promise<void>;
  /** Continues a paused VM. */
  resume(): Promise<void>;
}

/** One attack as a detector reported it: what suspends, blocks and is cleared. */
export interface Cause {
  /** Interface the monitor watches. */
  readonly iface: string;
  /** Traffic direction. */
  readonly direction: Direction;
  /** Attack kind. */
  readonly kind: AttackKind;
  /** Detector that raised it. */
  readonly detector: string;
  /** VM whose traffic it is. */
  readonly vm: string;
}

/** A stable identity of a cause, for sets and maps (never parsed back). */
export function causeKey(c: Cause): string {
  return JSON.stringify([c.iface, c.direction, c.kind, c.detector, c.vm]);
}

/** What the guard knows of one VM. */
export interface VmRecord {
  /** VM id. */
  id: string;
  /** The VM to act on, or null for a VM only watched. */
  vm: PausableVm | null;
  /** Lower is suspended first by `suspend_lowest_priority`. */
  priority: number;
  /** Never suspended. */
  protected: boolean;
  /** The VM's thresholds. */
  thresholds: DirectionalThresholds;
  /** The VM's action per direction and attack kind. */
  actions: ActionTable;
  /** Per interface, the inbound and outbound monitors. */
  monitors: Map<string, MonitorRecord[]>;
  /** Keys of the attacks holding the VM suspended. */
  causes: Set<string>;
  /** Whether netguard holds the VM suspended. */
  suspended: boolean;
  /** When to resume it (ms), or -1 while an attack goes on. */
  resumeAt: number;
  /** Its pauses and resumes, one after another. */
  chain: Promise<void>;
  /** The attack that last suspended the VM, for the resume event. */
  lastCause: { kind: AttackKind; direction: Direction; iface: string };
  /** Suspensions soon after a resume in a row: each doubles the hold time. */
  strikes: number;
  /** When netguard last resumed the VM (ms), or -Infinity. */
  lastResumeAt: number;
}

/** One direction's monitor and what the frame tap does with its traffic. */
export interface MonitorRecord {
  /** The detectors of this direction. */
  monitor: DirectionMonitor;
  /** Per {@link PacketClass}: 0 pass, 1 drop, 2 rate limit. */
  block: Uint8Array;
  /** The bucket of rate-limited classes, while any is. */
  limiter: TokenBucket | null;
  /** The attacks blocking traffic here, with the classes each blocks. */
  blocks: Map<string, { cause: Cause; classes: readonly number[] }>;
}

const ALL_CLASSES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

const CLASSES_OF_KIND: Readonly<Record<AttackKind, readonly number[]>> = {
  syn_flood: [PacketClass.tcpSyn],
  udp_flood: [PacketClass.udp],
  icmp_flood: [PacketClass.icmp],
  rst_flood: [PacketClass.tcpRst],
  frag_flood: [PacketClass.fragment],
  pps: ALL_CLASSES,
  bps: ALL_CLASSES,
  flows: ALL_CLASSES,
};

/** Most doublings of the hold time for a VM suspended again and again (2^6 = 64×). */
const MAX_STRIKES = 6;

/** Where an event happened: time, VM, direction, interface. */
type EventBase = { ts: number; vm: string; direction: Direction; iface: string };

/** The guard's policy over its VMs. */
export class Policy {
  readonly #config: NetguardConfig;
  readonly #vms: ReadonlyMap<string, VmRecord>;
  readonly #emit: (e: NetguardEvent) => void;
  readonly #blocksChanged: (mr: MonitorRecord) => void;
  readonly #pending = new Set<Promise<void>>();
  /** Decisions taken, by action. */
  readonly decisions: Record<string, number> = {};
  /** Whether a suspended VM waits for its hold time (checked on every frame). */
  pendingResume = false;

  /**
   * The policy of `config` over the guard's `vms`, emitting its decisions
   * through `emit`; `blocksChanged` is told each time a monitor's frame-tap
   * table changes (before the decision is emitted).
   */
  constructor(
    config: NetguardConfig,
    vms: ReadonlyMap<string, VmRecord>,
    emit: (e: NetguardEvent) => void,
    blocksChanged: (mr: MonitorRecord) => void = () => {},
  ) {
    this.#config = config;
    this.#vms = vms;
    this.#emit = emit;
    this.#blocksChanged = blocksChanged;
  }

  /** Acts on an alert that monitor `m` (of VM `rec`) raised at `ts` for `cause`. */
  raised(rec: VmRecord, m: DirectionMonitor, r: TransitionReport, cause: Cause, ts: number): void {
    const base: EventBase = { ts, vm: m.vm, direction: m.direction, iface: m.iface };
    const unit = r.kind === "bps" ? "bps" : r.kind === "flows" ? "flows/s" : "pps";
    const action: Action = rec.actions[m.direction][r.kind];
    const why = `${r.kind} ${m.direction} at ${Math.round(r.rate)} ${unit} (${r.detector} limit ${
      Math.round(r.threshold)
    })`;
    const decide = (a: DecisionEvent["action"], targets: string[], reason: string): void => {
      this.decisions[a] = (this.decisions[a] ?? 0) + 1;
      this.#emit({ ...base, event: "decision", kind: r.kind, action: a, targets, reason });
    };
    switch (action) {
      case "alert":
        decide("alert", [], `${why}; policy is to alert only`);
        return;
      case "drop":
      case "rate_limit": {
        const mr = monitorRecordOf(rec, m);
        if (mr === null) return;
        mr.blocks.set(causeKey(cause), { cause, classes: CLASSES_OF_KIND[r.kind] });
        this.#applyBlocks(mr);
        decide(
          action,
          [m.vm],
          action === "drop"
            ? `${why}; dropping that traffic`
            : `${why}; limiting it to ${this.#config.policy.rateLimitPps} pps`,
        );
        return;
      }
      case "suspend":
      case "suspend_lowest_priority": {
        let targets: VmRecord[];
        if (action === "suspend") targets = [rec];
        else {
          targets = [...this.#vms.values()]
            .filter((v) => v.vm !== null && !v.protected)
            .sort((a, b) => a.priority - b.priority || (a.id < b.id ? -1 : 1))
            .slice(0, this.#config.policy.suspendCount);
        }
        const actionable = targets.filter((t) => t.vm !== null && !t.protected);
        if (actionable.length === 0) {
          const who = targets.map((t) => t.id).join(", ") || "none";
          decide("alert", [], `${why}; cannot ${action}: no registered, unprotected VM (${who})`);
          return;
        }
        const key = causeKey(cause);
        const fresh: VmRecord[] = [];
        for (const t of actionable) {
          t.causes.add(key);
          t.resumeAt = -1;
          t.lastCause = { kind: r.kind, direction: m.direction, iface: m.iface };
          if (!t.suspended) {
            t.suspended = true;
            // A VM that attacks again right after it was resumed is held longer each time.
            const hold = this.#config.policy.holdMs;
            t.strikes = ts - t.lastResumeAt < Math.max(hold * 4, 1000)
              ? Math.min(t.strikes + 1, MAX_STRIKES)
              : 0;
            fresh.push(t);
          }
        }
        if (fresh.length === 0) return;
        decide(
          "suspend",
          fresh.map((t) => t.id),
          `${why}; ${
            action === "suspend"
              ? (m.direction === "inbound"
                ? "suspending the VM under attack"
                : "suspending the VM sending it")
              : "suspending the lowest-priority VMs"
          }`,
        );
        for (const t of fresh) this.#act(t, "pause", base, r.kind);
        return;
      }
    }
  }

  /** Lifts what `cause` (cleared at `ts` on monitor `m` of `rec`) blocked or suspended. */
  cleared(rec: VmRecord, m: DirectionMonitor, cause: Cause, ts: number): void {
    const key = causeKey(cause);
    const mr = monitorRecordOf(rec, m);
    if (mr !== null && mr.blocks.delete(key)) {
      this.#applyBlocks(mr);
      this.decisions.unblock = (this.decisions.unblock ?? 0) + 1;
      this.#emit({
        ts,
        vm: m.vm,
        direction: m.direction,
        iface: m.iface,
        event: "decision",
        kind: cause.kind,
        action: "unblock",
        targets: [m.vm],
        reason: `${cause.kind} ${m.direction} cleared; passing that traffic again`,
      });
    }
    for (const v of this.#vms.values()) {
      if (!v.causes.delete(key)) continue;
      if (v.causes.size === 0 && v.suspended) {
        v.resumeAt = ts + this.#config.policy.holdMs * 2 ** v.strikes;
        this.pendingResume = true;
      }
    }
    this.checkResumes(ts);
  }

  /** The frame tap's table of `mr` from the attacks blocking there; drop wins over a limit. */
  #applyBlocks(mr: MonitorRecord): void {
    mr.block.fill(0);
    let limited = false;
    for (const { cause, classes } of mr.blocks.values()) {
      const mode = this.#vms.get(cause.vm)?.actions[cause.direction][cause.kind] === "drop" ? 1 : 2;
      if (mode === 2) limited = true;
      for (const c of classes) if (mr.block[c] !== 1) mr.block[c] = mode;
    }
    if (limited && mr.limiter === null) {
      mr.limiter = new TokenBucket(this.#config.policy.rateLimitPps);
    }
    if (!limited) mr.limiter = null;
    this.#blocksChanged(mr);
  }

  /** Resumes every suspended VM whose hold time has passed by `now`. */
  checkResumes(now: number): void {
    if (!this.pendingResume) return;
    let still = false;
    for (const v of this.#vms.values()) {
      if (!v.suspended || v.resumeAt < 0) continue;
      if (v.causes.size > 0) {
        v.resumeAt = -1;
        continue;
      }
      if (now < v.resumeAt) {
        still = true;
        continue;
      }
      v.suspended = false;
      v.lastResumeAt = now;
      v.resumeAt = -1;
      this.decisions.resume = (this.decisions.resume ?? 0) + 1;
      const c = v.lastCause;
      const base: EventBase = { ts: now, vm: v.id, direction: c.direction, iface: c.iface };
      this.#emit({
        ...base,
        event: "decision",
        kind: c.kind,
        action: "resume",
        targets: [v.id],
        reason: `every attack that suspended ${v.id} ended ${
          this.#config.policy.holdMs * 2 ** v.strikes
        } ms ago`,
      });
      this.#act(v, "resume", base, c.kind);
    }
    this.pendingResume = still;
  }

  #act(v: VmRecord, what: "pause" | "resume", base: EventBase, kind: AttackKind): void {
    const vm = v.vm;
    if (vm === null) return;
    const p = v.chain.then(() => (what === "pause" ? vm.pause() : vm.resume())).then(
      () => {},
      (err: unknown) => {
        const msg = err instanceof Error ? err.message : String(err);
        this.#emit({
          ...base,
          event: "decision",
          kind,
          action: what === "pause" ? "suspend" : "resume",
          targets: [v.id],
          reason: `${what} of VM ${v.id} failed`,
          error: msg,
        });
      },
    );
    v.chain = p;
    this.#pending.add(p);
    p.finally(() => this.#pending.delete(p));
  }

  /** Resolves when every pause/resume started so far has finished. */
  async settled(): Promise<void> {
    while (this.#pending.size > 0) await Promise.all([...this.#pending]);
  }
}

function monitorRecordOf(rec: VmRecord, m: DirectionMonitor): MonitorRecord | null {
  const pair = rec.monitors.get(m.iface);
  return pair?.find((x) => x.monitor === m) ?? null;
}
