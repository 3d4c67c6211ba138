/**
 * Builds well-formed frames (Ethernet, optional 802.1Q, IPv4 or IPv6, TCP,
 * UDP or ICMP, with checksums) and synthetic traffic traces with timestamps,
 * for tests, benchmarks and injecting traffic into a TAP device.
 *
 * @module
 */

import { parsePrefix } from "./cidr.ts";
import { PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP } from "./packet.ts";

/** What to put in a frame. */
export interface FrameSpec {
  /** Source address (IPv4 or IPv6 text). */
  src: string;
  /** Destination address (same family as `src`). */
  dst: string;
  /** L4 protocol. */
  proto: "tcp" | "udp" | "icmp";
  /** Source port (TCP/UDP). */
  sport?: number;
  /** Destination port (TCP/UDP). */
  dport?: number;
  /** TCP flags byte (default SYN). */
  flags?: number;
  /** TCP sequence number (default 0x01020304). */
  seq?: number;
  /** TCP acknowledgement number (default 0). */
  ack?: number;
  /** Payload bytes after the L4 header (default none). */
  payload?: number;
  /** 802.1Q VLAN id to tag with. */
  vlan?: number;
  /** IPv4 fragment: offset in 8-byte units and the more-fragments flag. */
  fragment?: { offset: number; more: boolean };
  /** Source MAC (default 02:00:00:00:00:01). */
  srcMac?: Uint8Array;
  /** Destination MAC (default 02:00:00:00:00:02). */
  dstMac?: Uint8Array;
}

const DEFAULT_SRC_MAC = new Uint8Array([2, 0, 0, 0, 0, 1]);
const DEFAULT_DST_MAC = new Uint8Array([2, 0, 0, 0, 0, 2]);

