/**
 * Copying an image (through its whole chain) to a new, self-contained file
 * in the background: the "copy the parent for retention" step of a live
 * checkpoint.
 *
 * @module
 */

import { chainLayerAt, createImage, type ImageFormat, openImage } from "./chain.ts";
import type { DiskImage } from "./disk_image.ts";
import { CowError } from "./errors.ts";
import { type BackgroundOptions, isZero, Pacer } from "./progress.ts";

/** Options for {@link copyParent}. */
export interface CopyOptions extends BackgroundOptions {
  /** Format of the copy (default qcow2). */
  format?: ImageFormat;
  /** Cluster size when the copy is qcow2 (default 64 KiB). */
  clusterSize?: number;
  /** Open a source given by path with force-share (it may be in use by a writer). */
  forceShare?: boolean;
}

/** What {@link copyParent} did. */
export interface CopyResult {
  /** Virtual size copied. */
  size: number;
  /** Bytes written to the copy (all-zero chunks are left sparse). */
  written: number;
}

/**
 * Copies what `src` reads as (flattening its chain) into a new image at
 * `dst`, chunk by chunk, yielding to the event loop between chunks and
 * keeping under `bandwidth`. `src` should no longer be written (after a
 * checkpoint switch the parent is read-only); a source that is written
 * meanwhile yields a copy that is not point-in-time.
 *
 * A `dst` that is the source itself (by any name: symlink, hard link) or
 * any file of its backing chain is refused before anything is opened for
 * writing.
 *
 * @example
 * ```ts
 * import { createImage } from "./chain.ts";
 * import { copyParent } from "./copy_parent.ts";
 * const dir = await Deno.makeTempDir();
 * createImage(`${dir}/disk.raw`, { size: 1 << 20, format: "raw" }).closeSync();
 * await copyParent(`${dir}/disk.raw`, `${dir}/disk.copy.qcow2`, {
 *   bandwidth: 100 << 20,
 *   onProgress: ({ done, total }) => console.error(`${done}/${total}`),
 * });
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function copyParent(
  src: DiskImage | string,
  dst: string,
  options: CopyOptions = {},
): Promise<CopyResult> {
  const source = typeof src === "string"
    ? openImage(src, { readOnly: true, ...(options.forceShare ? { forceShare: true } : {}) })
    : src;
  try {
    const hit = chainLayerAt(source, dst);
    if (hit === source) {
      throw new CowError(
        `refusing to copy '${source.path}' onto '${dst}': it is the same file as the source`,
      );
    }
    if (hit !== null) {
      throw new CowError(
        `refusing to copy '${source.path}' onto '${dst}': it is '${hit.path}', a file of the ` +
          `source's backing chain`,
      );
    }
    const size = source.size;
    const out = createImage(dst, {
      size,
      format: options.format ?? "qcow2",
      ...(options.clusterSize !== undefined ? { clusterSize: options.clusterSize } : {}),
    });
    let written = 0;
    try {
      const pacer = new Pacer(options);
      const chunk = options.chunkSize ?? 1 << 20;
      const buf = new Uint8Array(chunk);
      options.onProgress?.({ done: 0, total: size });
      for (let off = 0; off < size; off += chunk) {
        const n = Math.min(chunk, size - off);
        const part = n === chunk ? buf : buf.subarray(0, n);
        source.readSync(off, part);
        if (!isZero(part)) {
          out.writeSync(off, part);
          written += n;
        }
        options.onProgress?.({ done: off + n, total: size });
        await pacer.step(n);
      }
      out.flushSync();
    } finally {
      out.closeSync();
    }
    return { size, written };
  } finally {
    if (typeof src === "string") source.closeSync();
  }
}
