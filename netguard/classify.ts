/**
 * The class of a frame alone, fast: {@link classifyEthernet} returns the
 * {@link PacketClass} that {@link parseEthernet} would put in `info.cls`,
 * reading only the bytes the class depends on, in one straight-line pass
 * over the frame with no object written. Filters and counters that need the
 * class and nothing else use it; the rare frames it does not follow in line
 * (IPv6 extension headers) go to the full parser, so the two always agree.
 *
 * @module
 */

import { PacketClass, PacketInfo, parseEthernet } from "./packet.ts";
import { LINKTYPE_ETHERNET } from "./pcap_decoder.ts";
import { parseLinkFrame } from "./pcap.ts";

const scratch = new PacketInfo();

function slow(buf: Uint8Array, off: number, len: number): number {
  parseEthernet(buf, off, len, scratch);
  return scratch.cls;
}

/** Class of a TCP, UDP or ICMP header at `buf[q]` in a packet ending at `end`. */
function l4Class(buf: Uint8Array, q: number, end: number, proto: number, frag: boolean): number {
  if (proto === 6) {
    if (q + 20 > end || (buf[q + 12] ?? 0) < 0x50) return PacketClass.malformed;
    const f = buf[q + 13] ?? 0;
    if ((f & 0x04) !== 0) return PacketClass.tcpRst;
    if ((f & 0x02) === 0) return PacketClass.tcpOther;
    return (f & 0x10) !== 0 ? PacketClass.tcpSynAck : PacketClass.tcpSyn;
  }
  if (proto === 17) return q + 8 > end ? PacketClass.malformed : PacketClass.udp;
  if (proto === 1 || proto === 58) return q + 4 > end ? PacketClass.malformed : PacketClass.icmp;
  return frag ? PacketClass.fragment : PacketClass.otherIp;
}

/**
 * The {@link PacketClass} of the Ethernet frame at `buf[off, off+len)`,
 * the same as `parseEthernet(buf, off, len, info)` leaves in `info.cls`.
 */
export function classifyEthernet(buf: Uint8Array, off: number, len: number): number {
  const end = off + len;
  if (off < 0 || len < 14 || end > buf.length) return PacketClass.malformed;
  let p = off + 14;
  let type = ((buf[off + 12] ?? 0) << 8) | (buf[off + 13] ?? 0);
  // 802.1Q / 802.1ad tags: at most three.
  for (let tags = 0; type === 0x8100 || type === 0x88a8; tags++) {
    if (tags === 3 || p + 4 > end) return PacketClass.malformed;
    type = ((buf[p + 2] ?? 0) << 8) | (buf[p + 3] ?? 0);
    p += 4;
  }
  if (type === 0x0800) {
    if (p + 20 > end) return PacketClass.malformed;
    const vihl = buf[p] ?? 0;
    const ihl = (vihl & 0x0f) << 2;
    if (vihl >> 4 !== 4 || ihl < 20) return PacketClass.malformed;
    const total = ((buf[p + 2] ?? 0) << 8) | (buf[p + 3] ?? 0);
    if (total < ihl || p + ihl > end) return PacketClass.malformed;
    const frag = ((buf[p + 6] ?? 0) << 8) | (buf[p + 7] ?? 0);
    if ((frag & 0x1fff) !== 0) return PacketClass.fragment;
    const ipEnd = p + total < end ? p + total : end;
    return l4Class(buf, p + ihl, ipEnd, buf[p + 9] ?? 0, (frag & 0x2000) !== 0);
  }
  if (type === 0x86dd) {
    if (p + 40 > end || (buf[p] ?? 0) >> 4 !== 6) return PacketClass.malformed;
    const next = buf[p + 6] ?? 0;
    // Hop-by-hop, routing, fragment, destination options, AH, mobility: the full parser.
    if (
      next === 0 || next === 43 || next === 44 || next === 60 || next === 51 || next === 135
    ) return slow(buf, off, len);
    if (next === 59) return PacketClass.otherIp;
    const ipEnd = p + 40 + (((buf[p + 4] ?? 0) << 8) | (buf[p + 5] ?? 0));
    return l4Class(buf, p + 40, ipEnd < end ? ipEnd : end, next, false);
  }
  return PacketClass.nonIp;
}

/**
 * The {@link PacketClass} of a frame of link type `link` (as
 * {@link parseLinkFrame} would classify it); Ethernet takes the fast path.
 */
export function classifyFrame(link: number, buf: Uint8Array, off: number, len: number): number {
  if (link === LINKTYPE_ETHERNET) return classifyEthernet(buf, off, len);
  parseLinkFrame(link, buf, off, len, scratch);
  return scratch.cls;
}
