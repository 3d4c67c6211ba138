/**
 * Capture files in memory: indexes a classic pcap or pcapng (parsed by
 * {@link CaptureDecoder}) into typed arrays in one pass, so replaying and
 * classifying it afterwards allocates nothing per packet; parses a record of
 * any supported link type; and writes pcap that tcpdump and Wireshark open.
 *
 * @module
 */

import { CaptureFormatError } from "./errors.ts";
import { PacketClass, type PacketInfo, parseEthernet, parseRawIp } from "./packet.ts";
import {
  CaptureDecoder,
  LINKTYPE_ETHERNET,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_LINUX_SLL2,
  LINKTYPE_LOOP,
  LINKTYPE_NULL,
  PCAP_FILE_HEADER,
  PCAP_MAGIC_US,
  PCAP_OFF_LINKTYPE,
  PCAP_OFF_SNAPLEN,
  PCAP_OFF_VERSION_MAJOR,
  PCAP_OFF_VERSION_MINOR,
  PCAP_RECORD_HEADER,
  REC_OFF_CAPLEN,
  REC_OFF_ORIGLEN,
  REC_OFF_TS_FRAC,
  REC_OFF_TS_SEC,
  type RecordHandler,
} from "./pcap_decoder.ts";

// Linux cooked headers.
const SLL_HEADER = 16;
const SLL_OFF_PKTTYPE = 0;
const SLL_OFF_PROTOCOL = 14;
const SLL2_HEADER = 20;
const SLL2_OFF_PROTOCOL = 0;
const SLL2_OFF_PKTTYPE = 10;
/** BSD loopback header: the address family (2 IPv4; 24, 28 or 30 IPv6 by OS), 4 bytes. */
const LOOPBACK_HEADER = 4;
/** Linux packet type of a frame the host sent (`PACKET_OUTGOING`). */
export const PACKET_OUTGOING = 4;

/** Every record of a capture, indexed into typed arrays over one buffer. */
export interface Capture {
  /** The file bytes; records point into it. */
  readonly buf: Uint8Array;
  /** Number of records. */
  readonly count: number;
  /** Offset of each record's data in {@link Capture.buf}. */
  readonly offsets: Uint32Array;
  /** Captured length of each record. */
  readonly lengths: Uint32Array;
  /** Original (on the wire) length of each record. */
  readonly origLengths: Uint32Array;
  /** Timestamp of each record, milliseconds since the Unix epoch. */
  readonly tsMs: Float64Array;
  /** Link type of each record (pcapng interfaces may differ). */
  readonly linkTypes: Uint16Array;
  /** "pcap" or "pcapng". */
  readonly format: "pcap" | "pcapng";
  /** True when the file ended inside a record (a capture cut short); that record is dropped. */
  readonly truncatedTail: boolean;
}

class CaptureBuilder {
  offsets = new Uint32Array(1024);
  lengths = new Uint32Array(1024);
  origLengths = new Uint32Array(1024);
  tsMs = new Float64Array(1024);
  linkTypes = new Uint16Array(1024);
  count = 0;

  push(off: number, len: number, orig: number, ts: number, link: number): void {
    if (this.count === this.offsets.length) this.grow();
    const i = this.count++;
    this.offsets[i] = off;
    this.lengths[i] = len;
    this.origLengths[i] = orig;
    this.tsMs[i] = ts;
    this.linkTypes[i] = link;
  }

  private grow(): void {
    const n = this.offsets.length * 2;
    const o = new Uint32Array(n);
    o.set(this.offsets);
    this.offsets = o;
    const l = new Uint32Array(n);
    l.set(this.lengths);
    this.lengths = l;
    const g = new Uint32Array(n);
    g.set(this.origLengths);
    this.origLengths = g;
    const t = new Float64Array(n);
    t.set(this.tsMs);
    this.tsMs = t;
    const k = new Uint16Array(n);
    k.set(this.linkTypes);
    this.linkTypes = k;
  }

  finish(
    buf: Uint8Array,
    format: "pcap" | "pcapng",
    truncatedTail: boolean,
  ): Capture {
    const n = this.count;
    return {
      buf,
      count: n,
      offsets: this.offsets.subarray(0, n),
      lengths: this.lengths.subarray(0, n),
      origLengths: this.origLengths.subarray(0, n),
      tsMs: this.tsMs.subarray(0, n),
      linkTypes: this.linkTypes.subarray(0, n),
      format,
      truncatedTail,
    };
  }
}

