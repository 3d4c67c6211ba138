/**
 * Replays a capture (see {@link readCapture}) through a {@link NetGuard},
 * using the capture's own timestamps as the clock, so a replay reaches the
 * same decisions as the live traffic it recorded.
 *
 * @module
 */

import type { Direction } from "./config.ts";
import type { NetGuard } from "./guard.ts";
import type { Capture } from "./pcap.ts";

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

/** Feeds every record of `cap` to `guard`; returns the number of records. */
export function replayCapture(guard: NetGuard, cap: Capture, options: ReplayOptions = {}): number {
  const iface = options.iface ?? "";
  const { buf, offsets, lengths, origLengths, tsMs, linkTypes } = cap;
  if (options.vm !== undefined) {
    const vm = options.vm;
    const dir = options.direction ?? "inbound";
    for (let i = 0; i < cap.count; i++) {
      guard.ingest(
        vm,
        dir,
        iface,
        buf,
        offsets[i] ?? 0,
        lengths[i] ?? 0,
        origLengths[i] ?? 0,
        tsMs[i] ?? 0,
        linkTypes[i] ?? 1,
      );
    }
  } else {
    for (let i = 0; i < cap.count; i++) {
      guard.ingestHost(
        buf,
        offsets[i] ?? 0,
        lengths[i] ?? 0,
        origLengths[i] ?? 0,
        tsMs[i] ?? 0,
        linkTypes[i] ?? 1,
        -1,
        iface,
      );
    }
  }
  const c = guard.config;
  const drain = options.drainMs ??
    c.detector.windowMs + c.detector.clearForMs + c.policy.holdMs + 100;
  if (drain > 0 && cap.count > 0) {
    const end = (tsMs[cap.count - 1] ?? 0) + drain;
    // Step so that clears and resumes happen at their own times, not all at the end.
    for (let t = guard.now + c.detector.bucketMs; t < end; t += c.detector.bucketMs) {
      guard.advance(t);
    }
    guard.advance(end);
  }
  return cap.count;
}
