/**
 * One iSCSI TCP connection: the socket, the read loop that cuts the byte
 * stream into PDUs, and the output buffer the session encodes PDUs into.
 *
 * The read loop parses every complete PDU out of one large read and hands it
 * to the session in place (no copy); the payload of a large Data-In that has
 * not all arrived is read by the kernel straight into the caller's buffer.
 * PDUs are encoded straight into one of two output buffers, and everything
 * queued in the same microtask turn leaves in one socket write; new commands
 * wait until a quarter of those in flight (at most 8) can leave together, so
 * the target always holds the other three quarters (fewer writes and
 * wake-ups on both sides, and the target never runs dry: with 16 READs of
 * 128 KiB in flight, batches of 4 cost both sides less CPU per command than
 * one write per command; with 32 of 4 KiB, batches of 8 were best).
 *
 * @module
 */

import { IscsiConnectionError, IscsiProtocolError } from "./errors.ts";
import { MAX_ACCEPTED_SEGMENT } from "./iscsi_login.ts";
import {
  BHS_LEN,
  dataSegmentLength,
  OFF_AHS_LEN,
  OFF_BUFFER_OFFSET,
  OFF_ITT,
  OFF_OPCODE,
  OP_DATA_IN,
  OPCODE_MASK,
  padded,
} from "./iscsi_pdu.ts";

/** Microtask ticks the writer waits so a burst of new commands leaves in one write. */
const COALESCE_TICKS = 1;
/** Most bytes one socket read asks for; larger Data-In payloads are read in place. */
const READ_CHUNK = 64 << 10;
/** Data-In payloads at least this large are read straight into the caller's buffer. */
const DIRECT_MIN = 16 << 10;
/** The most new commands that wait for each other to leave in one write. */
const HOLD_BATCH = 8;
/** Initial size of each of the two output buffers (they grow for large writes). */
const OUT_INITIAL = 64 << 10;
/** Initial size of the input buffer. */
const IN_INITIAL = 2 * 262144 + BHS_LEN * 64;

/** What a connection hands its PDUs to: the session. */
export interface PduSink {
  /**
   * A complete PDU: its header at `off` of `buf` (seen through `v`), its data
   * segment of `dlen` bytes at `dataOff`. Valid only during the call. A throw
   * ends the connection (reported through {@link PduSink.lost}).
   */
  pdu(buf: Uint8Array, v: DataView, off: number, dataOff: number, dlen: number): void;
  /**
   * Where the `dlen`-byte payload of the Data-In for task `itt`, at buffer
   * offset `bufOff`, may be read in place: a slice of that read's buffer, or
   * undefined to take the ordinary path.
   */
  directTarget(itt: number, bufOff: number, dlen: number): Uint8Array | undefined;
  /** A Data-In whose payload was read into {@link PduSink.directTarget}'s slice. */
  placedDataIn(buf: Uint8Array, v: DataView, off: number, dlen: number): void;
  /** Commands issued and not yet complete (queued here, on the wire or at the target). */
  inFlight(): number;
  /** The connection failed (read, write, or a PDU the sink refused); never after {@link IscsiConnection.drop}. */
  lost(conn: IscsiConnection, cause: unknown): void;
}

/** A TCP connection to an iSCSI portal, with its read loop and output buffer. */
export class IscsiConnection {
  readonly #conn: Deno.TcpConn;
  readonly #sink: PduSink;
  /** Resolves when the read loop has ended. */
  readonly reader: Promise<void>;
  /** When the last bytes arrived (ms since the epoch). */
  lastRx: number = Date.now();
  #dropped = false;
  /** PDUs encoded and waiting for the next socket write. */
  #obuf: Uint8Array = new Uint8Array(OUT_INITIAL);
  #oview: DataView = new DataView(this.#obuf.buffer);
  #olen = 0;
  /** The other output buffer, free while no write is using it. */
  #spare: Uint8Array | undefined = new Uint8Array(OUT_INITIAL);
  #writing = false;
  /** PDUs of new commands (and their unsolicited data) in the output buffer that may wait. */
  #heldCmds = 0;
  /** Whether the output buffer holds a PDU that must not wait. */
  #urgent = false;

