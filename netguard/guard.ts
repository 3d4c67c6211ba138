/**
 * {@link NetGuard}: the per-VM denial-of-service monitor and its policy.
 * Frames come in through the frame tap (per VM and direction), or from a
 * host interface or capture where the VM is found by address; attacks raise
 * alerts; the policy suspends VMs (anything {@link PausableVm}), rate-limits
 * or drops, and resumes a VM once its attacks ended and a hold time passed.
 *
 * @module
 */

import { parsePrefix, PrefixSet } from "./cidr.ts";
import {
  type Action,
  type ActionTable,
  type AttackKind,
  defaultConfig,
  type Direction,
  type DirectionalThresholds,
  type NetguardConfig,
} from "./config.ts";
import { VmRegistryError } from "./errors.ts";
import type { DecisionEvent, NetguardEvent, StatsEvent } from "./events.ts";
import { ConnTracker } from "./conn_tracker.ts";
import { DirectionMonitor, type TransitionReport } from "./monitor.ts";
import { PacketClass, PacketInfo } from "./packet.ts";
import { PACKET_OUTGOING, parseLinkFrame } from "./pcap.ts";
import { LINKTYPE_ETHERNET } from "./pcap_decoder.ts";
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

/** Options of a VM registered at run time; unset fields come from the config. */
export interface VmOptions {
  /** Lower is suspended first by `suspend_lowest_priority` (default 100). */
  priority?: number;
  /** Addresses or prefixes of the VM, to assign traffic seen on shared inputs. */
  addresses?: string[];
  /** Never suspended when true. */
  protected?: boolean;
}

/** What the frame tap should do with a frame. */
export type Verdict = "pass" | "drop";

/** Counters of the guard itself, for metrics. */
export interface GuardMetrics {
  /** Frames seen. */
  frames: number;
  /** Frames that did not parse. */
  malformed: number;
  /** Frames the tap was told to drop. */
  dropped: number;
  /** Alerts raised. */
  alerts: number;
  /** Alerts cleared. */
  clears: number;
  /** Decisions taken, by action. */
  decisions: Record<string, number>;
  /** VMs suspended now. */
  suspended: string[];
}

interface VmRecord {
  id: string;
  vm: PausableVm | null;
  priority: number;
  protected: boolean;
  thresholds: DirectionalThresholds;
  actions: ActionTable;
  monitors: Map<string, MonitorRecord[]>;
  causes: Set<string>;
  suspended: boolean;
  resumeAt: number;
  chain: Promise<void>;
  /** The attack that last suspended the VM, for the resume event. */
  lastCause: { kind: AttackKind; direction: Direction; iface: string };
  /** Suspensions soon after a resume in a row: each doubles the hold time. */
  strikes: number;
  /** When netguard last resumed the VM (ms), or -Infinity. */
  lastResumeAt: number;
}

interface MonitorRecord {
  monitor: DirectionMonitor;
  /** Per {@link PacketClass}: 0 pass, 1 drop, 2 rate limit. */
  block: Uint8Array;
  limiter: TokenBucket | null;
  blocks: Map<string, number[]>;
}

const CLASSES_OF_KIND: Readonly<Record<AttackKind, readonly number[]>> = {
  syn_flood: [PacketClass.tcpSyn],
  udp_flood: [PacketClass.udp],
  icmp_flood: [PacketClass.icmp],
  rst_flood: [PacketClass.tcpRst],
  frag_flood: [PacketClass.fragment],
  pps: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
  bps: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
  flows: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
};

/** Most doublings of the hold time for a VM suspended again and again (2^6 = 64×). */
const MAX_STRIKES = 6;

/** A listener of netguard events. */
export type EventListener = (e: NetguardEvent) => void;

