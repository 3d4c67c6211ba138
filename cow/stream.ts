/**
 * Streaming: pulling the data of backing layers up into the overlay, then
 * dropping those layers from the chain (QEMU's block-stream).
 *
 * @module
 */

import { dirname, relative, resolve } from "node:path";
import { openImage } from "./chain.ts";
import type { DiskImage } from "./disk_image.ts";
import { LiveOperationError } from "./errors.ts";
import { type BackgroundOptions, isZero, Pacer } from "./progress.ts";
import type { Qcow2Image } from "./qcow2.ts";
import { openQcow2Overlay } from "./overlay.ts";

/** Options for {@link stream}. */
export interface StreamOptions extends BackgroundOptions {
  /** Keep this layer (a path in the chain) as the new backing file; default: none. */
  base?: string;
}

/** What {@link stream} did. */
export interface StreamResult {
  /** Bytes written into the overlay. */
  copied: number;
  /** The new backing file name stored in the overlay, or null. */
  backingFile: string | null;
}

function realPath(path: string): string {
  return Deno.realPathSync(path);
}

/**
 * Copies into `overlay` every cluster it does not have but a layer above
 * `base` does, then rewrites its header to name `base` (or nothing). Each
 * cluster is pulled synchronously and only if the overlay still lacks it,
 * so a live writer using the overlay meanwhile is never overwritten.
 *
 * @example
 * ```ts
 * import { stream } from "./stream.ts";
 * await stream("/tmp/top.qcow2"); // top.qcow2 no longer needs its parents
 * ```
 */
export async function stream(
  overlayArg: Qcow2Image | string,
  options: StreamOptions = {},
): Promise<StreamResult> {
  const overlay = openQcow2Overlay(overlayArg, "stream");
  try {
    const layers: DiskImage[] = [];
    let base: DiskImage | null = null;
    const baseReal = options.base !== undefined ? realPath(options.base) : null;
    for (let d = overlay.backing; d !== null; d = d.backing) {
      if (baseReal !== null && realPath(d.path) === baseReal) {
        base = d;
        break;
      }
      layers.push(d);
    }
    if (baseReal !== null && base === null) {
      throw new LiveOperationError(
        `'${options.base}' is not in the backing chain of '${overlay.path}'`,
      );
    }
    const size = overlay.size;
    const cs = overlay.clusterSize;
    const buf = new Uint8Array(cs);
    const pacer = new Pacer(options);
    let copied = 0;
    let paced = 0;
    let steps = 0;
    options.onProgress?.({ done: 0, total: size });
    for (let off = 0; off < size;) {
      let adv: number;
      const st = overlay.blockStatus(off, size - off);
      if (st.kind !== "unallocated") {
        adv = st.length;
      } else {
        // Skip what no layer above the base has; pull clusters one by one where one does.
        const free = unallocatedAbove(layers, off, st.length);
        adv = Math.floor((off + free) / cs) * cs - off;
        if (adv <= 0) {
          const n = Math.min(cs, size - off);
          copied += pullCluster(
            overlay,
            layers,
            base !== null,
            off,
            n === cs ? buf : buf.subarray(0, n),
          );
          adv = n;
        }
      }
      off += adv;
      if (++steps % 16 === 0 || adv > cs || off >= size) {
        options.onProgress?.({ done: off, total: size });
        await pacer.step(copied - paced);
        paced = copied;
      }
    }
    overlay.flushSync();
    let name: { file: string; format: "raw" | "qcow2" } | null = null;
    let newBacking: DiskImage | null = null;
    if (base !== null) {
      name = {
        file: relative(dirname(resolve(overlay.path)), resolve(base.path)),
        format: base.format,
      };
      newBacking = openImage(base.path, { readOnly: true, format: base.format });
    }
    overlay.setBacking(newBacking, name, true);
    return { copied, backingFile: name?.file ?? null };
  } finally {
    if (typeof overlayArg === "string") overlay.closeSync();
  }
}

/**
 * Bytes from `off` (up to `max`) in which no layer of `layers` allocates
 * anything: 0 when one has data or zeros at `off`.
 */
function unallocatedAbove(layers: DiskImage[], off: number, max: number): number {
  let run = max;
  for (const l of layers) {
    if (off >= l.size) continue;
    const lim = Math.min(run, l.size - off);
    const st = l.blockStatus(off, lim);
    if (st.kind !== "unallocated") return 0;
    if (st.length < lim) run = st.length;
  }
  return run;
}

/** Pulls one cluster up if the overlay lacks it and a layer above the base has it. */
function pullCluster(
  overlay: Qcow2Image,
  layers: DiskImage[],
  keepBase: boolean,
  off: number,
  buf: Uint8Array,
): number {
  if (overlay.blockStatus(off, buf.length).kind !== "unallocated") return 0;
  let above = false;
  for (const l of layers) {
    if (off >= l.size) continue;
    if (l.blockStatus(off, Math.min(buf.length, l.size - off)).kind !== "unallocated") {
      above = true;
      break;
    }
  }
  if (!above) return 0;
  overlay.readSync(off, buf);
  if (isZero(buf)) {
    if (keepBase) overlay.discardSync(off, buf.length);
    return 0;
  }
  overlay.writeSync(off, buf);
  return buf.length;
}
