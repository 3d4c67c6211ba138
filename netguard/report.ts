/**
 * Summarises a capture: packet classes, malformed frames by reason, top
 * talkers, rates, and the alerts and decisions netguard would take on it.
 *
 * @module
 */

import { replayCapture } from "./capture_input.ts";
import type { NetguardConfig } from "./config.ts";
import type { NetguardEvent } from "./events.ts";
import { NetGuard } from "./guard.ts";
import {
  formatAddress,
  PACKET_CLASS_NAMES,
  PacketInfo,
  PARSE_ERROR_NAMES,
  PROTO_TCP,
} from "./packet.ts";
import { type Capture, parseRecord } from "./pcap.ts";
import { TopK } from "./top_k.ts";

/** What {@link summarizeCapture} found. */
export interface CaptureReport {
  /** "pcap" or "pcapng". */
  format: string;
  /** Records in the file. */
  packets: number;
  /** Bytes on the wire. */
  bytes: number;
  /** First and last timestamps, ms. */
  firstTs: number;
  /** Last timestamp, ms. */
  lastTs: number;
  /** Average packets per second over the capture. */
  avgPps: number;
  /** Highest packets in any one second. */
  peakPps: number;
  /** Packets per class (`tcp_syn`, `udp`, ...). */
  classes: Record<string, number>;
  /** Malformed frames per reason. */
  malformed: Record<string, number>;
  /** IPv4 packets. */
  ipv4: number;
  /** IPv6 packets. */
  ipv6: number;
  /** VLAN-tagged frames. */
  vlanTagged: number;
  /** IP fragments. */
  fragments: number;
  /** Heaviest sources. */
  topSources: { key: string; packets: number }[];
  /** Heaviest destinations. */
  topDestinations: { key: string; packets: number }[];
  /** Heaviest destination ports. */
  topPorts: { key: string; packets: number }[];
  /** Whether the file ended inside a record. */
  truncatedTail: boolean;
  /** Alerts, clears and decisions of a replay through netguard. */
  events: NetguardEvent[];
}

/** Summarises `cap` and replays it through a guard built from `config`. */
export function summarizeCapture(cap: Capture, config: NetguardConfig, topN = 5): CaptureReport {
  const info = new PacketInfo();
  const classes = new Float64Array(PACKET_CLASS_NAMES.length);
  const malformed = new Float64Array(PARSE_ERROR_NAMES.length);
  const src = new TopK(64, 16);
  const dst = new TopK(64, 16);
  const ports = new TopK(64, 0);
  let bytes = 0, v4 = 0, v6 = 0, vlan = 0, frags = 0, peak = 0, secStart = -Infinity, inSec = 0;
  for (let i = 0; i < cap.count; i++) {
    parseRecord(cap, i, info);
    const ts = cap.tsMs[i] ?? 0;
    if (ts - secStart >= 1000) {
      secStart = ts;
      inSec = 0;
    }
    if (++inSec > peak) peak = inSec;
    bytes += cap.origLengths[i] ?? 0;
    classes[info.cls] = (classes[info.cls] ?? 0) + 1;
    if (info.error !== 0) malformed[info.error] = (malformed[info.error] ?? 0) + 1;
    if (info.vlan >= 0) vlan++;
    if (info.fragment) frags++;
    if (info.ipVersion === 4) {
      v4++;
      src.offer(info.src4, 1, cap.buf, info.srcOff, 4);
      dst.offer(info.dst4, 1, cap.buf, info.dstOff, 4);
    } else if (info.ipVersion === 6) {
      v6++;
      src.offer(keyOf(cap.buf, info.srcOff), 1, cap.buf, info.srcOff, 16);
      dst.offer(keyOf(cap.buf, info.dstOff), 1, cap.buf, info.dstOff, 16);
    }
    if (info.l4Off >= 0 && info.srcPort + info.dstPort > 0) {
      ports.offer(info.proto * 65536 + info.dstPort, 1, cap.buf, 0, 0);
    }
  }
  const guard = new NetGuard(config);
  const events: NetguardEvent[] = [];
  guard.onEvent((e) => {
    if (e.event !== "stats") events.push(e);
  });
  replayCapture(guard, cap);
  const named = (arr: Float64Array, names: readonly string[]): Record<string, number> => {
    const r: Record<string, number> = {};
    arr.forEach((n, i) => {
      if (n > 0) r[names[i] ?? `${i}`] = n;
    });
    return r;
  };
  const addr = (t: TopK) =>
    t.top(topN).map((e) => ({
      key: formatAddress(e.label, 0, e.label.length === 4 ? 4 : 6),
      packets: Math.round(e.count),
    }));
  const first = cap.count > 0 ? cap.tsMs[0] ?? 0 : 0;
  const last = cap.count > 0 ? cap.tsMs[cap.count - 1] ?? 0 : 0;
  const span = (last - first) / 1000;
  return {
    format: cap.format,
    packets: cap.count,
    bytes,
    firstTs: first,
    lastTs: last,
    avgPps: span > 0 ? cap.count / span : cap.count,
    peakPps: peak,
    classes: named(classes, PACKET_CLASS_NAMES),
    malformed: named(malformed, PARSE_ERROR_NAMES),
    ipv4: v4,
    ipv6: v6,
    vlanTagged: vlan,
    fragments: frags,
    topSources: addr(src),
    topDestinations: addr(dst),
    topPorts: ports.top(topN).map((e) => ({
      key: `${Math.floor(e.key / 65536) === PROTO_TCP ? "tcp" : "udp"}/${e.key % 65536}`,
      packets: Math.round(e.count),
    })),
    truncatedTail: cap.truncatedTail,
    events,
  };
}

function keyOf(buf: Uint8Array, off: number): number {
  let h = 0;
  for (let i = 0; i < 16; i++) h = (Math.imul(h, 31) + (buf[off + i] ?? 0)) | 0;
  return 4294967296 + (h >>> 0);
}