/**
 * The monitor and policy for the VMs of one host.
 *
 * @example
 * ```ts
 * import { NetGuard } from "./guard.ts";
 * const guard = new NetGuard();
 * guard.onEvent((e) => console.log(JSON.stringify(e)));
 * guard.registerVm("vm1", { pause: async () => {}, resume: async () => {} });
 * const frame = new Uint8Array(60);
 * guard.frame("vm1", "inbound", frame, Date.now());
 * ```
 */
export class NetGuard {
  /** The configuration in force. */
  readonly config: NetguardConfig;
  readonly #vms = new Map<string, VmRecord>();
  readonly #listeners = new Set<EventListener>();
  readonly #whitelist: PrefixSet;
  readonly #info = new PacketInfo();
  #addressMap: { id: string; set: PrefixSet }[] = [];
  #now = 0;
  #pendingResume = false;
  #pending = new Set<Promise<void>>();
  readonly #metrics = { frames: 0, malformed: 0, dropped: 0, alerts: 0, clears: 0 };
  readonly #decisions: Record<string, number> = {};

  /** Creates a guard; VMs listed in the config are known (without a VM to act on) at once. */
  constructor(config: NetguardConfig = defaultConfig()) {
    this.config = config;
    this.#whitelist = new PrefixSet(config.whitelist.map((w) => parsePrefix(w, "whitelist")));
    for (const v of config.vms) {
      this.#vms.set(
        v.id,
        this.#newRecord(v.id, null, {
          priority: v.priority,
          addresses: v.addresses,
          protected: v.protected,
        }),
      );
    }
    this.#rebuildAddressMap();
  }

  #newRecord(id: string, vm: PausableVm | null, o: VmOptions): VmRecord {
    const cfg = this.config.vms.find((v) => v.id === id);
    return {
      id,
      vm,
      priority: o.priority ?? cfg?.priority ?? 100,
      protected: o.protected ?? cfg?.protected ?? false,
      thresholds: cfg?.thresholds ?? this.config.thresholds,
      actions: cfg?.actions ?? this.config.policy.actions,
      monitors: new Map(),
      causes: new Set(),
      suspended: false,
      resumeAt: -1,
      chain: Promise.resolve(),
      lastCause: { kind: "pps", direction: "inbound", iface: "" },
      strikes: 0,
      lastResumeAt: -Infinity,
    };
  }

  #addresses = new Map<string, string[]>();

  #rebuildAddressMap(): void {
    const map: { id: string; set: PrefixSet }[] = [];
    for (const v of this.config.vms) {
      if (!this.#addresses.has(v.id) && v.addresses.length > 0) {
        this.#addresses.set(v.id, v.addresses);
      }
    }
    for (const [id, addrs] of this.#addresses) {
      map.push({
        id,
        set: new PrefixSet(addrs.map((a) => parsePrefix(a, `addresses of VM ${id}`))),
      });
    }
    this.#addressMap = map;
  }

  /**
   * Registers a VM to act on (pause/resume) under `id`. A VM listed in the
   * config keeps its config settings unless `options` override them.
   *
   * @throws {VmRegistryError} when a VM to act on is already registered under `id`.
   */
  registerVm(id: string, vm: PausableVm | null, options: VmOptions = {}): void {
    const old = this.#vms.get(id);
    if (old !== undefined && old.vm !== null) {
      throw new VmRegistryError(`netguard: VM '${id}' is already registered; unregister it first`);
    }
    const rec = this.#newRecord(id, vm, options);
    if (old !== undefined) {
      rec.monitors = old.monitors;
      rec.causes = old.causes;
    }
    this.#vms.set(id, rec);
    if (options.addresses !== undefined) {
      this.#addresses.set(id, options.addresses);
      this.#rebuildAddressMap();
    }
  }

  /**
   * Forgets VM `id`. A VM netguard suspended is resumed first.
   *
   * @throws {VmRegistryError} when no VM is registered under `id`.
   */
  async unregisterVm(id: string): Promise<void> {
    const rec = this.#vms.get(id);
    if (rec === undefined) throw new VmRegistryError(`netguard: no VM '${id}' is registered`);
    if (rec.suspended && rec.vm !== null) {
      const vm = rec.vm;
      await rec.chain;
      await vm.resume();
    }
    this.#vms.delete(id);
    this.#addresses.delete(id);
    this.#rebuildAddressMap();
  }

  /** Adds an event listener; returns a function that removes it. */
  onEvent(listener: EventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(e: NetguardEvent): void {
    for (const l of this.#listeners) l(e);
  }

  /**
   * The frame tap: counts one Ethernet frame of VM `vmId` going `direction`
   * and tells whether to pass or drop it (drop only under a `drop` or
   * `rate_limit` decision). Called by the VMM's network device per frame.
   */
  frame(
    vmId: string,
    direction: Direction,
    frame: Uint8Array,
    tsMs: number = Date.now(),
    iface = "",
  ): Verdict {
    return this.ingest(
      vmId,
      direction,
      iface,
      frame,
      0,
      frame.length,
      frame.length,
      tsMs,
      LINKTYPE_ETHERNET,
    );
  }

  /**
   * Counts a frame at `buf[off, off+len)` (zero-copy) of link type `link`
   * for VM `vmId`; `wireLen` is its length on the wire (≥ len when snapped).
   */
  ingest(
    vmId: string,
    direction: Direction,
    iface: string,
    buf: Uint8Array,
    off: number,
    len: number,
    wireLen: number,
    tsMs: number,
    link: number,
  ): Verdict {
    const info = this.#info;
    parseLinkFrame(link, buf, off, len, info);
    return this.#count(vmId, direction, iface, buf, info, wireLen, tsMs);
  }

  /**
   * Counts a frame seen on a host interface or in a capture: the VM is the
   * one whose address is the destination (inbound) or the source (outbound);
   * otherwise the config's `defaultVm`, inbound unless the link layer says
   * the host sent it (`pktType` 4).
   */
  ingestHost(
    buf: Uint8Array,
    off: number,
    len: number,
    wireLen: number,
    tsMs: number,
    link: number,
    pktType: number,
    iface: string,
  ): void {
    const info = this.#info;
    const linkPktType = parseLinkFrame(link, buf, off, len, info);
    const pt = pktType >= 0 ? pktType : linkPktType;
    let matched = false;
    if (info.ipVersion !== 0 && this.#addressMap.length > 0) {
      for (const { id, set } of this.#addressMap) {
        const isDst = info.ipVersion === 4 ? set.hasIpv4(info.dst4) : set.hasIpv6(buf, info.dstOff);
        const isSrc = info.ipVersion === 4 ? set.hasIpv4(info.src4) : set.hasIpv6(buf, info.srcOff);
        if (isDst) this.#count(id, "inbound", iface, buf, info, wireLen, tsMs);
        if (isSrc) this.#count(id, "outbound", iface, buf, info, wireLen, tsMs);
        matched ||= isDst || isSrc;
      }
    }
    if (!matched) {
      const dir: Direction = pt === PACKET_OUTGOING ? "outbound" : "inbound";
      this.#count(this.config.defaultVm, dir, iface, buf, info, wireLen, tsMs);
    }
  }

  #monitor(vmId: string, direction: Direction, iface: string): MonitorRecord {
    let rec = this.#vms.get(vmId);
    if (rec === undefined) {
      rec = this.#newRecord(vmId, null, {});
      this.#vms.set(vmId, rec);
    }
    let pair = rec.monitors.get(iface);
    if (pair === undefined) {
      // One TCP flow table per interface: both directions' monitors feed it.
      const conns = new ConnTracker(this.config.detector.established.ackWindowMs);
      const mk = (d: Direction): MonitorRecord => {
        const m = new DirectionMonitor(
          vmId,
          iface,
          d,
          rec.thresholds[d],
          this.config.detector,
          this.#whitelist,
          this.config.samples,
          conns,
        );
        m.onTransition = (mon, r) => this.#onTransition(mon, r);
        if (this.#now > 0) m.advance(this.#now);
        return { monitor: m, block: new Uint8Array(10), limiter: null, blocks: new Map() };
      };
      pair = [mk("inbound"), mk("outbound")];
      rec.monitors.set(iface, pair);
    }
    const m = direction === "inbound" ? pair[0] : pair[1];
    if (m === undefined) throw new VmRegistryError(`netguard: internal: no monitor for ${vmId}`);
    return m;
  }

  #count(
    vmId: string,
    direction: Direction,
    iface: string,
    buf: Uint8Array,
    info: PacketInfo,
    wireLen: number,
    tsMs: number,
  ): Verdict {
    if (tsMs > this.#now) this.#now = tsMs;
    this.#metrics.frames++;
    if (info.error !== 0) this.#metrics.malformed++;
    const mr = this.#monitor(vmId, direction, iface);
    mr.monitor.observe(buf, info, wireLen, tsMs);
    if (this.#pendingResume) this.#checkResumes(this.#now);
    const b = mr.block[info.cls] ?? 0;
    if (b === 0) return "pass";
    if (b === 2 && mr.limiter !== null && mr.limiter.take(tsMs)) return "pass";
    this.#metrics.dropped++;
    return "drop";
  }

  /** Lets time pass to `nowMs` with no traffic: detectors clear, holds expire, VMs resume. */
  advance(nowMs: number): void {
    // Detectors report their own bucket times while catching up; the clock
    // moves to nowMs after them so event times stay those of the buckets.
    const now = nowMs > this.#now ? nowMs : this.#now;
    for (const rec of this.#vms.values()) {
      for (const pair of rec.monitors.values()) for (const m of pair) m.monitor.advance(now);
    }
    this.#now = now;
    this.#checkResumes(now);
  }

  /**
   * Calls {@link NetGuard.advance} with the wall clock every `periodMs`, so
   * attacks clear and suspended VMs resume when traffic stops altogether
   * (the frame tap only moves time when frames arrive). Stop it with the
   * returned handle (also `using`-disposable).
   */
  startClock(periodMs = 50): Disposable & { stop(): void } {
    const id = setInterval(() => this.advance(Date.now()), Math.max(1, periodMs));
    const stop = (): void => clearInterval(id);
    return { stop, [Symbol.dispose]: stop };
  }

  /** The latest time the guard has seen (ms). */
  get now(): number {
    return this.#now;
  }

  #onTransition(m: DirectionMonitor, r: TransitionReport): void {
    const rec = this.#vms.get(m.vm);
    if (rec === undefined) return;
    // A raise is acted on now (the frame that closed the bucket); a clear
    // dates from when its condition was met, even if time jumped past it.
    const ts = r.raised ? Math.max(r.ts, this.#now) : r.ts;
    const base = { ts, vm: m.vm, direction: m.direction, iface: m.iface };
    const cause = `${m.iface}|${m.direction}|${r.kind}|${r.detector}|${m.vm}`;
    if (!r.raised) {
      this.#metrics.clears++;
      this.#emit({
        ...base,
        event: "clear",
        kind: r.kind,
        detector: r.detector,
        rate: r.rate,
        peak: r.peak,
        durationMs: ts - m.raisedAt(r.kind, r.detector),
      });
      this.#liftCause(cause, rec, m, r.kind, ts);
      return;
    }
    this.#metrics.alerts++;
    const unit = r.kind === "bps" ? "bps" : r.kind === "flows" ? "flows/s" : "pps";
    this.#emit({
      ...base,
      event: "alert",
      kind: r.kind,
      detector: r.detector,
      rate: r.rate,
      threshold: r.threshold,
      unit,
      evidence: m.evidence(r.kind, this.config.topN),
    });
    const action: Action = rec.actions[m.direction][r.kind];
    const why = `${r.kind} ${m.direction} at ${Math.round(r.rate)} ${unit} (${r.detector} limit ${
      Math.round(r.threshold)
    })`;
    const decide = (
      a: DecisionEvent["action"],
      targets: string[],
      reason: string,
      error?: string,
    ): void => {
      this.#decisions[a] = (this.#decisions[a] ?? 0) + 1;
      const e: DecisionEvent = {
        ...base,
        event: "decision",
        kind: r.kind,
        action: a,
        targets,
        reason,
      };
      if (error !== undefined) e.error = error;
      this.#emit(e);
    };
    switch (action) {
      case "alert":
        decide("alert", [], `${why}; policy is to alert only`);
        return;
      case "drop":
      case "rate_limit": {
        const mr = this.#monitorRecordOf(rec, m);
        if (mr === null) return;
        const classes = [...CLASSES_OF_KIND[r.kind]];
        mr.blocks.set(cause, classes);
        this.#applyBlocks(mr);
        decide(
          action,
          [m.vm],
          action === "drop"
            ? `${why}; dropping that traffic`
            : `${why}; limiting it to ${this.config.policy.rateLimitPps} pps`,
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
            .slice(0, this.config.policy.suspendCount);
        }
        const actionable = targets.filter((t) => t.vm !== null && !t.protected);
        if (actionable.length === 0) {
          const who = targets.map((t) => t.id).join(", ") || "none";
          decide("alert", [], `${why}; cannot ${action}: no registered, unprotected VM (${who})`);
          return;
        }
        const fresh: VmRecord[] = [];
        for (const t of actionable) {
          t.causes.add(cause);
          t.resumeAt = -1;
          t.lastCause = { kind: r.kind, direction: m.direction, iface: m.iface };
          if (!t.suspended) {
            t.suspended = true;
            // A VM that attacks again right after it was resumed is held longer each time.
            const hold = this.config.policy.holdMs;
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

  #monitorRecordOf(rec: VmRecord, m: DirectionMonitor): MonitorRecord | null {
    const pair = rec.monitors.get(m.iface);
    return pair?.find((x) => x.monitor === m) ?? null;
  }

  #applyBlocks(mr: MonitorRecord): void {
    mr.block.fill(0);
    const action = (cause: string): Action | undefined => {
      const [, dir, kind, , vm] = cause.split("|");
      const rec = this.#vms.get(vm ?? "");
      if (rec === undefined || (dir !== "inbound" && dir !== "outbound")) return undefined;
      return rec.actions[dir][kind as AttackKind];
    };
    let limited = false;
    for (const [cause, classes] of mr.blocks) {
      const mode = action(cause) === "drop" ? 1 : 2;
      if (mode === 2) limited = true;
      // Drop wins over a rate limit on the same class.
      for (const c of classes) if (mr.block[c] !== 1) mr.block[c] = mode;
    }
    if (limited && mr.limiter === null) {
      mr.limiter = new TokenBucket(this.config.policy.rateLimitPps);
    }
    if (!limited) mr.limiter = null;
  }

  #liftCause(
    cause: string,
    rec: VmRecord,
    m: DirectionMonitor,
    kind: AttackKind,
    ts: number,
  ): void {
    const mr = this.#monitorRecordOf(rec, m);
    if (mr !== null && mr.blocks.delete(cause)) {
      this.#applyBlocks(mr);
      this.#decisions.unblock = (this.#decisions.unblock ?? 0) + 1;
      this.#emit({
        ts,
        vm: m.vm,
        direction: m.direction,
        iface: m.iface,
        event: "decision",
        kind,
        action: "unblock",
        targets: [m.vm],
        reason: `${kind} ${m.direction} cleared; passing that traffic again`,
      });
    }
    for (const v of this.#vms.values()) {
      if (!v.causes.delete(cause)) continue;
      if (v.causes.size === 0 && v.suspended) {
        v.resumeAt = ts + this.config.policy.holdMs * 2 ** v.strikes;
        this.#pendingResume = true;
      }
    }
    this.#checkResumes(ts);
  }

  #checkResumes(now: number): void {
    if (!this.#pendingResume) return;
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
      this.#decisions.resume = (this.#decisions.resume ?? 0) + 1;
      const c = v.lastCause;
      const base = { ts: now, vm: v.id, direction: c.direction, iface: c.iface };
      this.#emit({
        ...base,
        event: "decision",
        kind: c.kind,
        action: "resume",
        targets: [v.id],
        reason: `every attack that suspended ${v.id} ended ${
          this.config.policy.holdMs * 2 ** v.strikes
        } ms ago`,
      });
      this.#act(v, "resume", base, c.kind);
    }
    this.#pendingResume = still;
  }

  #act(
    v: VmRecord,
    what: "pause" | "resume",
    base: { ts: number; vm: string; direction: Direction; iface: string },
    kind: AttackKind,
  ): void {
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

  /** Ids of the VMs netguard holds suspended now. */
  suspended(): string[] {
    return [...this.#vms.values()].filter((v) => v.suspended).map((v) => v.id);
  }

  /** Guard-level counters. */
  metrics(): GuardMetrics {
    return { ...this.#metrics, decisions: { ...this.#decisions }, suspended: this.suspended() };
  }

  /** The guard's counters in the Prometheus text exposition format. */
  metricsText(): string {
    const m = this.metrics();
    const metric = (name: string, type: string, help: string, samples: string[]): string[] => [
      `# HELP ${name} ${help}`,
      `# TYPE ${name} ${type}`,
      ...samples.map((v) => `${name}${v}`),
    ];
    return [
      ...metric("netguard_frames_total", "counter", "Frames seen by netguard.", [` ${m.frames}`]),
      ...metric("netguard_malformed_frames_total", "counter", "Frames that did not parse.", [
        ` ${m.malformed}`,
      ]),
      ...metric("netguard_dropped_frames_total", "counter", "Frames the tap was told to drop.", [
        ` ${m.dropped}`,
      ]),
      ...metric("netguard_alerts_total", "counter", "Alerts raised.", [` ${m.alerts}`]),
      ...metric("netguard_clears_total", "counter", "Alerts cleared.", [` ${m.clears}`]),
      ...metric(
        "netguard_decisions_total",
        "counter",
        "Decisions taken, by action.",
        Object.entries(m.decisions).map(([a, n]) => `{action="${a}"} ${n}`),
      ),
      ...metric("netguard_suspended_vms", "gauge", "VMs netguard holds suspended.", [
        ` ${m.suspended.length}`,
      ]),
    ].join("\n") + "\n";
  }

  /** Emits (and returns) a `stats` event for every monitor that saw traffic. */
  stats(nowMs: number = this.#now): StatsEvent[] {
    const out: StatsEvent[] = [];
    for (const rec of this.#vms.values()) {
      for (const pair of rec.monitors.values()) {
        for (const { monitor: m } of pair) {
          if ((m.totals[0] ?? 0) === 0 && m.whitelisted === 0) continue;
          const e: StatsEvent = {
            ts: nowMs,
            vm: m.vm,
            direction: m.direction,
            iface: m.iface,
            event: "stats",
            kind: "stats",
            rates: m.rates(),
            totals: m.totalsRecord(),
          };
          out.push(e);
          this.#emit(e);
        }
      }
    }
    return out;
  }

  /** The monitors of VM `vmId` (for inspection and tests). */
  monitorsOf(vmId: string): DirectionMonitor[] {
    const rec = this.#vms.get(vmId);
    if (rec === undefined) return [];
    return [...rec.monitors.values()].flat().map((x) => x.monitor);
  }
}
