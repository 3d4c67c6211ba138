/**
 * The per-VM, per-interface, per-direction traffic monitor: counts parsed
 * frames into sliding-window series, tracks new flows and top talkers in
 * bounded memory, keeps a few sample packets per attack kind (`samples.ts`),
 * and runs the detectors at every bucket boundary.
 *
 * @module
 */

import type { AttackKind, DetectorConfig, Direction, Thresholds } from "./config.ts";
import { ConnTracker } from "./conn_tracker.ts";
import { CusumDetector, ThresholdDetector, Transition } from "./detectors.ts";
import type { Evidence, SamplePacket, Talker } from "./events.ts";
import { finish32, FlowTable, mix32 } from "./flow_table.ts";
import type { PrefixSet } from "./cidr.ts";
import { PacketClass, type PacketInfo, PROTO_TCP, PROTO_UDP } from "./packet.ts";
import { formatAddress } from "./packet_text.ts";
import { Metric, METRIC_COUNT, METRIC_NAMES, SlidingCounters } from "./sliding_window.ts";
import { PacketSamples } from "./samples.ts";
import { TopK } from "./top_k.ts";

/** The per-protocol counter each {@link PacketClass} adds to (-1: none). */
const CLASS_METRIC: Int8Array = (() => {
  const t = new Int8Array(16).fill(-1);
  t[PacketClass.tcpSyn] = Metric.syn;
  t[PacketClass.tcpSynAck] = Metric.synAck;
  t[PacketClass.tcpRst] = Metric.rst;
  t[PacketClass.udp] = Metric.udp;
  t[PacketClass.icmp] = Metric.icmp;
  t[PacketClass.malformed] = Metric.malformed;
  return t;
})();

/** Top-talker counts halve this often (ms), so the evidence reflects recent traffic. */
const TOP_DECAY_MS = 1000;
/** Top talkers are counted on one packet in this many (a power of two), with that weight. */
const TOP_SAMPLE = 4;

/** The threshold each attack kind is measured against. */
const LIMIT_OF_KIND: Readonly<Record<AttackKind, Exclude<keyof Thresholds, "synRatio">>> = {
  syn_flood: "synPps",
  udp_flood: "udpPps",
  icmp_flood: "icmpPps",
  rst_flood: "rstPps",
  frag_flood: "fragPps",
  pps: "pps",
  bps: "bps",
  flows: "flows",
};

/** A detector that changed state, as reported to the monitor's owner. */
export interface TransitionReport {
  /** The attack kind. */
  kind: AttackKind;
  /** Which detector. */
  detector: "threshold" | "cusum";
  /** True when raised, false when cleared. */
  raised: boolean;
  /** Evaluation time when raised; when cleared, the time the clear condition was met (ms). */
  ts: number;
  /** Measured rate. */
  rate: number;
  /** Limit crossed (threshold, or the CUSUM baseline's upper limit). */
  threshold: number;
  /** Peak rate while raised (for clears). */
  peak: number;
}

interface KindState {
  kind: AttackKind;
  metric: number;
  scale: number;
  detector: ThresholdDetector;
  since: number;
}

/** Counters and detectors of one (VM, interface, direction). */
export class DirectionMonitor {
  /** VM id. */
  readonly vm: string;
  /** Interface name ("" when unknown). */
  readonly iface: string;
  /** Direction seen from the VM. */
  readonly direction: Direction;
  /** Window series. */
  readonly counters: SlidingCounters;
  /** Totals since creation, indexed by {@link Metric}. */
  readonly totals: Float64Array = new Float64Array(METRIC_COUNT);
  /** Packets not counted because the remote address is whitelisted. */
  whitelisted = 0;
  /** Heaviest remote/local sources. */
  readonly sources: TopK = new TopK(32, 16);
  /** Heaviest destinations. */
  readonly destinations: TopK = new TopK(32, 16);
  /** Heaviest destination ports. */
  readonly ports: TopK = new TopK(32, 0);
  /** Called when a detector raises or clears. */
  onTransition: (m: DirectionMonitor, r: TransitionReport) => void = () => {};

  #thresholds: Thresholds;
  readonly #det: DetectorConfig;
  readonly #whitelist: PrefixSet;
  readonly #flows = new FlowTable(16, 10_000);
  readonly #conns: ConnTracker;
  readonly #trackConns: boolean;
  readonly #kinds: KindState[];
  readonly #cusumSyn: CusumDetector;
  readonly #cusumPps: CusumDetector;
  #cusumSynSince = 0;
  #cusumPpsSince = 0;
  #lastDecay = -1;
  #talkerTick = 0;
  readonly #samples: PacketSamples;

