/**
 * Summarises a capture: packet classes, malformed frames by reason, top
 * talkers, rates, and the alerts and decisions netguard would take on it.
 *
 * @module
 */

import { CaptureReplay } from "./capture_input.ts";
import { readCaptureStream } from "./capture_stream.ts";
import type { NetguardConfig } from "./config.ts";
import type { NetguardEvent } from "./events.ts";
import { NetGuard } from "./guard.ts";
import { PACKET_CLASS_NAMES, PacketInfo, PARSE_ERROR_NAMES, PROTO_TCP } from "./packet.ts";
import { formatAddress } from "./packet_text.ts";
import { type Capture, forEachRecord, parseLinkFrame, wireLength } from "./pcap.ts";
import type { RecordHandler } from "./pcap_decoder.ts";
import { TopK } from "./top_k.ts";

/** What {@link summarizeCapture} found. */
export interface CaptureReport {
  /** "pcap" or "pcapng". */
  format: string;
  /** Records in the file. */
  packets: number;
  /** Bytes on the wire. */
  bytes: number;
  /** Earliest timestamp, ms. */
  firstTs: number;
  /** Latest timestamp, ms (never before `firstTs`). */
  lastTs: number;
  /** Records stamped earlier than a record before them (replayed at the latest time). */
  outOfOrder: number;
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

/**
 * Accumulates a {@link CaptureReport} one record at a time, replaying each
 * into a guard as it goes: one pass, bounded memory.
 */
export class CaptureSummarizer {
  readonly #info = new PacketInfo();
  readonly #classes = new Float64Array(PACKET_CLASS_NAMES.length);
  readonly #malformed = new Float64Array(PARSE_ERROR_NAMES.length);
  readonly #src = new TopK(64, 16);
  readonly #dst = new TopK(64, 16);
  readonly #ports = new TopK(64, 0);
  readonly #events: NetguardEvent[] = [];
  readonly #replay: CaptureReplay;
  readonly #topN: number;
  #bytes = 0;
  #v4 = 0;
  #v6 = 0;
  #vlan = 0;
  #frags = 0;
  #peak = 0;
  #secStart = -Infinity;
  #inSec = 0;

  /** Creates a summarizer replaying into a guard built from `config`. */
  constructor(config: NetguardConfig, topN = 5) {
    const guard = new NetGuard(config);
    guard.onEvent((e) => {
      if (e.event !== "stats") this.#events.push(e);
    });
    this.#replay = new CaptureReplay(guard);
    this.#topN = topN;
  }

  /** Counts one record (a {@link RecordHandler}). */
  readonly record: RecordHandler = (buf, off, len, wireLen, tsMs, link): void => {
    const info = this.#info;
    const ts = this.#replay.record(buf, off, len, wireLen, tsMs, link);
    parseLinkFrame(link, buf, off, len, info);
    if (ts - this.#secStart >= 1000) {
      this.#secStart = ts;
      this.#inSec = 0;
    }
    if (++this.#inSec > this.#peak) this.#peak = this.#inSec;
    this.#bytes += wireLength(link, buf, off, len, wireLen);
    this.#classes[info.cls] = (this.#classes[info.cls] ?? 0) + 1;
    if (info.error !== 0) this.#malformed[info.error] = (this.#malformed[info.error] ?? 0) + 1;
    if (info.vlan >= 0) this.#vlan++;
    if (info.fragment) this.#frags++;
    if (info.ipVersion === 4) {
      this.#v4++;
      this.#src.offer(info.src4, 1, buf, info.srcOff, 4);
      this.#dst.offer(info.dst4, 1, buf, info.dstOff, 4);
    } else if (info.ipVersion === 6) {
      this.#v6++;
      this.#src.offer(keyOf(buf, info.srcOff), 1, buf, info.srcOff, 16);
      this.#dst.offer(keyOf(buf, info.dstOff), 1, buf, info.dstOff, 16);
    }
    if (info.l4Off >= 0 && info.srcPort + info.dstPort > 0) {
      this.#ports.offer(info.proto * 65536 + info.dstPort, 1, buf, 0, 0);
    }
  };

  /** Ends the replay and returns the report of what the records held. */
  finish(format: "pcap" | "pcapng", truncatedTail: boolean): CaptureReport {
    const r = this.#replay;
    r.finish();
    const named = (arr: Float64Array, names: readonly string[]): Record<string, number> => {
      const out: Record<string, number> = {};
      arr.forEach((n, i) => {
        if (n > 0) out[names[i] ?? `${i}`] = n;
      });
      return out;
    };
    const topN = this.#topN;
    const addr = (t: TopK) =>
      t.top(topN).map((e) => ({
        key: formatAddress(e.label, 0, e.label.length === 4 ? 4 : 6),
        packets: Math.round(e.count),
      }));
    const first = r.records > 0 ? r.firstTs : 0;
    const last = r.records > 0 ? r.lastTs : 0;
    const span = (last - first) / 1000;
    return {
      format,
      packets: r.records,
      bytes: this.#bytes,
      firstTs: first,
      lastTs: last,
      outOfOrder: r.outOfOrder,
      avgPps: span > 0 ? r.records / span : r.records,
      peakPps: this.#peak,
      classes: named(this.#classes, PACKET_CLASS_NAMES),
      malformed: named(this.#malformed, PARSE_ERROR_NAMES),
      ipv4: this.#v4,
      ipv6: this.#v6,
      vlanTagged: this.#vlan,
      fragments: this.#frags,
      topSources: addr(this.#src),
      topDestinations: addr(this.#dst),
      topPorts: this.#ports.top(topN).map((e) => ({
        key: `${Math.floor(e.key / 65536) === PROTO_TCP ? "tcp" : "udp"}/${e.key % 65536}`,
        packets: Math.round(e.count),
      })),
      truncatedTail,
      events: this.#events,
    };
  }
}

/** Summarises `cap` and replays it through a guard built from `config`. */
export function summarizeCapture(cap: Capture, config: NetguardConfig, topN = 5): CaptureReport {
  const s = new CaptureSummarizer(config, topN);
  forEachRecord(cap, s.record);
  return s.finish(cap.format, cap.truncatedTail);
}

/**
 * Summarises a capture stream of any size with bounded memory; see
 * {@link summarizeCapture}.
 *
 * @throws {CaptureFormatError} at the first record that cannot be read.
 */
export async function summarizeCaptureStream(
  stream: ReadableStream<Uint8Array>,
  config: NetguardConfig,
  topN = 5,
  source = "<stream>",
): Promise<CaptureReport> {
  const s = new CaptureSummarizer(config, topN);
  const info = await readCaptureStream(stream, s.record, { source });
  return s.finish(info.format, info.truncatedTail);
}

function keyOf(buf: Uint8Array, off: number): number {
  let h = 0;
  for (let i = 0; i < 16; i++) h = (Math.imul(h, 31) + (buf[off + i] ?? 0)) | 0;
  return 4294967296 + (h >>> 0);
}
