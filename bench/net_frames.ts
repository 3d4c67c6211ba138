/**
 * The frames of the virtio-net benchmark, each behind its 12-byte
 * virtio-net header: what a guest transmits, as vmkit's device and the C
 * peer (`net_tap_peer.c`) both write them to the same TAP.
 *
 * - `small`: 64-byte IPv4/UDP frames (60 bytes + the 4-byte FCS the wire adds: 64 on the wire).
 * - `bulk`: 1514-byte IPv4/UDP frames (a full 1500-byte MTU).
 * - `tso`: 63766-byte IPv4/TCP frames with a TSO header (gso_size 1448), as a
 *   guest with VIRTIO_NET_F_HOST_TSO4 sends them.
 *
 * They go to a non-local address in a namespace with forwarding off, so
 * the namespace drops them right after routing and sends nothing back.
 *
 * @module
 */

/** Kinds of frame the benchmark sends. */
export type FrameKind = "small" | "bulk" | "tso";

/** Frame length (without the virtio-net header) per kind. */
export const FRAME_LEN: Readonly<Record<FrameKind, number>> = {
  small: 60,
  bulk: 1514,
  tso: 14 + 20 + 20 + 44 * 1448,
};

/** The guest's MAC in the benchmark. */
export const GUEST_MAC = [0x02, 0x00, 0x00, 0x00, 0x93, 0x02];
const VNET = 12;

function ipChecksum(b: Uint8Array, off: number, len: number): number {
  let s = 0;
  for (let i = 0; i < len; i += 2) s += (b[off + i]! << 8) | b[off + i + 1]!;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/**
 * One frame of `kind` behind its virtio-net header, to `dstMac`, numbered
 * `seq` (in the IP id) so frames differ.
 */
export function benchFrame(kind: FrameKind, dstMac: number[], seq: number): Uint8Array {
  const len = FRAME_LEN[kind];
  const f = new Uint8Array(VNET + len);
  const v = new DataView(f.buffer);
  if (kind === "tso") {
    f[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    f[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    v.setUint16(2, 54, true); // hdr_len
    v.setUint16(4, 1448, true); // gso_size
    v.setUint16(6, 34, true); // csum_start: the TCP header
    v.setUint16(8, 16, true); // csum_offset: TCP checksum field
  }
  const e = VNET;
  f.set(dstMac, e);
  f.set(GUEST_MAC, e + 6);
  v.setUint16(e + 12, 0x0800);
  const ip = e + 14;
  const tcp = kind === "tso";
  f[ip] = 0x45;
  v.setUint16(ip + 2, len - 14);
  v.setUint16(ip + 4, seq & 0xffff);
  v.setUint16(ip + 6, 0x4000); // DF
  f[ip + 8] = 64;
  f[ip + 9] = tcp ? 6 : 17;
  f.set([10, 93, 0, 2], ip + 12);
  f.set([10, 93, 0, 99], ip + 16);
  v.setUint16(ip + 10, ipChecksum(f, ip, 20));
  const l4 = ip + 20;
  v.setUint16(l4, 40000);
  v.setUint16(l4 + 2, 9);
  if (tcp) {
    v.setUint32(l4 + 4, seq * 64000);
    f[l4 + 12] = 0x50; // data offset 5 words
    f[l4 + 13] = 0x10; // ACK
    v.setUint16(l4 + 14, 65535);
    // Partial checksum (pseudo-header sum), as a guest leaves it for the offload.
    let s = 10 * 256 + 93 + 2 + 10 * 256 + 93 + 99 + 6 + (len - 34);
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    v.setUint16(l4 + 16, s);
  } else {
    v.setUint16(l4 + 4, len - 34);
  }
  for (let i = l4 + (tcp ? 20 : 8); i < f.length; i++) f[i] = i & 0xff;
  return f;
}

/** The peer's frame file: records of a little-endian u32 length, then the bytes. */
export function frameFile(frames: Uint8Array[]): Uint8Array {
  const total = frames.reduce((n, f) => n + 4 + f.length, 0);
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  let off = 0;
  for (const f of frames) {
    v.setUint32(off, f.length, true);
    out.set(f, off + 4);
    off += 4 + f.length;
  }
  return out;
}
