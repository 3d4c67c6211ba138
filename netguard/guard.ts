/**
 * {@link NetGuard}: the per-VM denial-of-service monitor. Frames come in
 * through the frame tap (per VM and direction), or from a host interface or
 * capture where the VM is found by address, and go to that VM's monitors
 * (`monitor.ts`, one per interface and direction); attacks raise alerts, and
 * the policy (`policy.ts`) suspends VMs (anything {@link PausableVm}),
 * rate-limits or drops, and resumes a VM once its attacks ended and a hold
 * time passed.
 *
 * @module
 */

import { parsePrefix, PrefixSet } from "./cidr.ts";
import { defaultConfig, type Direction, type NetguardConfig } from "./config.ts";
import { VmRegistryError } from "./errors.ts";
import type { NetguardEvent, StatsEvent } from "./events.ts";
import { ConnTracker } from "./conn_tracker.ts";
import { DirectionMonitor, type TransitionReport } from "./monitor.ts";
import { PACKET_CLASS_NAMES, PacketInfo, parseEthernet } from "./packet.ts";
import { PACKET_OUTGOING, parseLinkFrame, wireLength } from "./pcap.ts";
import { LINKTYPE_ETHERNET } from "./pcap_decoder.ts";
import {
  type Cause,
  type MonitorRecord,
  type PausableVm,
  Policy,
  type VmRecord,
} from "./policy.ts";

export type { PausableVm } from "./policy.ts";

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

/** The key of a {@link BlockSink}: VM and interface. */
function sinkKey(vmId: string, iface: string): string {
  return JSON.stringify([vmId, iface]);
}

/** A listener of netguard events. */
export type EventListener = (e: NetguardEvent) => void;

/**
 * Enforces the frame tap's blocks of one VM interface elsewhere (e.g. in
 * the VM's network device): per `PacketClass` of `direction`, 0 pass,
 * 1 drop, 2 rate limit to `ratePps` for all limited classes together.
 * `classes` is the guard's own table: read it during the call only.
 */
export type BlockSink = (
  direction: Direction,
  classes: Readonly<Uint8Array>,
  ratePps: number,
) => void;

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
  readonly #policy: Policy;
  readonly #metrics = { frames: 0, malformed: 0, dropped: 0, alerts: 0, clears: 0 };
  readonly #sinks = new Map<string, BlockSink>();

  /** Creates a guard; VMs listed in the config are known (without a VM to act on) at once. */
  constructor(config: NetguardConfig = defaultConfig()) {
    this.config = config;
    this.#policy = new Policy(
      config,
      this.#vms,
      (e) => this.#emit(e),
      (mr) => this.#blocksChanged(mr),
    );
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
    this.#lastVm = null;
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
    this.#lastVm = null;
    this.#addresses.delete(id);
    this.#rebuildAddressMap();
    // Its blocks went with its record: whoever enforced them lets traffic pass.
    const none = new Uint8Array(PACKET_CLASS_NAMES.length);
    for (const iface of rec.monitors.keys()) {
      const sink = this.#sinks.get(sinkKey(id, iface));
      sink?.("inbound", none, 0);
      sink?.("outbound", none, 0);
    }
  }

  /**
   * Has `sink` enforce the blocks of VM `vmId`'s interface `iface`: it is
   * called with each direction's table whenever a `drop` or `rate_limit`
   * decision or its `unblock` changes it (before the decision event), and
   * at once for blocks already in force. Returns a function that detaches it.
   *
   * @throws {VmRegistryError} when that interface already has a sink.
   */
  enforceAt(vmId: string, iface: string, sink: BlockSink): () => void {
    const key = sinkKey(vmId, iface);
    if (this.#sinks.has(key)) {
      throw new VmRegistryError(
        `netguard: interface '${iface}' of VM '${vmId}' already has its blocks enforced`,
      );
    }
    this.#sinks.set(key, sink);
    for (const mr of this.#vms.get(vmId)?.monitors.get(iface) ?? []) {
      if (mr.blocks.size > 0) this.#blocksChanged(mr);
    }
    return () => {
      if (this.#sinks.get(key) === sink) this.#sinks.delete(key);
    };
  }

  #blocksChanged(mr: MonitorRecord): void {
    const m = mr.monitor;
    this.#sinks.get(sinkKey(m.vm, m.iface))?.(m.direction, mr.block, mr.limiter?.ratePps ?? 0);
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
    // Ethernet, the frame tap's link, straight to its parser (wire length as given).
    if (link === LINKTYPE_ETHERNET) {
      parseEthernet(buf, off, len, info);
      return this.#count(vmId, direction, iface, buf, info, wireLen, tsMs);
    }
    parseLinkFrame(link, buf, off, len, info);
    const wire = wireLength(link, buf, off, len, wireLen);
    return this.#count(vmId, direction, iface, buf, info, wire, tsMs);
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
    let linkPktType = -1;
    if (link === LINKTYPE_ETHERNET) parseEthernet(buf, off, len, info);
    else {
      linkPktType = parseLinkFrame(link, buf, off, len, info);
      wireLen = wireLength(link, buf, off, len, wireLen);
    }
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

  /** The monitors of the last (VM, interface) counted: frames come in runs of one VM. */
  #lastVm: string | null = null;
  #lastIface = "";
  #lastPair: MonitorRecord[] = [];

  #monitor(vmId: string, direction: Direction, iface: string): MonitorRecord {
    if (vmId === this.#lastVm && iface === this.#lastIface) {
      const m = direction === "inbound" ? this.#lastPair[0] : this.#lastPair[1];
      if (m !== undefined) return m;
    }
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
    this.#lastVm = vmId;
    this.#lastIface = iface;
    this.#lastPair = pair;
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
    if (this.#policy.pendingResume) this.#policy.checkResumes(this.#now);
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
    this.#policy.checkResumes(now);
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
    const cause: Cause = {
      iface: m.iface,
      direction: m.direction,
      kind: r.kind,
      detector: r.detector,
      vm: m.vm,
    };
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
      this.#policy.cleared(rec, m, cause, ts);
      return;
    }
    this.#metrics.alerts++;
    this.#emit({
      ...base,
      event: "alert",
      kind: r.kind,
      detector: r.detector,
      rate: r.rate,
      threshold: r.threshold,
      unit: r.kind === "bps" ? "bps" : r.kind === "flows" ? "flows/s" : "pps",
      evidence: m.evidence(r.kind, this.config.topN),
    });
    this.#policy.raised(rec, m, r, cause, ts);
  }

  /** Resolves when every pause/resume started so far has finished. */
  async settled(): Promise<void> {
    await this.#policy.settled();
  }

  /** Ids of the VMs netguard holds suspended now. */
  suspended(): string[] {
    return [...this.#vms.values()].filter((v) => v.suspended).map((v) => v.id);
  }

  /** Guard-level counters. */
  metrics(): GuardMetrics {
    return {
      ...this.#metrics,
      decisions: { ...this.#policy.decisions },
      suspended: this.suspended(),
    };
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
