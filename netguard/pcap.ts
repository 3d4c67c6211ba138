/**
 * Capture files: reads classic pcap (microsecond and nanosecond, either byte
 * order) and pcapng (section, interface and packet blocks), and writes pcap
 * that tcpdump and Wireshark open.
 *
 * Reading indexes every record into typed arrays in one pass, so replaying
 * and classifying the capture afterwards allocates nothing per packet.
 *
 * @module
 */

import { CaptureFormatError } from "./errors.ts";
import { PacketClass, type PacketInfo, parseEthernet, parseRawIp } from "./packet.ts";

/** Link type of Ethernet frames. */
export const LINKTYPE_ETHERNET = 1;
/** Link type of raw IP packets (version from the first nibble). */
export const LINKTYPE_RAW = 101;
/** Link type of Linux "cooked" captures (`tcpdump -i any`, v1). */
export const LINKTYPE_LINUX_SLL = 113;
/** Link type of raw IPv4 packets. */
export const LINKTYPE_IPV4 = 228;
/** Link type of raw IPv6 packets. */
export const LINKTYPE_IPV6 = 229;
/** Link type of Linux "cooked" captures, v2. */
export const LINKTYPE_LINUX_SLL2 = 276;

const SUPPORTED_LINKTYPES: ReadonlySet<number> = new Set([
  LINKTYPE_ETHERNET,
  LINKTYPE_RAW,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_IPV4,
  LINKTYPE_IPV6,
  LINKTYPE_LINUX_SLL2,
]);

// Classic pcap: 24-byte file header, 16-byte record header.
const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const PCAP_FILE_HEADER = 24;
const PCAP_OFF_VERSION_MAJOR = 4;
const PCAP_OFF_VERSION_MINOR = 6;
const PCAP_OFF_SNAPLEN = 16;
const PCAP_OFF_LINKTYPE = 20;
const PCAP_RECORD_HEADER = 16;
const REC_OFF_TS_SEC = 0;
const REC_OFF_TS_FRAC = 4;
const REC_OFF_CAPLEN = 8;
const REC_OFF_ORIGLEN = 12;

// pcapng: blocks of type, total length, body, total length.
const PCAPNG_SHB = 0x0a0d0d0a;
const PCAPNG_IDB = 0x00000001;
const PCAPNG_SPB = 0x00000003;
const PCAPNG_EPB = 0x00000006;
const PCAPNG_BYTE_ORDER_MAGIC = 0x1a2b3c4d;
const PCAPNG_BLOCK_MIN = 12;
const SHB_OFF_BOM = 8;
const IDB_OFF_LINKTYPE = 8;
const IDB_OFF_OPTIONS = 16;
const EPB_OFF_IFACE = 8;
const EPB_OFF_TS_HIGH = 12;
const EPB_OFF_TS_LOW = 16;
const EPB_OFF_CAPLEN = 20;
const EPB_OFF_ORIGLEN = 24;
const EPB_OFF_DATA = 28;
const SPB_OFF_ORIGLEN = 8;
const SPB_OFF_DATA = 12;
const OPT_IF_TSRESOL = 9;

// Linux cooked headers.
const SLL_HEADER = 16;
const SLL_OFF_PKTTYPE = 0;
const SLL_OFF_PROTOCOL = 14;
const SLL2_HEADER = 20;
const SLL2_OFF_PROTOCOL = 0;
const SLL2_OFF_PKTTYPE = 10;
/** Linux packet type of a frame the host sent (`PACKET_OUTGOING`). */
export const PACKET_OUTGOING = 4;

/** Largest record accepted; anything larger is a corrupt or hostile file. */
export const MAX_RECORD_LEN: number = 256 * 1024;

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

function checkLinkType(source: string, link: number): void {
  if (!SUPPORTED_LINKTYPES.has(link)) {
    throw new CaptureFormatError(
      source,
      `unknown link type ${link}; netguard reads Ethernet (1), raw IP (101, 228, 229) and ` +
        `Linux cooked (113, 276) captures`,
    );
  }
}

/**
 * Reads a pcap or pcapng capture held in memory.
 *
 * @param bytes the whole file.
 * @param source a name for error messages (usually the path).
 * @throws {CaptureFormatError} on a bad magic, unknown link type or corrupt block.
 */
