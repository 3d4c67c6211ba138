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

let cachedBuf: Uint8Array | null = null;
let cachedView: DataView = new DataView(new ArrayBuffer(0));

/** Class of a TCP, UDP or ICMP header at `q` in a packet ending at `end`. */
function l4Class(v: DataView, q: number, end: number, proto: number, frag: boolean): number {
  if (proto === 6) {
    if (q + 20 > end) return PacketClass.malformed;
    // Data offset (high nibble) and flags in one read.
    const x = v.getUint16(q + 12, false);
    if (x < 0x5000) return PacketClass.malformed;
    if ((x & 0x04) !== 0) return PacketClass.tcpRst;
    if ((x & 0x02) === 0) return PacketClass.tcpOther;
    return (x & 0x10) !== 0 ? PacketClass.tcpSynAck : PacketClass.tcpSyn;
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
  if (buf !== cachedBuf) {
    cachedBuf = buf;
    cachedView = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  const v = cachedView;
  let p = off + 14;
  let type = v.getUint16(off + 12, false);
  // 802.1Q / 802.1ad tags: at most three.
  for (let tags = 0; type === 0x8100 || type === 0x88a8; tags++) {
    if (tags === 3 || p + 4 > end) return PacketClass.malformed;
    type = v.getUint16(p + 2, false);
    p += 4;
  }
  if (type === 0x0800) {
    if (p + 20 > end) return PacketClass.malformed;
    // Version, header length and total length in one read.
    const w0 = v.getUint32(p, false);
    const ihl = (w0 >>> 22) & 0x3c;
    if (w0 >>> 28 !== 4 || ihl < 20) return PacketClass.malformed;
    const total = w0 & 0xffff;
    if (total < ihl || p + ihl > end) return PacketClass.malformed;
    const frag = v.getUint16(p + 6, false);
    if ((frag & 0x1fff) !== 0) return PacketClass.fragment;
    const ipEnd = p + total < end ? p + total : end;
    return l4Class(v, p + ihl, ipEnd, v.getUint8(p + 9), (frag & 0x2000) !== 0);
  }
  if (type === 0x86dd) {
    if (p + 40 > end || v.getUint8(p) >> 4 !== 6) return PacketClass.malformed;
    const next = v.getUint8(p + 6);
    // Hop-by-hop, routing, fragment, destination options, AH, mobility: the full parser.
    if (
      next === 0 || next === 43 || next === 44 || next === 60 || next === 51 || next === 135
    ) return slow(buf, off, len);
    if (next === 59) return PacketClass.otherIp;
    const ipEnd = p + 40 + v.getUint16(p + 4, false);
    return l4Class(v, p + 40, ipEnd < end ? ipEnd : end, next, false);
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
