/**
 * Zero-copy parsing of raw frames: Ethernet, 802.1Q/802.1ad tags, IPv4 (with
 * fragments), IPv6 (with extension headers), TCP, UDP, ICMP and ICMPv6.
 *
 * The parser writes into a caller-owned {@link PacketInfo} and reads the
 * frame in place, so the hot path allocates nothing. Malformed or truncated
 * frames are reported through {@link PacketInfo.error}, never thrown.
 *
 * @module
 */

/** Ethernet header length (destination, source, EtherType). */
export const ETH_HEADER_LEN = 14;
/** Length of one 802.1Q tag (TCI + inner EtherType). */
const VLAN_TAG_LEN = 4;
/** Most VLAN tags followed before the frame counts as malformed (QinQ plus one). */
const MAX_VLAN_TAGS = 3;
/** EtherType of IPv4. */
export const ETHERTYPE_IPV4 = 0x0800;
/** EtherType of IPv6. */
export const ETHERTYPE_IPV6 = 0x86dd;
/** EtherType of ARP. */
export const ETHERTYPE_ARP = 0x0806;
const ETHERTYPE_VLAN = 0x8100;
const ETHERTYPE_QINQ = 0x88a8;

const IPV4_MIN_HEADER = 20;
const IPV4_OFF_TOTAL_LEN = 2;
const IPV4_OFF_FRAG = 6;
const IPV4_OFF_PROTO = 9;
const IPV4_OFF_SRC = 12;
const IPV4_OFF_DST = 16;
const IPV4_FLAG_MF = 0x2000;
const IPV4_FRAG_MASK = 0x1fff;

const IPV6_HEADER = 40;
const IPV6_OFF_PAYLOAD_LEN = 4;
const IPV6_OFF_NEXT = 6;
const IPV6_OFF_SRC = 8;
const IPV6_OFF_DST = 24;
/** Most IPv6 extension headers followed before the packet counts as malformed. */
const MAX_IPV6_EXT = 8;
const IPV6_FRAG_HEADER_LEN = 8;

/** IP protocol number of ICMP. */
export const PROTO_ICMP = 1;
/** IP protocol number of TCP. */
export const PROTO_TCP = 6;
/** IP protocol number of UDP. */
export const PROTO_UDP = 17;
/** IP protocol number of ICMPv6. */
export const PROTO_ICMPV6 = 58;
const PROTO_HOPOPT = 0;
const PROTO_ROUTING = 43;
const PROTO_FRAGMENT = 44;
const PROTO_AH = 51;
const PROTO_DSTOPTS = 60;
const PROTO_MOBILITY = 135;
const PROTO_NONE = 59;

const TCP_MIN_HEADER = 20;
const TCP_OFF_FLAGS = 13;
const TCP_OFF_DATA = 12;
const UDP_HEADER = 8;
const ICMP_MIN_HEADER = 4;

/** TCP FIN flag. */
export const TCP_FIN = 0x01;
/** TCP SYN flag. */
export const TCP_SYN = 0x02;
/** TCP RST flag. */
export const TCP_RST = 0x04;
/** TCP PSH flag. */
export const TCP_PSH = 0x08;
/** TCP ACK flag. */
export const TCP_ACK = 0x10;

/** Why a frame could not be parsed; 0 means it parsed. */
export const ParseError = {
  none: 0,
  truncatedEthernet: 1,
  truncatedVlan: 2,
  tooManyVlanTags: 3,
  truncatedIp: 4,
  badIpHeader: 5,
  badIpLength: 6,
  badIpv6Extension: 7,
  truncatedL4: 8,
  badL4Header: 9,
} as const;

/** Names of {@link ParseError} codes, indexed by code. */
export const PARSE_ERROR_NAMES: readonly string[] = [
  "none",
  "truncated_ethernet",
  "truncated_vlan",
  "too_many_vlan_tags",
  "truncated_ip",
  "bad_ip_header",
  "bad_ip_length",
  "bad_ipv6_extension",
  "truncated_l4",
  "bad_l4_header",
];