/**
 * Reads a pcap or pcapng capture held in memory into an index over it
 * (zero-copy: records point into `bytes`). For captures of any size, stream
 * them instead with {@link readCaptureStream}.
 *
 * @param bytes the whole file.
 * @param source a name for error messages (usually the path).
 * @throws {CaptureFormatError} on a bad magic, unknown link type or corrupt block.
 */
export function readCapture(bytes: Uint8Array, source = "<memory>"): Capture {
  const dec = new CaptureDecoder(source);
  const b = new CaptureBuilder();
  // One push of the whole file: every record is handed in place (`buf` is `bytes`).
  dec.push(bytes, (_buf, off, len, wire, ts, link) => b.push(off, len, wire, ts, link));
  const info = dec.end();
  return b.finish(bytes, info.format, info.truncatedTail);
}

/**
 * Reads a capture file from disk into memory; see {@link readCapture}. Only
 * regular files are read this way (a FIFO or device could be endless):
 * stream those with {@link openCaptureStream}.
 */
export async function readCaptureFile(path: string): Promise<Capture> {
  let bytes: Uint8Array;
  try {
    const st = await Deno.stat(path);
    if (!st.isFile) {
      throw new CaptureFormatError(
        path,
        st.isDirectory ? "is a directory, not a capture file" : "is not a regular file; stream it",
      );
    }
    bytes = await Deno.readFile(path);
  } catch (err) {
    if (err instanceof CaptureFormatError) throw err;
    throw new CaptureFormatError(
      path,
      `cannot read the file (${err instanceof Error ? err.message : String(err)})`,
    );
  }
  return readCapture(bytes, path);
}

/** Hands every record of `cap` to `onRecord`, in order (zero-copy: records point into `cap.buf`). */
export function forEachRecord(cap: Capture, onRecord: RecordHandler): void {
  const { buf, offsets, lengths, origLengths, tsMs, linkTypes } = cap;
  for (let i = 0; i < cap.count; i++) {
    onRecord(
      buf,
      offsets[i] ?? 0,
      lengths[i] ?? 0,
      origLengths[i] ?? 0,
      tsMs[i] ?? 0,
      linkTypes[i] ?? LINKTYPE_ETHERNET,
    );
  }
}

/**
 * Parses record `i` of `cap` into `info`, whatever its link type.
 *
 * @returns the Linux packet type for cooked captures (4 = sent by the host),
 * or -1 when the link layer does not say; `info.error` tells if the frame was malformed.
 */
export function parseRecord(cap: Capture, i: number, info: PacketInfo): number {
  const off = cap.offsets[i] ?? 0;
  const len = cap.lengths[i] ?? 0;
  return parseLinkFrame(cap.linkTypes[i] ?? LINKTYPE_ETHERNET, cap.buf, off, len, info);
}

/**
 * Parses a frame of link type `link`; see {@link parseRecord} for the result.
 */
export function parseLinkFrame(
  link: number,
  buf: Uint8Array,
  off: number,
  len: number,
  info: PacketInfo,
): number {
  if (link === LINKTYPE_ETHERNET) {
    parseEthernet(buf, off, len, info);
    return -1;
  }
  if (link === LINKTYPE_LINUX_SLL || link === LINKTYPE_LINUX_SLL2) {
    const hdr = link === LINKTYPE_LINUX_SLL ? SLL_HEADER : SLL2_HEADER;
    if (len < hdr) {
      parseRawIp(buf, off, 0, info);
      return -1;
    }
    const pktType = link === LINKTYPE_LINUX_SLL
      ? (buf[off + SLL_OFF_PKTTYPE] ?? 0) * 256 + (buf[off + SLL_OFF_PKTTYPE + 1] ?? 0)
      : (buf[off + SLL2_OFF_PKTTYPE] ?? 0);
    const po = off + (link === LINKTYPE_LINUX_SLL ? SLL_OFF_PROTOCOL : SLL2_OFF_PROTOCOL);
    const proto = (buf[po] ?? 0) * 256 + (buf[po + 1] ?? 0);
    if (proto === 0x0800 || proto === 0x86dd) parseRawIp(buf, off + hdr, len - hdr, info);
    else nonIp(info, off + hdr, len - hdr, proto); // ARP and the like are not malformed IP
    return pktType;
  }
  if (link === LINKTYPE_NULL || link === LINKTYPE_LOOP) {
    if (len < LOOPBACK_HEADER) {
      parseRawIp(buf, off, 0, info);
      return -1;
    }
    // NULL's family is in the capturing host's byte order: small values read either way.
    const b = buf.subarray(off, off + LOOPBACK_HEADER);
    const family = link === LINKTYPE_LOOP || (b[0] === 0 && b[1] === 0)
      ? (b[2] ?? 0) * 256 + (b[3] ?? 0)
      : (b[1] ?? 0) * 256 + (b[0] ?? 0);
    if (family === 2 || family === 24 || family === 28 || family === 30) {
      parseRawIp(buf, off + LOOPBACK_HEADER, len - LOOPBACK_HEADER, info);
    } else nonIp(info, off + LOOPBACK_HEADER, len - LOOPBACK_HEADER, 0);
    return -1;
  }
  parseRawIp(buf, off, len, info);
  return -1;
}

