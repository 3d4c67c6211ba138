/**
 * Replays a capture through a {@link NetGuard}, using the capture's own
 * timestamps as the clock, so a replay reaches the same decisions as the
 * live traffic it recorded: from an in-memory index ({@link replayCapture})
 * or from a stream of any size ({@link replayCaptureStream}).
 *
 * Timestamps that go backwards (clock steps, merged captures, hostile files)
 * are held at the latest time seen, so time never runs backwards and no
 * duration is negative; they are counted in `outOfOrder`.
 *
 * @module
 */

import { readCaptureStream } from "./capture_stream.ts";
import type { Direction } from "./config.ts";
import type { NetGuard } from "./guard.ts";
import { type Capture, forEachRecord } from "./pcap.ts";
import type { CaptureSummaryInfo } from "./pcap_decoder.ts";

/** How to attribute the frames of a capture. */
export interface ReplayOptions {
  /** All frames belong to this VM (e.g. a capture of its TAP); else VMs are found by address. */
  vm?: string;
  /** Direction of every frame when `vm` is set (default inbound: a TAP capture). */
  direction?: Direction;
  /** Interface name to report. */
  iface?: string;
  /**
   * After the last frame, let this many ms pass so attacks clear and held
   * VMs resume; default: window + clear time + hold time + 100 ms. 0 keeps the clock.
   */
  drainMs?: number;
}

/** What a replay read. */
export interface ReplayResult extends CaptureSummaryInfo {
  /** Records whose timestamp was earlier than one before them (replayed at the latest time). */
  outOfOrder: number;
}

/** Feeds records to a guard one at a time; {@link CaptureReplay.finish} lets the clock run out. */
export class CaptureReplay {
  /** Records fed so far. */
  records = 0;
  /** Records whose timestamp went backwards. */
  outOfOrder = 0;
  /** Earliest and latest timestamps seen (ms); +Infinity/-Infinity before any record. */
  firstTs: number = Infinity;
  /** Latest timestamp seen (ms). */
  lastTs: number = -Infinity;
  readonly #guard: NetGuard;
  readonly #options: ReplayOptions;

  /** Creates a replay into `guard`. */
  constructor(guard: NetGuard, options: ReplayOptions = {}) {
    this.#guard = guard;
    this.#options = options;
  }

  /** Feeds one record (a {@link RecordHandler}); returns the timestamp it was replayed at. */
  readonly record = (
    buf: Uint8Array,
    off: number,
    len: number,
    wireLen: number,
    tsMs: number,
    link: number,
  ): number => {
    let ts = tsMs;
    if (ts < this.lastTs) {
      this.outOfOrder++;
      ts = this.lastTs;
    } else this.lastTs = ts;
    if (ts < this.firstTs) this.firstTs = ts;
    this.records++;
    const o = this.#options;
    const iface = o.iface ?? "";
    if (o.vm !== undefined) {
      this.#guard.ingest(o.vm, o.direction ?? "inbound", iface, buf, off, len, wireLen, ts, link);
    } else this.#guard.ingestHost(buf, off, len, wireLen, ts, link, -1, iface);
    return ts;
  };

  /** Lets the drain time pass after the last record, so attacks clear and VMs resume. */
  finish(): void {
    const guard = this.#guard;
    const c = guard.config;
    const drain = this.#options.drainMs ??
      c.detector.windowMs + c.detector.clearForMs + c.policy.holdMs + 100;
    if (drain <= 0 || this.records === 0) return;
    const end = this.lastTs + drain;
    // Step so that clears and resumes happen at their own times, not all at the end.
    for (let t = guard.now + c.detector.bucketMs; t < end; t += c.detector.bucketMs) {
      guard.advance(t);
    }
    guard.advance(end);
  }
}

/** Feeds every record of `cap` to `guard`; returns the number of records. */
export function replayCapture(guard: NetGuard, cap: Capture, options: ReplayOptions = {}): number {
  const r = new CaptureReplay(guard, options);
  forEachRecord(cap, r.record);
  r.finish();
  return cap.count;
}

/**
 * Feeds every record of a pcap or pcapng stream to `guard`, with bounded
 * memory whatever its size; stops at the first bad record.
 *
 * @throws {CaptureFormatError} on a record that cannot be read (records before it were replayed).
 */
export async function replayCaptureStream(
  guard: NetGuard,
  stream: ReadableStream<Uint8Array>,
  options: ReplayOptions & { source?: string } = {},
): Promise<ReplayResult> {
  const r = new CaptureReplay(guard, options);
  const info = await readCaptureStream(stream, r.record, { source: options.source ?? "<stream>" });
  r.finish();
  return { ...info, outOfOrder: r.outOfOrder };
}