function checksum(b: Uint8Array, off: number, len: number, initial = 0): number {
  let sum = initial;
  for (let i = 0; i + 1 < len; i += 2) sum += ((b[off + i] ?? 0) << 8) | (b[off + i + 1] ?? 0);
  if (len & 1) sum += (b[off + len - 1] ?? 0) << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function sumWords(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += ((b[i] ?? 0) << 8) | (b[i + 1] ?? 0);
  return s;
}

/** Builds one frame from `spec`. */
export function buildFrame(spec: FrameSpec): Uint8Array<ArrayBuffer> {
  const src = parsePrefix(spec.src, "src").bytes;
  const dst = parsePrefix(spec.dst, "dst").bytes;
  const v6 = src.length === 16;
  const protoNum = spec.proto === "tcp"
    ? PROTO_TCP
    : spec.proto === "udp"
    ? PROTO_UDP
    : v6
    ? PROTO_ICMPV6
    : PROTO_ICMP;
  const l4Len = (spec.proto === "tcp" ? 20 : 8) + (spec.payload ?? 0);
  const vlanLen = spec.vlan !== undefined ? 4 : 0;
  const ipLen = v6 ? 40 : 20;
  const frame = new Uint8Array(14 + vlanLen + ipLen + l4Len);
  const v = new DataView(frame.buffer);
  frame.set(spec.dstMac ?? DEFAULT_DST_MAC, 0);
  frame.set(spec.srcMac ?? DEFAULT_SRC_MAC, 6);
  let p = 12;
  if (spec.vlan !== undefined) {
    v.setUint16(p, 0x8100, false);
    v.setUint16(p + 2, spec.vlan & 0x0fff, false);
    p += 4;
  }
  v.setUint16(p, v6 ? 0x86dd : 0x0800, false);
  p += 2;
  const ip = p;
  if (v6) {
    v.setUint32(ip, 0x60000000, false);
    v.setUint16(ip + 4, l4Len, false);
    v.setUint8(ip + 6, protoNum);
    v.setUint8(ip + 7, 64);
    frame.set(src, ip + 8);
    frame.set(dst, ip + 24);
  } else {
    v.setUint8(ip, 0x45);
    v.setUint16(ip + 2, ipLen + l4Len, false);
    v.setUint16(ip + 4, 0x1234, false);
    if (spec.fragment) {
      v.setUint16(
        ip + 6,
        (spec.fragment.more ? 0x2000 : 0) | (spec.fragment.offset & 0x1fff),
        false,
      );
    }
    v.setUint8(ip + 8, 64);
    v.setUint8(ip + 9, protoNum);
    frame.set(src, ip + 12);
    frame.set(dst, ip + 16);
    v.setUint16(ip + 10, checksum(frame, ip, 20), false);
  }
  const l4 = ip + ipLen;
  if (spec.proto === "tcp") {
    v.setUint16(l4, spec.sport ?? 40000, false);
    v.setUint16(l4 + 2, spec.dport ?? 80, false);
    v.setUint32(l4 + 4, (spec.seq ?? 0x01020304) >>> 0, false);
    v.setUint32(l4 + 8, (spec.ack ?? 0) >>> 0, false);
    v.setUint8(l4 + 12, 5 << 4);
    v.setUint8(l4 + 13, spec.flags ?? 0x02);
    v.setUint16(l4 + 14, 64240, false);
  } else if (spec.proto === "udp") {
    v.setUint16(l4, spec.sport ?? 40000, false);
    v.setUint16(l4 + 2, spec.dport ?? 53, false);
    v.setUint16(l4 + 4, l4Len, false);
  } else {
    v.setUint8(l4, v6 ? 128 : 8);
  }
  // L4 checksum over the pseudo-header (ICMPv4 has none).
  let pseudo = 0;
  if (protoNum !== PROTO_ICMP) pseudo = sumWords(src) + sumWords(dst) + protoNum + l4Len;
  const ck = checksum(frame, l4, l4Len, pseudo);
  const ckOff = spec.proto === "tcp" ? 16 : spec.proto === "udp" ? 6 : 2;
  v.setUint16(l4 + ckOff, spec.proto === "udp" && ck === 0 ? 0xffff : ck, false);
  return frame;
}

/** A small deterministic PRNG (mulberry32), so synthetic traffic is reproducible from a seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A synthetic trace: frames with timestamps. */
export interface Trace {
  /** Frames in time order. */
  frames: Uint8Array<ArrayBuffer>[];
  /** Timestamp of each frame, ms. */
  tsMs: number[];
  /** Whether each frame goes from the victim (outbound); else to it. */
  outbound: boolean[];
  /** Length of each frame on the wire (a TSO segment is longer than the bytes kept). */
  wireLen: number[];
}

/** Parameters of {@link synthesizeTrace}. */
export interface TraceSpec {
  /** PRNG seed. */
  seed: number;
  /** Start time, ms since the epoch. */
  startMs: number;
  /** Benign background: packets per second of established TCP (ACK) traffic. */
  benignPps: number;
  /** Total length, ms. */
  durationMs: number;
  /** The victim address. */
  victim: string;
  /** Attack: kind, start offset (ms), length (ms), rate (pps); omitted for a benign trace. */
  attack?: { kind: "syn" | "udp" | "icmp"; atMs: number; forMs: number; pps: number };
  /**
   * A bulk upload to the victim over one established connection for the
   * whole trace: `segmentsPerSec` data segments of `wireBytes` each on the
   * wire (TSO-sized as a veth shows them), each acknowledged by the victim.
   */
  bulk?: { segmentsPerSec: number; wireBytes: number };
}

/**
 * Generates benign established-TCP traffic to `victim`, optionally a bulk
 * upload over one acknowledged connection, and optionally a flood from
 * random (spoofed) sources, with exact timestamps.
 */
export function synthesizeTrace(spec: TraceSpec): Trace {
  const rnd = prng(spec.seed);
  const events: { t: number; f: Uint8Array<ArrayBuffer>; out: boolean; wire: number }[] = [];
  const push = (t: number, f: Uint8Array<ArrayBuffer>, out = false, wire = f.length) =>
    events.push({ t, f, out, wire });
  const clients = 16;
  for (let t = 0; spec.benignPps > 0 && t < spec.durationMs; t += 1000 / spec.benignPps) {
    const c = Math.floor(rnd() * clients);
    push(
      spec.startMs + t,
      buildFrame({
        src: `192.0.2.${c + 1}`,
        dst: spec.victim,
        proto: "tcp",
        sport: 50000 + c,
        dport: 443,
        flags: 0x18,
        payload: 200,
      }),
    );
  }
  const b = spec.bulk;
  if (b !== undefined && b.segmentsPerSec > 0) {
    const client = "192.0.2.200";
    let seq = 1 + Math.floor(rnd() * 2 ** 31);
    const ack = 1 + Math.floor(rnd() * 2 ** 31);
    const tcp = (out: boolean, flags: number, s: number, a: number) =>
      out
        ? buildFrame({
          src: spec.victim,
          dst: client,
          proto: "tcp",
          sport: 5201,
          dport: 41000,
          flags,
          seq: s,
          ack: a,
        })
        : buildFrame({
          src: client,
          dst: spec.victim,
          proto: "tcp",
          sport: 41000,
          dport: 5201,
          flags,
          seq: s,
          ack: a,
        });
    const t0 = spec.startMs;
    push(t0, tcp(false, 0x02, seq - 1, 0));
    push(t0 + 0.05, tcp(true, 0x12, ack - 1, seq));
    push(t0 + 0.1, tcp(false, 0x10, seq, ack));
    const payload = b.wireBytes - 54;
    for (let t = 0.2; t < spec.durationMs; t += 1000 / b.segmentsPerSec) {
      push(t0 + t, tcp(false, 0x10, seq, ack), false, b.wireBytes);
      seq = (seq + payload) >>> 0;
      push(t0 + t + 0.01, tcp(true, 0x10, ack, seq), true);
    }
  }
  const a = spec.attack;
  if (a !== undefined) {
    for (let t = a.atMs; t < a.atMs + a.forMs && t < spec.durationMs; t += 1000 / a.pps) {
      const src = `198.51.${Math.floor(rnd() * 256)}.${Math.floor(rnd() * 256)}`;
      const sport = 1024 + Math.floor(rnd() * 60000);
      const f = a.kind === "syn"
        ? buildFrame({ src, dst: spec.victim, proto: "tcp", sport, dport: 80, flags: 0x02 })
        : a.kind === "udp"
        ? buildFrame({ src, dst: spec.victim, proto: "udp", sport, dport: 53, payload: 32 })
        : buildFrame({ src, dst: spec.victim, proto: "icmp", payload: 56 });
      push(spec.startMs + t, f);
    }
  }
  events.sort((x, y) => x.t - y.t);
  return {
    frames: events.map((e) => e.f),
    tsMs: events.map((e) => e.t),
    outbound: events.map((e) => e.out),
    wireLen: events.map((e) => e.wire),
  };
}