const SLL_OFF_HATYPE = 2;
const SLL2_OFF_HATYPE = 8;
const ARPHRD_ETHER = 1;
const ARPHRD_LOOPBACK = 772;
const ETHERNET_HEADER = 14;

/**
 * A frame's length as it was on the wire. Cooked (`tcpdump -i any`) and BSD
 * loopback captures replace the link header with their own, so their lengths
 * are brought back to the 14-byte header an Ethernet or Linux loopback link
 * has (none for links without one, e.g. a tun): the same traffic then counts
 * the same bytes whichever way it was captured. Other links are as captured.
 */
export function wireLength(
  link: number,
  buf: Uint8Array,
  off: number,
  len: number,
  wireLen: number,
): number {
  if (link === LINKTYPE_LINUX_SLL || link === LINKTYPE_LINUX_SLL2) {
    const v1 = link === LINKTYPE_LINUX_SLL;
    const hdr = v1 ? SLL_HEADER : SLL2_HEADER;
    if (len < hdr || wireLen < hdr) return wireLen;
    const at = off + (v1 ? SLL_OFF_HATYPE : SLL2_OFF_HATYPE);
    const ha = (buf[at] ?? 0) * 256 + (buf[at + 1] ?? 0);
    return wireLen - hdr + (ha === ARPHRD_ETHER || ha === ARPHRD_LOOPBACK ? ETHERNET_HEADER : 0);
  }
  if ((link === LINKTYPE_NULL || link === LINKTYPE_LOOP) && wireLen >= LOOPBACK_HEADER) {
    return wireLen - LOOPBACK_HEADER + ETHERNET_HEADER;
  }
  return wireLen;
}

/** Marks `info` as a well-formed frame that carries no IP (`etherType` when the link says). */
function nonIp(info: PacketInfo, off: number, len: number, etherType: number): void {
  info.reset(off, len);
  info.cls = PacketClass.nonIp;
  info.ipVersion = 0;
  info.etherType = etherType;
}

/** Writes classic microsecond pcap files, one record at a time, into memory. */
export class PcapWriter {
  readonly #chunks: Uint8Array[] = [];
  #size = 0;

  /** Starts a pcap stream of `linkType` with snap length `snaplen`. */
  constructor(linkType: number = LINKTYPE_ETHERNET, snaplen = 262144) {
    const h = new Uint8Array(PCAP_FILE_HEADER);
    const v = new DataView(h.buffer);
    v.setUint32(0, PCAP_MAGIC_US, true);
    v.setUint16(PCAP_OFF_VERSION_MAJOR, 2, true);
    v.setUint16(PCAP_OFF_VERSION_MINOR, 4, true);
    v.setUint32(PCAP_OFF_SNAPLEN, snaplen, true);
    v.setUint32(PCAP_OFF_LINKTYPE, linkType, true);
    this.#push(h);
  }

  #push(b: Uint8Array): void {
    this.#chunks.push(b);
    this.#size += b.length;
  }

  /** Appends one frame captured at `tsMs` (ms since the epoch). */
  write(frame: Uint8Array, tsMs: number, origLen: number = frame.length): void {
    const h = new Uint8Array(PCAP_RECORD_HEADER);
    const v = new DataView(h.buffer);
    const sec = Math.floor(tsMs / 1000);
    v.setUint32(REC_OFF_TS_SEC, sec, true);
    v.setUint32(REC_OFF_TS_FRAC, Math.min(999999, Math.round((tsMs - sec * 1000) * 1000)), true);
    v.setUint32(REC_OFF_CAPLEN, frame.length, true);
    v.setUint32(REC_OFF_ORIGLEN, Math.max(origLen, frame.length), true);
    this.#push(h);
    this.#push(frame.slice());
  }

  /** The file so far. */
  bytes(): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(this.#size);
    let o = 0;
    for (const c of this.#chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}