  /**
   * Creates a monitor; `samples` packets per attack kind are kept as
   * evidence. `conns` is shared with the monitor of the other direction of
   * the same interface, so it sees both ends of every TCP flow.
   */
  constructor(
    vm: string,
    iface: string,
    direction: Direction,
    thresholds: Thresholds,
    detector: DetectorConfig,
    whitelist: PrefixSet,
    samples: number,
    conns: ConnTracker = new ConnTracker(detector.established.ackWindowMs),
  ) {
    this.#conns = conns;
    this.#trackConns = detector.established.enabled;
    this.vm = vm;
    this.iface = iface;
    this.direction = direction;
    this.#thresholds = thresholds;
    this.#det = detector;
    this.#whitelist = whitelist;
    this.counters = new SlidingCounters(detector.windowMs, detector.bucketMs);
    const mk = (kind: AttackKind, metric: number, scale = 1): KindState => ({
      kind,
      metric,
      scale,
      detector: new ThresholdDetector(
        detector.exceededForMs,
        detector.clearRatio,
        detector.clearForMs,
      ),
      since: 0,
    });
    this.#kinds = [
      mk("syn_flood", Metric.syn),
      mk("udp_flood", Metric.udp),
      mk("icmp_flood", Metric.icmp),
      mk("rst_flood", Metric.rst),
      mk("frag_flood", Metric.fragments),
      mk("pps", Metric.packets),
      mk("bps", Metric.bytes, 8),
      mk("flows", Metric.newFlows),
    ];
    const a = detector.adaptive;
    this.#cusumSyn = new CusumDetector(
      a.alpha,
      a.k,
      a.h,
      a.minPps,
      a.warmupMs,
      detector.clearForMs,
    );
    this.#cusumPps = new CusumDetector(
      a.alpha,
      a.k,
      a.h,
      a.minPps,
      a.warmupMs,
      detector.clearForMs,
    );
    this.#samples = new PacketSamples(samples);
  }

  /** Replaces the thresholds (e.g. after a config reload). */
  setThresholds(t: Thresholds): void {
    this.#thresholds = t;
  }

  /** Whether any detector of this monitor is raised. */
  get underAttack(): boolean {
    return this.#kinds.some((k) => k.detector.active) || this.#cusumSyn.active ||
      this.#cusumPps.active;
  }

  /**
   * Counts one parsed frame seen at `nowMs`, `wireLen` bytes on the wire.
   * Runs the detectors first when the frame opens a new bucket.
   */
  observe(buf: Uint8Array, info: PacketInfo, wireLen: number, nowMs: number): void {
    const bucket = Math.floor(nowMs / this.counters.bucketMs);
    if (bucket > this.counters.currentBucket) this.#advanceTo(bucket);
    const c = this.counters;
    const t = this.totals;
    if (info.ipVersion !== 0 && !this.#whitelist.empty && this.#isWhitelisted(buf, info)) {
      this.whitelisted++;
      return;
    }
    c.add(Metric.packets, 1);
    c.add(Metric.bytes, wireLen);
    t[Metric.packets] = (t[Metric.packets] ?? 0) + 1;
    t[Metric.bytes] = (t[Metric.bytes] ?? 0) + wireLen;
    const cls = info.cls;
    const metric = CLASS_METRIC[cls] ?? -1;
    if (metric >= 0) {
      c.add(metric, 1);
      t[metric] = (t[metric] ?? 0) + 1;
    }
    if (info.fragment) {
      c.add(Metric.fragments, 1);
      t[Metric.fragments] = (t[Metric.fragments] ?? 0) + 1;
    }
    const tcp = info.proto === PROTO_TCP && !info.laterFragment && cls !== PacketClass.malformed;
    if (tcp) {
      c.add(Metric.tcp, 1);
      if ((info.tcpFlags & 0x10) !== 0) c.add(Metric.ack, 1);
    }
    if (info.ipVersion === 0) return;
    // Flows, and top talkers on one packet in TOP_SAMPLE (weighted), which
    // keeps a flood from random sources cheap and the heavy hitters exact enough.
    const talk = (++this.#talkerTick & (TOP_SAMPLE - 1)) === 0;
    let h: number;
    if (info.ipVersion === 4) {
      h = mix32(
        mix32(mix32(info.proto, info.src4), info.dst4),
        (info.srcPort << 16) | info.dstPort,
      );
      if (
        tcp && this.#trackConns &&
        this.#conns.observe(buf, info, info.src4 | 0, info.dst4 | 0, nowMs)
      ) {
        c.add(Metric.establishedPackets, 1);
        c.add(Metric.establishedBytes, wireLen);
      }
      if (talk) {
        this.sources.offer(info.src4, TOP_SAMPLE, buf, info.srcOff, 4);
        this.destinations.offer(info.dst4, TOP_SAMPLE, buf, info.dstOff, 4);
      }
    } else {
      const hs = hash16(buf, info.srcOff);
      const hd = hash16(buf, info.dstOff);
      h = mix32(mix32(mix32(info.proto, hs), hd), (info.srcPort << 16) | info.dstPort);
      if (tcp && this.#trackConns && this.#conns.observe(buf, info, hs, hd, nowMs)) {
        c.add(Metric.establishedPackets, 1);
        c.add(Metric.establishedBytes, wireLen);
      }
      if (talk) {
        this.sources.offer(4294967296 + (hs >>> 0), TOP_SAMPLE, buf, info.srcOff, 16);
        this.destinations.offer(4294967296 + (hd >>> 0), TOP_SAMPLE, buf, info.dstOff, 16);
      }
    }
    if (this.#flows.touch(finish32(h), nowMs)) {
      c.add(Metric.newFlows, 1);
      t[Metric.newFlows] = (t[Metric.newFlows] ?? 0) + 1;
    }
    if (talk && info.l4Off >= 0 && (info.proto === PROTO_TCP || info.proto === PROTO_UDP)) {
      this.ports.offer(info.proto * 65536 + info.dstPort, TOP_SAMPLE, buf, 0, 0);
    }
    this.#samples.offer(buf, info, nowMs);
  }

  #isWhitelisted(buf: Uint8Array, info: PacketInfo): boolean {
    const wl = this.#whitelist;
    const inbound = this.direction === "inbound";
    if (info.ipVersion === 4) return wl.hasIpv4(inbound ? info.src4 : info.dst4);
    return wl.hasIpv6(buf, inbound ? info.srcOff : info.dstOff);
  }

  /** The kept sample packets for `kind`, oldest first. */
  samples(kind: AttackKind): SamplePacket[] {
    return this.#samples.of(kind);
  }

  /** Current window rates of every series, per second (bytes as bytes/s). */
  rates(): Record<string, number> {
    const r: Record<string, number> = {};
    for (let m = 0; m < METRIC_COUNT; m++) r[METRIC_NAMES[m] ?? `m${m}`] = this.counters.rate(m);
    return r;
  }

  /** Totals since the monitor was created. */
  totalsRecord(): Record<string, number> {
    const r: Record<string, number> = {};
    for (let m = 0; m < METRIC_COUNT; m++) r[METRIC_NAMES[m] ?? `m${m}`] = this.totals[m] ?? 0;
    r.whitelisted = this.whitelisted;
    return r;
  }

  /** Evidence for an alert of `kind`: top talkers, samples, rates. */
  evidence(kind: AttackKind, topN: number): Evidence {
    const addr = (entries: ReturnType<TopK["top"]>): Talker[] =>
      entries.map((e) => ({
        key: formatAddress(e.label, 0, e.label.length === 4 ? 4 : 6),
        packets: Math.round(e.count),
      }));
    return {
      topSources: addr(this.sources.top(topN)),
      topDestinations: addr(this.destinations.top(topN)),
      topPorts: this.ports.top(topN).map((e) => ({
        key: `${Math.floor(e.key / 65536) === PROTO_TCP ? "tcp" : "udp"}/${e.key % 65536}`,
        packets: Math.round(e.count),
      })),
      samples: this.#samples.of(kind),
      rates: this.rates(),
    };
  }

  /** Lets time pass with no traffic (runs the detectors up to `nowMs`). */
  advance(nowMs: number): void {
    const bucket = Math.floor(nowMs / this.counters.bucketMs);
    if (bucket > this.counters.currentBucket) this.#advanceTo(bucket);
  }

  #advanceTo(bucket: number): void {
    const c = this.counters;
    if (c.currentBucket < 0) {
      c.rotateTo(bucket);
      this.#lastDecay = bucket * c.bucketMs;
      return;
    }
    const bms = c.bucketMs;
    let steps = bucket - c.currentBucket;
    // After a window's worth of empty buckets nothing changes but the clock.
    if (steps > c.buckets + 2) {
      for (let s = 0; s < c.buckets + 1; s++) {
        this.#evaluate((c.currentBucket + 1) * bms);
        c.rotateTo(c.currentBucket + 1);
      }
      c.rotateTo(bucket - 1);
      steps = 1;
    }
    for (let s = 0; s < steps; s++) {
      this.#evaluate((c.currentBucket + 1) * bms);
      c.rotateTo(c.currentBucket + 1);
    }
    const now = bucket * bms;
    if (now - this.#lastDecay >= TOP_DECAY_MS) {
      this.#lastDecay = now;
      this.sources.decay(0.5);
      this.destinations.decay(0.5);
      this.ports.decay(0.5);
    }
  }

  #evaluate(now: number): void {
    const c = this.counters;
    const t = this.#thresholds;
    const syn = c.rate(Metric.syn);
    // SYNs are weighed against the ACKs that complete handshakes, not against the ACKs of
    // connections already working: a bulk transfer must not hide a SYN flood.
    const est = this.#det.established;
    const ack = Math.max(
      0,
      c.rate(Metric.ack) - (est.enabled ? c.rate(Metric.establishedPackets) : 0),
    );
    const synShare = syn + ack > 0 ? syn / (syn + ack) : 0;
    // Volume of working connections between few host pairs is not an attack by itself.
    const discount = est.enabled && c.sum(Metric.establishedPackets) > 0 &&
      this.#conns.spread(now, est.maxPeers) <= est.maxPeers;
    for (const k of this.#kinds) {
      const limit = this.#limitOf(k.kind, t);
      let value = c.rate(k.metric) * k.scale;
      if (discount && k.metric === Metric.packets) value -= c.rate(Metric.establishedPackets);
      else if (discount && k.metric === Metric.bytes) {
        value -= c.rate(Metric.establishedBytes) * k.scale;
      }
      if (value < 0) value = 0;
      let over = limit > 0 && value >= limit;
      if (k.kind === "syn_flood") over = over && synShare >= t.synRatio;
      const under = limit <= 0 || value < limit * k.detector.clearRatio;
      const r = k.detector.update(now, value, over, under);
      if (r === Transition.none) continue;
      if (r === Transition.raised) k.since = now;
      this.onTransition(this, {
        kind: k.kind,
        detector: "threshold",
        raised: r === Transition.raised,
        ts: r === Transition.raised ? now : k.detector.clearedAt,
        rate: value,
        threshold: limit,
        peak: k.detector.peak,
      });
    }
    if (!this.#det.adaptive.enabled) return;
    const pps = Math.max(
      0,
      c.rate(Metric.packets) - (discount ? c.rate(Metric.establishedPackets) : 0),
    );
    // A SYN surge with normal handshakes (ACKs) is a busy service, not a flood.
    const synValue = synShare >= t.synRatio ? syn : 0;
    this.#cusumStep(this.#cusumSyn, "syn_flood", now, synValue);
    this.#cusumStep(this.#cusumPps, "pps", now, pps);
  }

  /** Feeds `value` to an adaptive detector and reports a raise or a clear. */
  #cusumStep(d: CusumDetector, kind: "syn_flood" | "pps", now: number, value: number): void {
    const tr = d.update(now, value);
    if (tr === Transition.none) return;
    const raised = tr === Transition.raised;
    if (raised && kind === "syn_flood") this.#cusumSynSince = now;
    else if (raised) this.#cusumPpsSince = now;
    this.onTransition(this, {
      kind,
      detector: "cusum",
      raised,
      ts: raised ? now : d.clearedAt,
      rate: value,
      threshold: d.mean + d.k * d.sigma(),
      peak: d.peak,
    });
  }

  /** When the raised detector of `kind` was raised (ms), for durations. */
  raisedAt(kind: AttackKind, detector: "threshold" | "cusum"): number {
    if (detector === "cusum") {
      return kind === "syn_flood" ? this.#cusumSynSince : this.#cusumPpsSince;
    }
    return this.#kinds.find((k) => k.kind === kind)?.since ?? 0;
  }

  #limitOf(kind: AttackKind, t: Thresholds): number {
    return t[LIMIT_OF_KIND[kind]];
  }
}

function hash16(buf: Uint8Array, off: number): number {
  let h = 0x9747b28c;
  for (let i = 0; i < 16; i += 4) {
    h = mix32(
      h,
      ((buf[off + i] ?? 0) << 24) | ((buf[off + i + 1] ?? 0) << 16) |
        ((buf[off + i + 2] ?? 0) << 8) |
        (buf[off + i + 3] ?? 0),
    );
  }
  return finish32(h);
}
