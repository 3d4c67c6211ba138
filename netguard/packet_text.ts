/**
 * Parsed frames as text, the way tcpdump writes them: addresses (IPv6
 * compressed as RFC 5952 asks), TCP flag letters and one-line packet
 * summaries, for alerts, evidence and reports.
 *
 * @module
 */

import {
  type PacketInfo,
  PARSE_ERROR_NAMES,
  PROTO_ICMP,
  PROTO_ICMPV6,
  PROTO_TCP,
  PROTO_UDP,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
} from "./packet.ts";

/** Formats the address at `buf[off]` (4 bytes for IPv4, 16 for IPv6) as text. */
export function formatAddress(buf: Uint8Array, off: number, version: number): string {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (version === 4) return formatIpv4(v.getUint32(off, false));
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(v.getUint16(off + i, false).toString(16));
  // Compress the longest run of zero groups, as RFC 5952 asks.
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestStart < 0) return groups.join(":");
  const head = groups.slice(0, bestStart).join(":");
  const tail = groups.slice(bestStart + bestLen).join(":");
  return `${head}::${tail}`;
}

/** Formats an IPv4 address held as an unsigned 32-bit number. */
export function formatIpv4(addr: number): string {
  return `${addr >>> 24}.${(addr >>> 16) & 255}.${(addr >>> 8) & 255}.${addr & 255}`;
}

/** One-line tcpdump-like summary of a parsed frame, for alerts and reports. */
export function describePacket(buf: Uint8Array, info: PacketInfo): string {
  if (info.error !== 0) return `malformed (${PARSE_ERROR_NAMES[info.error]}), ${info.capLen} bytes`;
  if (info.ipVersion === 0) {
    return `ethertype 0x${info.etherType.toString(16).padStart(4, "0")}, ${info.capLen} bytes`;
  }
  const src = formatAddress(buf, info.srcOff, info.ipVersion);
  const dst = formatAddress(buf, info.dstOff, info.ipVersion);
  const ports = info.srcPort !== 0 || info.dstPort !== 0;
  const s = ports ? `${src}.${info.srcPort}` : src;
  const d = ports ? `${dst}.${info.dstPort}` : dst;
  let what: string;
  if (info.laterFragment) what = `fragment proto ${info.proto}`;
  else if (info.proto === PROTO_TCP) what = `TCP [${tcpFlagString(info.tcpFlags)}]`;
  else if (info.proto === PROTO_UDP) what = "UDP";
  else if (info.proto === PROTO_ICMP || info.proto === PROTO_ICMPV6) {
    what = `ICMP${info.ipVersion === 6 ? "v6" : ""} type ${info.icmpType} code ${info.icmpCode}`;
  } else what = `proto ${info.proto}`;
  const vlan = info.vlan >= 0 ? `vlan ${info.vlan} ` : "";
  return `${vlan}IPv${info.ipVersion} ${s} > ${d} ${what}${
    info.fragment && !info.laterFragment ? " (first fragment)" : ""
  }, ${info.capLen} bytes`;
}

/** tcpdump-style flag letters: S, F, R, P, . (ACK). */
export function tcpFlagString(flags: number): string {
  let s = "";
  if (flags & TCP_SYN) s += "S";
  if (flags & TCP_FIN) s += "F";
  if (flags & TCP_RST) s += "R";
  if (flags & TCP_PSH) s += "P";
  if (flags & TCP_ACK) s += ".";
  return s === "" ? "none" : s;
}