/** Coarse class of a frame, the unit the monitor counts by. */
export const PacketClass = {
  malformed: 0,
  nonIp: 1,
  tcpSyn: 2,
  tcpSynAck: 3,
  tcpRst: 4,
  tcpOther: 5,
  udp: 6,
  icmp: 7,
  fragment: 8,
  otherIp: 9,
} as const;

/** Names of {@link PacketClass} values, indexed by value. */
export const PACKET_CLASS_NAMES: readonly string[] = [
  "malformed",
  "non_ip",
  "tcp_syn",
  "tcp_synack",
  "tcp_rst",
  "tcp_other",
  "udp",
  "icmp",
  "fragment",
  "other_ip",
];

/**
 * Result of parsing one frame. Offsets point into the parsed buffer, so the
 * addresses are read in place; reuse one instance across frames.
 */
export class PacketInfo {
  /** {@link ParseError} code; 0 when the frame parsed. */
  error = 0;
  /** Bytes of the frame as captured. */
  capLen = 0;
  /** Offset of the frame in its buffer. */
  frameOff = 0;
  /** Innermost EtherType (after VLAN tags); 0 for raw IP input. */
  etherType = 0;
  /** Outermost VLAN id, or -1 when untagged. */
  vlan: number = -1;
  /** 4 or 6 for IP packets, 0 otherwise. */
  ipVersion = 0;
  /** Offset of the IP header in the buffer, -1 if none. */
  l3Off: number = -1;
  /** Offset of the source address in the buffer. */
  srcOff = 0;
  /** Offset of the destination address in the buffer. */
  dstOff = 0;
  /** IPv4 source as an unsigned 32-bit number (0 for IPv6). */
  src4 = 0;
  /** IPv4 destination as an unsigned 32-bit number (0 for IPv6). */
  dst4 = 0;
  /** Upper-layer protocol (after IPv6 extension headers). */
  proto: number = -1;
  /** True for any fragment (first or later). */
  fragment = false;
  /** True for a fragment other than the first (it carries no L4 header). */
  laterFragment = false;
  /** Offset of the L4 header in the buffer, -1 if absent. */
  l4Off: number = -1;
  /** TCP/UDP source port, 0 if none. */
  srcPort = 0;
  /** TCP/UDP destination port, 0 if none. */
  dstPort = 0;
  /** TCP flags byte, 0 if not TCP. */
  tcpFlags = 0;
  /** ICMP/ICMPv6 type, -1 if not ICMP. */
  icmpType: number = -1;
  /** ICMP/ICMPv6 code, -1 if not ICMP. */
  icmpCode: number = -1;
  /** {@link PacketClass} of the frame. */
  cls = 0;

  /** Resets every field, as before a parse. */
  reset(off: number, len: number): void {
    this.error = 0;
    this.capLen = len;
    this.frameOff = off;
    this.etherType = 0;
    this.vlan = -1;
    this.ipVersion = 0;
    this.l3Off = -1;
    this.srcOff = 0;
    this.dstOff = 0;
    this.src4 = 0;
    this.dst4 = 0;
    this.proto = -1;
    this.fragment = false;
    this.laterFragment = false;
    this.l4Off = -1;
    this.srcPort = 0;
    this.dstPort = 0;
    this.tcpFlags = 0;
    this.icmpType = -1;
    this.icmpCode = -1;
    this.cls = PacketClass.malformed;
  }
}

let cachedBuf: Uint8Array | null = null;
let cachedView: DataView = new DataView(new ArrayBuffer(0));

