/**
 * Sample packets kept as evidence for alerts: per attack kind a few packets
 * of the class it counts (one every 64), and some of all traffic, in fixed
 * buffers (the first 128 bytes from the IP header on), so a flood costs no
 * allocation.
 *
 * @module
 */

import type { AttackKind } from "./config.ts";
import type { SamplePacket } from "./events.ts";
import { PacketInfo, parseRawIp } from "./packet.ts";
import { describePacket } from "./packet_text.ts";

/** Bytes of each sample packet kept (from the IP header on). */
const SAMPLE_BYTES = 128;
/** Every this many packets of a kind, one is kept as a sample. */
const SAMPLE_EVERY = 64;
/** Sample groups: which attack kind a packet class is evidence for. */
const GROUP_ALL = 0;
const GROUP_OF_CLASS: readonly number[] = [0, 0, 1, 0, 4, 0, 2, 3, 5, 0];
const GROUP_OF_KIND: Readonly<Record<AttackKind, number>> = {
  syn_flood: 1,
  udp_flood: 2,
  icmp_flood: 3,
  rst_flood: 4,
  frag_flood: 5,
  pps: 0,
  bps: 0,
  flows: 0,
};
const GROUPS = 6;

/** The last few sample packets of each attack kind. */
export class PacketSamples {
  readonly #sampleCount: Int32Array;
  readonly #sampleCounter = new Uint32Array(GROUPS);
  readonly #sampleBuf: Uint8Array;
  readonly #sampleLen: Uint16Array;
  readonly #sampleTs: Float64Array;
  readonly #sampleIsIp: Uint8Array;
  readonly #samplesPer: number;
  readonly #scratch = new PacketInfo();

  /** Keeps up to `samplesPer` packets per attack kind (0: none). */
  constructor(samplesPer: number) {
    this.#samplesPer = samplesPer;
    const slots = GROUPS * Math.max(1, samplesPer);
    this.#sampleCount = new Int32Array(GROUPS);
    this.#sampleBuf = new Uint8Array(slots * SAMPLE_BYTES);
    this.#sampleLen = new Uint16Array(slots);
    this.#sampleTs = new Float64Array(slots);
    this.#sampleIsIp = new Uint8Array(slots);
  }

  /** Keeps `buf`'s packet (parsed into `info`) if its group is due for a sample. */
  offer(buf: Uint8Array, info: PacketInfo, nowMs: number): void {
    if (this.#samplesPer === 0) return;
    const g = GROUP_OF_CLASS[info.cls] ?? GROUP_ALL;
    const n = this.#sampleCounter[g] ?? 0;
    this.#sampleCounter[g] = n + 1;
    if (n % SAMPLE_EVERY !== 0 && n >= this.#samplesPer) return;
    this.#store(g, buf, info, nowMs);
    if (g !== GROUP_ALL && n % (SAMPLE_EVERY * 4) === 0) this.#store(GROUP_ALL, buf, info, nowMs);
  }

  #store(g: number, buf: Uint8Array, info: PacketInfo, nowMs: number): void {
    const count = this.#sampleCount[g] ?? 0;
    this.#sampleCount[g] = count + 1;
    const slot = g * this.#samplesPer + (count % this.#samplesPer);
    const from = info.l3Off >= 0 ? info.l3Off : info.frameOff;
    const end = info.frameOff + info.capLen;
    const len = Math.min(SAMPLE_BYTES, end - from);
    const dst = this.#sampleBuf;
    const at = slot * SAMPLE_BYTES;
    for (let i = 0; i < len; i++) dst[at + i] = buf[from + i] ?? 0;
    this.#sampleLen[slot] = len;
    this.#sampleTs[slot] = nowMs;
    this.#sampleIsIp[slot] = info.l3Off >= 0 ? 1 : 0;
  }

  /** The kept sample packets for `kind`, oldest first. */
  of(kind: AttackKind): SamplePacket[] {
    const g = GROUP_OF_KIND[kind];
    const count = this.#sampleCount[g] ?? 0;
    const n = Math.min(count, this.#samplesPer);
    const out: SamplePacket[] = [];
    for (let i = count - n; i < count; i++) {
      const slot = g * this.#samplesPer + (i % this.#samplesPer);
      const len = this.#sampleLen[slot] ?? 0;
      const bytes = this.#sampleBuf.subarray(slot * SAMPLE_BYTES, slot * SAMPLE_BYTES + len);
      let summary: string;
      if (this.#sampleIsIp[slot] === 1) {
        parseRawIp(bytes, 0, len, this.#scratch);
        summary = describePacket(bytes, this.#scratch);
      } else summary = `non-IP frame, ${len} bytes kept`;
      out.push({
        ts: this.#sampleTs[slot] ?? 0,
        summary,
        hex: Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""),
      });
    }
    return out;
  }
}
