/**
 * The one pcap/pcapng parser: an incremental decoder fed chunks of any size
 * (a whole file, or what a `ReadableStream` yields) that hands every record
 * to a callback. Records that lie whole inside a chunk are passed in place
 * (zero-copy); only a record cut by a chunk boundary is copied, into one
 * carry buffer no larger than the largest record allowed, so memory stays
 * bounded whatever the capture's size.
 *
 * Classic pcap: a 24-byte file header (magic, version 2.x, snaplen, link
 * type), then records of a 16-byte header (seconds, micro- or nanoseconds,
 * captured length, original length) and the data. pcapng: blocks of type,
 * total length, body, total length; section header (byte-order magic),
 * interface description (link type, `if_tsresol`), enhanced and simple
 * packet blocks; other blocks are skipped.
 *
 * @module
 */

import { CaptureFormatError } from "./errors.ts";

/** Link type of BSD loopback (`lo0` on macOS and the BSDs): a 4-byte address family, host order. */
export const LINKTYPE_NULL = 0;
/** Link type of Ethernet frames. */
export const LINKTYPE_ETHERNET = 1;
/** Link type of raw IP packets (version from the first nibble). */
export const LINKTYPE_RAW = 101;
/** Link type of Linux "cooked" captures (`tcpdump -i any`, v1). */
export const LINKTYPE_LINUX_SLL = 113;
/** Link type of OpenBSD loopback: a 4-byte address family, network order. */
export const LINKTYPE_LOOP = 108;
/** Link type of raw IPv4 packets. */
export const LINKTYPE_IPV4 = 228;
/** Link type of raw IPv6 packets. */
export const LINKTYPE_IPV6 = 229;
/** Link type of Linux "cooked" captures, v2. */
export const LINKTYPE_LINUX_SLL2 = 276;

const SUPPORTED_LINKTYPES: ReadonlySet<number> = new Set([
  LINKTYPE_NULL,
  LINKTYPE_LOOP,
  LINKTYPE_ETHERNET,
  LINKTYPE_RAW,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_IPV4,
  LINKTYPE_IPV6,
  LINKTYPE_LINUX_SLL2,
]);

/** Largest record accepted; anything larger is a corrupt or hostile file. */
export const MAX_RECORD_LEN: number = 256 * 1024;

// Classic pcap: 24-byte file header, 16-byte record header.
/** Magic of a microsecond pcap. */
export const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
/** Bytes of the pcap file header. */
export const PCAP_FILE_HEADER = 24;
/** Offset of the major version in the pcap file header. */
export const PCAP_OFF_VERSION_MAJOR = 4;
/** Offset of the minor version in the pcap file header. */
export const PCAP_OFF_VERSION_MINOR = 6;
/** Offset of the snap length in the pcap file header. */
export const PCAP_OFF_SNAPLEN = 16;
/** Offset of the link type in the pcap file header. */
export const PCAP_OFF_LINKTYPE = 20;
/** Bytes of a pcap record header. */
export const PCAP_RECORD_HEADER = 16;
/** Offset of the seconds in a pcap record header. */
export const REC_OFF_TS_SEC = 0;
/** Offset of the sub-second part in a pcap record header. */
export const REC_OFF_TS_FRAC = 4;
/** Offset of the captured length in a pcap record header. */
export const REC_OFF_CAPLEN = 8;
/** Offset of the original length in a pcap record header. */
export const REC_OFF_ORIGLEN = 12;

// pcapng: blocks of type, total length, body, total length.
const PCAPNG_SHB = 0x0a0d0d0a;
const PCAPNG_IDB = 0x00000001;
const PCAPNG_SPB = 0x00000003;
const PCAPNG_EPB = 0x00000006;
const PCAPNG_BYTE_ORDER_MAGIC = 0x1a2b3c4d;
const PCAPNG_BLOCK_MIN = 12;
const PCAPNG_BLOCK_MAX = MAX_RECORD_LEN + 64;
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
const MAGIC_LEN = 4;

/**
 * Called per record: its data is `buf[off, off+len)` (valid only during the
 * call), `wireLen` its length on the wire, `tsMs` its timestamp (ms since the
 * epoch, as in the file) and `link` its link type.
 */
export type RecordHandler = (
  buf: Uint8Array,
  off: number,
  len: number,
  wireLen: number,
  tsMs: number,
  link: number,
) => void;