/** A DataView over `buf`, cached so parsing many frames of one buffer allocates once. */
function viewOf(buf: Uint8Array): DataView {
  if (buf !== cachedBuf) {
    cachedBuf = buf;
    cachedView = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  return cachedView;
}

function fail(info: PacketInfo, code: number): boolean {
  info.error = code;
  info.cls = PacketClass.malformed;
  return false;
}

/**
 * Parses an Ethernet frame at `buf[off, off+len)` into `info`.
 *
 * @returns true when the frame parsed (IP or not); false when it is malformed
 * (`info.error` says why).
 */
export function parseEthernet(
  buf: Uint8Array,
  off: number,
  len: number,
  info: PacketInfo,
): boolean {
  info.reset(off, len);
  const end = off + len;
  if (off < 0 || len < ETH_HEADER_LEN || end > buf.length) {
    return fail(info, ParseError.truncatedEthernet);
  }
  const v = viewOf(buf);
  let p = off + 12;
  let type = v.getUint16(p, false);
  p += 2;
  let tags = 0;
  while (type === ETHERTYPE_VLAN || type === ETHERTYPE_QINQ) {
    if (++tags > MAX_VLAN_TAGS) return fail(info, ParseError.tooManyVlanTags);
    if (p + VLAN_TAG_LEN > end) return fail(info, ParseError.truncatedVlan);
    if (info.vlan < 0) info.vlan = v.getUint16(p, false) & 0x0fff;
    type = v.getUint16(p + 2, false);
    p += VLAN_TAG_LEN;
  }
  info.etherType = type;
  if (type === ETHERTYPE_IPV4) return parseIpv4(v, p, end, info);
  if (type === ETHERTYPE_IPV6) return parseIpv6(v, p, end, info);
  info.cls = PacketClass.nonIp;
  return true;
}

/**
 * Parses a raw IP packet (no link header, as in `LINKTYPE_RAW`) at
 * `buf[off, off+len)`; the version nibble selects IPv4 or IPv6.
 */
export function parseRawIp(buf: Uint8Array, off: number, len: number, info: PacketInfo): boolean {
  info.reset(off, len);
  const end = off + len;
  if (off < 0 || len < 1 || end > buf.length) return fail(info, ParseError.truncatedIp);
  const v = viewOf(buf);
  const version = v.getUint8(off) >> 4;
  if (version === 4) {
    info.etherType = ETHERTYPE_IPV4;
    return parseIpv4(v, off, end, info);
  }
  if (version === 6) {
    info.etherType = ETHERTYPE_IPV6;
    return parseIpv6(v, off, end, info);
  }
  return fail(info, ParseError.badIpHeader);
}

function parseIpv4(v: DataView, p: number, end: number, info: PacketInfo): boolean {
  if (p + IPV4_MIN_HEADER > end) return fail(info, ParseError.truncatedIp);
  const vihl = v.getUint8(p);
  const ihl = (vihl & 0x0f) * 4;
  if (vihl >> 4 !== 4 || ihl < IPV4_MIN_HEADER) return fail(info, ParseError.badIpHeader);
  const total = v.getUint16(p + IPV4_OFF_TOTAL_LEN, false);
  if (total < ihl) return fail(info, ParseError.badIpLength);
  if (p + ihl > end) return fail(info, ParseError.truncatedIp);
  // A total length beyond the captured bytes is a snapped capture, not an
  // attack signal: L4 parsing below still checks every header it reads.
  const ipEnd = p + total < end ? p + total : end;
  info.ipVersion = 4;
  info.l3Off = p;
  info.srcOff = p + IPV4_OFF_SRC;
  info.dstOff = p + IPV4_OFF_DST;
  info.src4 = v.getUint32(p + IPV4_OFF_SRC, false);
  info.dst4 = v.getUint32(p + IPV4_OFF_DST, false);
  const proto = v.getUint8(p + IPV4_OFF_PROTO);
  info.proto = proto;
  const frag = v.getUint16(p + IPV4_OFF_FRAG, false);
  const fragOffset = frag & IPV4_FRAG_MASK;
  if ((frag & IPV4_FLAG_MF) !== 0 || fragOffset !== 0) {
    info.fragment = true;
    if (fragOffset !== 0) {
      info.laterFragment = true;
      info.cls = PacketClass.fragment;
      return true;
    }
  }
  return parseL4(v, p + ihl, ipEnd, proto, info);
}

function parseIpv6(v: DataView, p: number, end: number, info: PacketInfo): boolean {
  if (p + IPV6_HEADER > end) return fail(info, ParseError.truncatedIp);
  if (v.getUint8(p) >> 4 !== 6) return fail(info, ParseError.badIpHeader);
  const payload = v.getUint16(p + IPV6_OFF_PAYLOAD_LEN, false);
  const ipEnd = p + IPV6_HEADER + payload < end ? p + IPV6_HEADER + payload : end;
  info.ipVersion = 6;
  info.l3Off = p;
  info.srcOff = p + IPV6_OFF_SRC;
  info.dstOff = p + IPV6_OFF_DST;
  let next = v.getUint8(p + IPV6_OFF_NEXT);
  let q = p + IPV6_HEADER;
  for (let i = 0;; i++) {
    if (
      next !== PROTO_HOPOPT && next !== PROTO_ROUTING && next !== PROTO_FRAGMENT &&
      next !== PROTO_DSTOPTS && next !== PROTO_AH && next !== PROTO_MOBILITY
    ) break;
    if (i >= MAX_IPV6_EXT) return fail(info, ParseError.badIpv6Extension);
    if (q + 8 > ipEnd) return fail(info, ParseError.badIpv6Extension);
    if (next === PROTO_FRAGMENT) {
      info.fragment = true;
      const fo = v.getUint16(q + 2, false) >> 3;
      next = v.getUint8(q);
      q += IPV6_FRAG_HEADER_LEN;
      if (fo !== 0) {
        info.proto = next;
        info.laterFragment = true;
        info.cls = PacketClass.fragment;
        return true;
      }
      continue;
    }
    // AH counts its length in 4-byte units minus 2; the others in 8-byte units minus 1.
    const hlen = next === PROTO_AH ? (v.getUint8(q + 1) + 2) * 4 : (v.getUint8(q + 1) + 1) * 8;
    next = v.getUint8(q);
    q += hlen;
    if (q > ipEnd) return fail(info, ParseError.badIpv6Extension);
  }
  info.proto = next;
  if (next === PROTO_NONE) {
    info.cls = info.fragment ? PacketClass.fragment : PacketClass.otherIp;
    return true;
  }
  return parseL4(v, q, ipEnd, next, info);
}

function parseL4(v: DataView, q: number, end: number, proto: number, info: PacketInfo): boolean {
  if (proto === PROTO_TCP) {
    if (q + TCP_MIN_HEADER > end) return fail(info, ParseError.truncatedL4);
    const doff = (v.getUint8(q + TCP_OFF_DATA) >> 4) * 4;
    if (doff < TCP_MIN_HEADER) return fail(info, ParseError.badL4Header);
    info.l4Off = q;
    info.srcPort = v.getUint16(q, false);
    info.dstPort = v.getUint16(q + 2, false);
    const flags = v.getUint8(q + TCP_OFF_FLAGS);
    info.tcpFlags = flags;
    if ((flags & TCP_RST) !== 0) info.cls = PacketClass.tcpRst;
    else if ((flags & TCP_SYN) !== 0) {
      info.cls = (flags & TCP_ACK) !== 0 ? PacketClass.tcpSynAck : PacketClass.tcpSyn;
    } else info.cls = PacketClass.tcpOther;
    return true;
  }
  if (proto === PROTO_UDP) {
    if (q + UDP_HEADER > end) return fail(info, ParseError.truncatedL4);
    info.l4Off = q;
    info.srcPort = v.getUint16(q, false);
    info.dstPort = v.getUint16(q + 2, false);
    info.cls = PacketClass.udp;
    return true;
  }
  if (proto === PROTO_ICMP || proto === PROTO_ICMPV6) {
    if (q + ICMP_MIN_HEADER > end) return fail(info, ParseError.truncatedL4);
    info.l4Off = q;
    info.icmpType = v.getUint8(q);
    info.icmpCode = v.getUint8(q + 1);
    info.cls = PacketClass.icmp;
    return true;
  }
  info.cls = info.fragment ? PacketClass.fragment : PacketClass.otherIp;
  return true;
}