  private constructor(conn: Deno.TcpConn, sink: PduSink) {
    this.#conn = conn;
    this.#sink = sink;
    this.reader = this.#readLoop();
  }

  /** Connects to `host:port` (TCP_NODELAY) and starts reading PDUs into `sink`. */
  static async open(host: string, port: number, sink: PduSink): Promise<IscsiConnection> {
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: host, port, transport: "tcp" });
    } catch (err) {
      throw new IscsiConnectionError(
        `cannot connect to iSCSI portal ${host}:${port}: ${(err as Error).message}; ` +
          `is the target running and listening there?`,
        { cause: err },
      );
    }
    conn.setNoDelay(true);
    return new IscsiConnection(conn, sink);
  }

  /** Whether {@link drop} was called. */
  get dropped(): boolean {
    return this.#dropped;
  }

  /** Closes the socket; the read loop ends without reporting, queued output is discarded. */
  drop(): void {
    if (this.#dropped) return;
    this.#dropped = true;
    try {
      this.#conn.close();
    } catch (err) {
      if (!(err instanceof Deno.errors.BadResource)) throw err;
    }
  }

  // ------------------------------------------------------------------ output

  /** The output buffer; PDUs are written at offsets {@link reserve} returns. */
  get out(): Uint8Array {
    return this.#obuf;
  }

  /** A view of {@link out}. */
  get outView(): DataView {
    return this.#oview;
  }

  /**
   * Reserves `n` bytes at the end of the output buffer and returns their
   * offset; the caller writes a whole PDU there (`iscsi_pdu_build.ts`), then
   * calls {@link queued}.
   */
  reserve(n: number): number {
    const off = this.#olen;
    if (off + n > this.#obuf.length) {
      const bigger = new Uint8Array(Math.max(this.#obuf.length * 2, off + n));
      bigger.set(this.#obuf.subarray(0, off));
      this.#obuf = bigger;
      this.#oview = new DataView(bigger.buffer);
    }
    this.#olen = off + n;
    return off;
  }

  /**
   * Records that a PDU was written at the end of the output buffer and starts
   * a write if none is running. `hold` marks a new command (and its
   * unsolicited data), which may wait for more commands to join it while the
   * target still has plenty of work; anything else goes out at once.
   */
  queued(hold: boolean): void {
    if (hold) this.#heldCmds++;
    else this.#urgent = true;
    // A held command starts no write (an async call per command): the next
    // completion's release() or a later queued() sends it once it may not wait.
    if (!this.#writing && !this.#mayHold()) void this.#flush();
  }

  /** Copies a whole PDU into the output buffer and sends it at once. */
  send(pdu: Uint8Array): void {
    this.#obuf.set(pdu, this.reserve(pdu.length));
    this.queued(false);
  }

  /** Sends held commands if they no longer need to wait (a command completed). */
  release(): void {
    if (this.#heldCmds > 0 && !this.#writing && !this.#mayHold()) void this.#flush();
  }

  /**
   * Whether the queued output may wait for more commands: fewer than a
   * quarter of the commands in flight (at most {@link HOLD_BATCH}) are held,
   * so the target still works on the other three quarters meanwhile. With
   * fewer than 8 in flight nothing waits.
   */
  #mayHold(): boolean {
    return !this.#urgent && this.#heldCmds < Math.min(HOLD_BATCH, this.#sink.inFlight() >> 2);
  }

  async #flush(): Promise<void> {
    this.#writing = true;
    try {
      // Let commands issued in the same tick coalesce into one write; waiting
      // longer made the target's pipeline burstier and was not faster here.
      for (let i = 0; i < COALESCE_TICKS; i++) await Promise.resolve();
      while (this.#olen > 0 && !this.#dropped && !this.#mayHold()) {
        // Write this buffer; new PDUs go to the other one meanwhile.
        const sent = this.#obuf;
        const len = this.#olen;
        const next = this.#spare ?? new Uint8Array(OUT_INITIAL);
        this.#spare = undefined;
        this.#obuf = next;
        this.#oview = new DataView(next.buffer);
        this.#olen = 0;
        this.#heldCmds = 0;
        this.#urgent = false;
        let done = 0;
        while (done < len) done += await this.#conn.write(sent.subarray(done, len));
        this.#spare = sent;
      }
    } catch (err) {
      if (!this.#dropped) this.#sink.lost(this, err);
    } finally {
      this.#writing = false;
    }
  }

  // ------------------------------------------------------------------- input

  async #readLoop(): Promise<void> {
    const conn = this.#conn;
    let buf = new Uint8Array(IN_INITIAL);
    let view = new DataView(buf.buffer);
    let start = 0;
    let end = 0;
    let bigDataIn = false;
    let failure: unknown;
    try {
      for (;;) {
        if (end === buf.length) {
          if (start > 0) {
            buf.copyWithin(0, start, end);
            end -= start;
            start = 0;
          } else {
            const bigger = new Uint8Array(buf.length * 2);
            bigger.set(buf);
            buf = bigger;
            view = new DataView(buf.buffer);
          }
        }
        // After a large Data-In the next PDU is likely another: read just its
        // header so the payload can go straight to the caller's buffer.
        const want = end === 0 && bigDataIn ? BHS_LEN : READ_CHUNK;
        const n = await conn.read(buf.subarray(end, Math.min(buf.length, end + want)));
        if (n === null) throw new IscsiConnectionError("target closed the connection");
        end += n;
        this.lastRx = Date.now();
        while (end - start >= BHS_LEN) {
          const ahs = view.getUint8(start + OFF_AHS_LEN) * 4;
          const dlen = dataSegmentLength(view, start);
          if (dlen > MAX_ACCEPTED_SEGMENT) {
            throw new IscsiProtocolError(`target sent a ${dlen}-byte data segment; refusing`);
          }
          const total = BHS_LEN + ahs + padded(dlen);
          if (end - start < total) {
            if (this.#dropped) return;
            // A large Data-In whose payload has not all arrived: read the rest straight
            // into the caller's buffer, so the payload is copied once, by the kernel.
            const dst = ahs === 0 ? this.#directTarget(view, start, dlen) : undefined;
            bigDataIn = dst !== undefined;
            if (dst !== undefined) {
              const have = end - start - BHS_LEN;
              dst.set(buf.subarray(start + BHS_LEN, end));
              for (let got = have; got < dlen;) {
                const n = await conn.read(dst.subarray(got));
                if (n === null) throw new IscsiConnectionError("target closed the connection");
                got += n;
                this.lastRx = Date.now();
              }
              if (this.#dropped) return;
              this.#sink.placedDataIn(buf, view, start, dlen);
              start = end = 0;
              break;
            }
            if (total > buf.length - start) {
              if (total > buf.length) {
                const bigger = new Uint8Array(Math.max(total, buf.length * 2));
                bigger.set(buf.subarray(start, end));
                buf = bigger;
                view = new DataView(buf.buffer);
              } else {
                buf.copyWithin(0, start, end);
              }
              end -= start;
              start = 0;
            }
            break;
          }
          if (this.#dropped) return;
          this.#sink.pdu(buf, view, start, start + BHS_LEN + ahs, dlen);
          start += total;
        }
        if (start === end) start = end = 0;
      }
    } catch (err) {
      failure = err;
    }
    if (!this.#dropped) this.#sink.lost(this, failure);
  }

  /**
   * The slice of a read command's buffer that the (still arriving) payload of
   * the Data-In whose header is at `off` belongs in, or undefined to take the
   * ordinary path (small, unaligned, not a Data-In, unknown task, or out of
   * bounds: the ordinary path reports those).
   */
  #directTarget(v: DataView, off: number, dlen: number): Uint8Array | undefined {
    if (dlen < DIRECT_MIN || (dlen & 3) !== 0) return undefined;
    if ((v.getUint8(off + OFF_OPCODE) & OPCODE_MASK) !== OP_DATA_IN) return undefined;
    return this.#sink.directTarget(
      v.getUint32(off + OFF_ITT),
      v.getUint32(off + OFF_BUFFER_OFFSET),
      dlen,
    );
  }
}