/** What a decoder saw, once the input ended. */
export interface CaptureSummaryInfo {
  /** "pcap" or "pcapng". */
  format: "pcap" | "pcapng";
  /** Records handed to the callback. */
  records: number;
  /** Bytes of input. */
  bytes: number;
  /** True when the input ended inside a record (a capture cut short); that record is dropped. */
  truncatedTail: boolean;
}

const State = { detect: 0, pcapHeader: 1, pcapRecord: 2, pcapng: 3 } as const;

function checkLinkType(source: string, link: number): void {
  if (!SUPPORTED_LINKTYPES.has(link)) {
    throw new CaptureFormatError(
      source,
      `unknown link type ${link}; netguard reads Ethernet (1), raw IP (101, 228, 229), ` +
        `Linux cooked (113, 276) and BSD loopback (0, 108) captures`,
    );
  }
}

/**
 * An incremental pcap/pcapng decoder. Feed it with {@link CaptureDecoder.push}
 * and call {@link CaptureDecoder.end} when the input ends.
 *
 * @example
 * ```ts
 * import { CaptureDecoder, PcapWriter } from "./mod.ts";
 * const w = new PcapWriter();
 * w.write(new Uint8Array(60), 1_700_000_000_000);
 * const bytes = w.bytes();
 * const dec = new CaptureDecoder("example");
 * let n = 0;
 * // Any split works: here one byte at a time.
 * for (let i = 0; i < bytes.length; i++) dec.push(bytes.subarray(i, i + 1), () => n++);
 * console.log(n, dec.end().truncatedTail); // 1 false
 * ```
 */
export class CaptureDecoder {
  /** Name of the input, for error messages. */
  readonly source: string;
  #state: number = State.detect;
  #carry = new Uint8Array(0);
  #carryView = new DataView(this.#carry.buffer);
  #carryLen = 0;
  /** Input offset of the next unit (file header, record or block). */
  #pos = 0;
  /** Whether the last `#need` returned the whole unit's size (not just its header's). */
  #final = false;
  #le = true;
  #frac = 1e-3;
  #link = LINKTYPE_ETHERNET;
  #ifLink: number[] = [];
  #ifUnitMs: number[] = [];
  #format: "pcap" | "pcapng" = "pcap";
  #records = 0;

  /** Creates a decoder; `source` names the input in errors. */
  constructor(source = "<memory>") {
    this.source = source;
  }