export function readCapture(bytes: Uint8Array, source = "<memory>"): Capture {
  if (bytes.length < 4) throw new CaptureFormatError(source, "file is too short to be a capture");
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magicBe = v.getUint32(0, false);
  if (magicBe === PCAPNG_SHB) return readPcapng(bytes, v, source);
  return readPcap(bytes, v, source);
}

/** Reads a capture file from disk; see {@link readCapture}. */
export async function readCaptureFile(path: string): Promise<Capture> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new CaptureFormatError(
      path,
      `cannot read the file (${err instanceof Error ? err.message : String(err)})`,
    );
  }
  return readCapture(bytes, path);
}

function readPcap(bytes: Uint8Array, v: DataView, source: string): Capture {
  if (bytes.length < PCAP_FILE_HEADER) {
    throw new CaptureFormatError(source, "file is shorter than a pcap header (24 bytes)");
  }
  let le: boolean;
  let nanos: boolean;
  const magicLe = v.getUint32(0, true);
  if (magicLe === PCAP_MAGIC_US || magicLe === PCAP_MAGIC_NS) {
    le = true;
    nanos = magicLe === PCAP_MAGIC_NS;
  } else {
    const magicBe = v.getUint32(0, false);
    if (magicBe !== PCAP_MAGIC_US && magicBe !== PCAP_MAGIC_NS) {
      throw new CaptureFormatError(
        source,
        `not a pcap or pcapng file (magic 0x${magicBe.toString(16).padStart(8, "0")})`,
      );
    }
    le = false;
    nanos = magicBe === PCAP_MAGIC_NS;
  }
  const major = v.getUint16(PCAP_OFF_VERSION_MAJOR, le);
  if (major !== 2) {
    throw new CaptureFormatError(
      source,
      `unsupported pcap version ${major}.${v.getUint16(PCAP_OFF_VERSION_MINOR, le)}`,
    );
  }
  void v.getUint32(PCAP_OFF_SNAPLEN, le);
  // The upper bits of the link-type field carry FCS information; the type is the low 16 bits.
  const link = v.getUint32(PCAP_OFF_LINKTYPE, le) & 0xffff;
  checkLinkType(source, link);
  const frac = nanos ? 1e-6 : 1e-3;
  const b = new CaptureBuilder();
  let p = PCAP_FILE_HEADER;
  let truncated = false;
  while (p < bytes.length) {
    if (p + PCAP_RECORD_HEADER > bytes.length) {
      truncated = true;
      break;
    }
    const cap = v.getUint32(p + REC_OFF_CAPLEN, le);
    const orig = v.getUint32(p + REC_OFF_ORIGLEN, le);
    if (cap > MAX_RECORD_LEN) {
      throw new CaptureFormatError(
        source,
        `record at byte ${p} claims ${cap} bytes (limit ${MAX_RECORD_LEN}); the file is corrupt`,
      );
    }
    const data = p + PCAP_RECORD_HEADER;
    if (data + cap > bytes.length) {
      truncated = true;
      break;
    }
    const ts = v.getUint32(p + REC_OFF_TS_SEC, le) * 1000 +
      v.getUint32(p + REC_OFF_TS_FRAC, le) * frac;
    b.push(data, cap, orig < cap ? cap : orig, ts, link);
    p = data + cap;
  }
  return b.finish(bytes, "pcap", truncated);
}