  /**
   * Decodes `chunk`, calling `onRecord` for every record it completes.
   *
   * @throws {CaptureFormatError} at the first bad header, length or block;
   * the decoder is unusable afterwards.
   */
  push(chunk: Uint8Array, onRecord: RecordHandler): void {
    let off = 0;
    // First complete a unit cut by the previous chunk's end.
    while (this.#carryLen > 0) {
      const n = this.#need(this.#carryView, 0, this.#carryLen);
      if (this.#carryLen < n) {
        const take = Math.min(n - this.#carryLen, chunk.length - off);
        this.#append(chunk.subarray(off, off + take));
        off += take;
        if (this.#carryLen < n) return;
        continue;
      }
      if (!this.#final) continue;
      this.#carryLen = 0;
      this.#unit(this.#carry, this.#carryView, 0, n, onRecord);
    }
    // Then every unit that lies whole in the chunk, in place.
    const v = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.#state === State.pcapRecord) off = this.#pcapRecords(chunk, v, off, onRecord);
    for (;;) {
      const avail = chunk.length - off;
      if (avail === 0) return;
      let n = this.#need(v, off, avail);
      if (avail < n) break;
      if (!this.#final) {
        n = this.#need(v, off, avail);
        if (avail < n) break;
      }
      this.#unit(chunk, v, off, n, onRecord);
      off += n;
    }
    this.#append(chunk.subarray(off));
  }

  /**
   * The hot loop of classic pcap: every whole record of `chunk` from `off`,
   * with nothing but the header reads; returns where it stopped.
   */
  #pcapRecords(chunk: Uint8Array, v: DataView, off: number, onRecord: RecordHandler): number {
    const le = this.#le;
    const frac = this.#frac;
    const link = this.#link;
    const len = chunk.length;
    let o = off;
    while (len - o >= PCAP_RECORD_HEADER) {
      const cap = v.getUint32(o + REC_OFF_CAPLEN, le);
      if (cap > MAX_RECORD_LEN) break; // #need reports it with the record's offset
      const n = PCAP_RECORD_HEADER + cap;
      if (len - o < n) break;
      const orig = v.getUint32(o + REC_OFF_ORIGLEN, le);
      const ts = v.getUint32(o + REC_OFF_TS_SEC, le) * 1000 +
        v.getUint32(o + REC_OFF_TS_FRAC, le) * frac;
      this.#records++;
      this.#pos += n;
      onRecord(chunk, o + PCAP_RECORD_HEADER, cap, orig < cap ? cap : orig, ts, link);
      o += n;
    }
    return o;
  }

  /**
   * Ends the input: returns what was read.
   *
   * @throws {CaptureFormatError} when the input was too short to be a capture.
   */
  end(): CaptureSummaryInfo {
    if (this.#state === State.detect) {
      throw new CaptureFormatError(this.source, "file is too short to be a capture");
    }
    if (this.#state === State.pcapHeader) {
      throw new CaptureFormatError(this.source, "file is shorter than a pcap header (24 bytes)");
    }
    return {
      format: this.#format,
      records: this.#records,
      bytes: this.#pos + this.#carryLen,
      truncatedTail: this.#carryLen > 0,
    };
  }

  #append(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const want = this.#carryLen + bytes.length;
    if (want > this.#carry.length) {
      // Bounded: #need validated the unit's length before asking for its bytes.
      const next = new Uint8Array(Math.max(want, Math.min(this.#carry.length * 2, 1 << 20), 256));
      next.set(this.#carry.subarray(0, this.#carryLen));
      this.#carry = next;
      this.#carryView = new DataView(next.buffer);
    }
    this.#carry.set(bytes, this.#carryLen);
    this.#carryLen = want;
  }

  #fail(detail: string): never {
    throw new CaptureFormatError(this.source, detail);
  }

  /**
   * Bytes the unit at `v[off]` needs: its header's size while fewer than
   * that are available (`#final` false), else its whole size (`#final` true).
   * Validates lengths, so nothing larger than a record is ever buffered.
   */
  #need(v: DataView, off: number, avail: number): number {
    this.#final = false;
    switch (this.#state) {
      case State.detect: {
        if (avail < MAGIC_LEN) return MAGIC_LEN;
        if (v.getUint32(off, false) === PCAPNG_SHB) {
          this.#state = State.pcapng;
          this.#format = "pcapng";
        } else this.#state = State.pcapHeader;
        return this.#need(v, off, avail);
      }
      case State.pcapHeader:
        this.#final = avail >= PCAP_FILE_HEADER;
        return PCAP_FILE_HEADER;
      case State.pcapRecord: {
        if (avail < PCAP_RECORD_HEADER) return PCAP_RECORD_HEADER;
        const cap = v.getUint32(off + REC_OFF_CAPLEN, this.#le);
        if (cap > MAX_RECORD_LEN) {
          this.#fail(
            `record at byte ${this.#pos} claims ${cap} bytes (limit ${MAX_RECORD_LEN}); ` +
              `the file is corrupt`,
          );
        }
        this.#final = true;
        return PCAP_RECORD_HEADER + cap;
      }
      default: {
        if (avail < PCAPNG_BLOCK_MIN) return PCAPNG_BLOCK_MIN;
        if (v.getUint32(off, false) === PCAPNG_SHB) {
          if (v.getUint32(off + SHB_OFF_BOM, true) === PCAPNG_BYTE_ORDER_MAGIC) this.#le = true;
          else if (v.getUint32(off + SHB_OFF_BOM, false) === PCAPNG_BYTE_ORDER_MAGIC) {
            this.#le = false;
          } else this.#fail(`pcapng section at byte ${this.#pos} has a bad byte-order magic`);
        }
        const len = v.getUint32(off + 4, this.#le);
        if (len < PCAPNG_BLOCK_MIN || len % 4 !== 0 || len > PCAPNG_BLOCK_MAX) {
          this.#fail(`pcapng block at byte ${this.#pos} has a bad length ${len}`);
        }
        this.#final = true;
        return len;
      }
    }
  }

  /** Handles one whole unit of `n` bytes at `buf[off]` (`v` views all of `buf`). */
  #unit(buf: Uint8Array, v: DataView, off: number, n: number, onRecord: RecordHandler): void {
    if (this.#state === State.pcapRecord) {
      const le = this.#le;
      const cap = n - PCAP_RECORD_HEADER;
      const orig = v.getUint32(off + REC_OFF_ORIGLEN, le);
      const ts = v.getUint32(off + REC_OFF_TS_SEC, le) * 1000 +
        v.getUint32(off + REC_OFF_TS_FRAC, le) * this.#frac;
      this.#records++;
      this.#pos += n;
      onRecord(buf, off + PCAP_RECORD_HEADER, cap, orig < cap ? cap : orig, ts, this.#link);
      return;
    }
    if (this.#state === State.pcapHeader) {
      this.#pcapHeader(new DataView(buf.buffer, buf.byteOffset + off, n));
    } else this.#block(buf, v, off, n, onRecord);
    this.#pos += n;
  }

  #pcapHeader(v: DataView): void {
    let le: boolean;
    let nanos: boolean;
    const magicLe = v.getUint32(0, true);
    if (magicLe === PCAP_MAGIC_US || magicLe === PCAP_MAGIC_NS) {
      le = true;
      nanos = magicLe === PCAP_MAGIC_NS;
    } else {
      const magicBe = v.getUint32(0, false);
      if (magicBe !== PCAP_MAGIC_US && magicBe !== PCAP_MAGIC_NS) {
        this.#fail(
          `not a pcap or pcapng file (magic 0x${magicBe.toString(16).padStart(8, "0")})`,
        );
      }
      le = false;
      nanos = magicBe === PCAP_MAGIC_NS;
    }
    const major = v.getUint16(PCAP_OFF_VERSION_MAJOR, le);
    if (major !== 2) {
      this.#fail(`unsupported pcap version ${major}.${v.getUint16(PCAP_OFF_VERSION_MINOR, le)}`);
    }
    // The upper bits of the link-type field carry FCS information; the type is the low 16 bits.
    const link = v.getUint32(PCAP_OFF_LINKTYPE, le) & 0xffff;
    checkLinkType(this.source, link);
    this.#le = le;
    this.#frac = nanos ? 1e-6 : 1e-3;
    this.#link = link;
    this.#state = State.pcapRecord;
  }

  /** Handles a pcapng block of `len` bytes at `buf[o]` (`v` views all of `buf`). */
  #block(buf: Uint8Array, v: DataView, o: number, len: number, onRecord: RecordHandler): void {
    const le = this.#le;
    const p = this.#pos;
    const type = v.getUint32(o, le);
    if (v.getUint32(o + len - 4, le) !== len) {
      this.#fail(`pcapng block at byte ${p}: trailing length does not match ${len}`);
    }
    const bodyEnd = len - 4;
    if (type === PCAPNG_SHB) {
      this.#ifLink = [];
      this.#ifUnitMs = [];
    } else if (type === PCAPNG_IDB) {
      if (IDB_OFF_OPTIONS > bodyEnd) this.#fail(`pcapng interface block at byte ${p} is too short`);
      const link = v.getUint16(o + IDB_OFF_LINKTYPE, le);
      checkLinkType(this.source, link);
      this.#ifLink.push(link);
      this.#ifUnitMs.push(idbUnitMs(v, o + IDB_OFF_OPTIONS, o + bodyEnd, le));
    } else if (type === PCAPNG_EPB) {
      if (EPB_OFF_DATA > bodyEnd) this.#fail(`pcapng packet block at byte ${p} is too short`);
      const iface = v.getUint32(o + EPB_OFF_IFACE, le);
      const link = this.#ifLink[iface];
      const unit = this.#ifUnitMs[iface];
      if (link === undefined || unit === undefined) {
        this.#fail(`pcapng packet at byte ${p} names undeclared interface ${iface}`);
      }
      const cap = v.getUint32(o + EPB_OFF_CAPLEN, le);
      const orig = v.getUint32(o + EPB_OFF_ORIGLEN, le);
      if (EPB_OFF_DATA + cap > bodyEnd) this.#fail(`pcapng packet at byte ${p} overruns its block`);
      const ts = (v.getUint32(o + EPB_OFF_TS_HIGH, le) * 4294967296 +
        v.getUint32(o + EPB_OFF_TS_LOW, le)) * unit;
      this.#records++;
      onRecord(buf, o + EPB_OFF_DATA, cap, orig < cap ? cap : orig, ts, link);
    } else if (type === PCAPNG_SPB) {
      const link = this.#ifLink[0];
      if (link === undefined) this.#fail(`pcapng simple packet at byte ${p} before any interface`);
      const room = bodyEnd - SPB_OFF_DATA;
      if (room < 0) this.#fail(`pcapng simple packet block at byte ${p} is too short`);
      const orig = v.getUint32(o + SPB_OFF_ORIGLEN, le);
      this.#records++;
      onRecord(buf, o + SPB_OFF_DATA, orig < room ? orig : room, orig, 0, link);
    }
  }
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