function readPcapng(bytes: Uint8Array, v: DataView, source: string): Capture {
  const b = new CaptureBuilder();
  let le = true;
  // Per-interface link type and timestamp unit (in ms) of the current section.
  let ifLink: number[] = [];
  let ifUnitMs: number[] = [];
  let p = 0;
  let truncated = false;
  while (p < bytes.length) {
    if (p + PCAPNG_BLOCK_MIN > bytes.length) {
      truncated = true;
      break;
    }
    const typeBe = v.getUint32(p, false);
    if (typeBe === PCAPNG_SHB) {
      if (p + SHB_OFF_BOM + 4 > bytes.length) {
        truncated = true;
        break;
      }
      const bomLe = v.getUint32(p + SHB_OFF_BOM, true);
      if (bomLe === PCAPNG_BYTE_ORDER_MAGIC) le = true;
      else if (v.getUint32(p + SHB_OFF_BOM, false) === PCAPNG_BYTE_ORDER_MAGIC) le = false;
      else {throw new CaptureFormatError(
          source,
          `pcapng section at byte ${p} has a bad byte-order magic`,
        );}
      ifLink = [];
      ifUnitMs = [];
    }
    const type = v.getUint32(p, le);
    const len = v.getUint32(p + 4, le);
    if (len < PCAPNG_BLOCK_MIN || len % 4 !== 0 || len > MAX_RECORD_LEN + 64) {
      throw new CaptureFormatError(source, `pcapng block at byte ${p} has a bad length ${len}`);
    }
    if (p + len > bytes.length) {
      truncated = true;
      break;
    }
    if (v.getUint32(p + len - 4, le) !== len) {
      throw new CaptureFormatError(
        source,
        `pcapng block at byte ${p}: trailing length does not match ${len}`,
      );
    }
    const bodyEnd = p + len - 4;
    if (type === PCAPNG_IDB) {
      if (p + IDB_OFF_OPTIONS > bodyEnd) {
        throw new CaptureFormatError(source, `pcapng interface block at byte ${p} is too short`);
      }
      const link = v.getUint16(p + IDB_OFF_LINKTYPE, le);
      checkLinkType(source, link);
      ifLink.push(link);
      ifUnitMs.push(idbUnitMs(v, p + IDB_OFF_OPTIONS, bodyEnd, le));
    } else if (type === PCAPNG_EPB) {
      if (p + EPB_OFF_DATA > bodyEnd) {
        throw new CaptureFormatError(source, `pcapng packet block at byte ${p} is too short`);
      }
      const iface = v.getUint32(p + EPB_OFF_IFACE, le);
      const link = ifLink[iface];
      const unit = ifUnitMs[iface];
      if (link === undefined || unit === undefined) {
        throw new CaptureFormatError(
          source,
          `pcapng packet at byte ${p} names undeclared interface ${iface}`,
        );
      }
      const cap = v.getUint32(p + EPB_OFF_CAPLEN, le);
      const orig = v.getUint32(p + EPB_OFF_ORIGLEN, le);
      if (p + EPB_OFF_DATA + cap > bodyEnd) {
        throw new CaptureFormatError(source, `pcapng packet at byte ${p} overruns its block`);
      }
      const ts =
        (v.getUint32(p + EPB_OFF_TS_HIGH, le) * 4294967296 + v.getUint32(p + EPB_OFF_TS_LOW, le)) *
        unit;
      b.push(p + EPB_OFF_DATA, cap, orig < cap ? cap : orig, ts, link);
    } else if (type === PCAPNG_SPB) {
      const link = ifLink[0];
      if (link === undefined) {
        throw new CaptureFormatError(
          source,
          `pcapng simple packet at byte ${p} before any interface`,
        );
      }
      const room = bodyEnd - (p + SPB_OFF_DATA);
      if (room < 0) {
        throw new CaptureFormatError(
          source,
          `pcapng simple packet block at byte ${p} is too short`,
        );
      }
      const orig = v.getUint32(p + SPB_OFF_ORIGLEN, le);
      const cap = orig < room ? orig : room;
      b.push(p + SPB_OFF_DATA, cap, orig, 0, link);
    }
    p += len;
  }
  return b.finish(bytes, "pcapng", truncated);
}

/** Reads the `if_tsresol` option of an interface block; default microseconds. */
function idbUnitMs(v: DataView, p: number, end: number, le: boolean): number {
  let unit = 1e-3;
  while (p + 4 <= end) {
    const code = v.getUint16(p, le);
    const olen = v.getUint16(p + 2, le);
    if (code === 0) break;
    if (code === OPT_IF_TSRESOL && olen >= 1 && p + 5 <= end) {
      const r = v.getUint8(p + 4);
      const exp = r & 0x7f;
      // Bit 7 set: a power of two; otherwise a power of ten (units per second).
      unit = (r & 0x80 ? Math.pow(2, -exp) : Math.pow(10, -exp)) * 1000;
    }
    p += 4 + ((olen + 3) & ~3);
  }
  return unit;
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
    parseRawIp(buf, off + hdr, len - hdr, info);
    if (proto !== 0x0800 && proto !== 0x86dd && info.error === 0) {
      info.cls = PacketClass.nonIp;
      info.ipVersion = 0;
      info.etherType = proto;
    }
    return pktType;
  }
  parseRawIp(buf, off, len, info);
  return -1;
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
  bytes(): Uint8Array {
    const out = new Uint8Array(this.#size);
    let o = 0;
    for (const c of this.#chunks) {
      out.set(c, o);
      o += c.length;
    }
    return out;
  }
}
