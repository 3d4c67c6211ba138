/**
 * Creating a copy-on-write overlay on top of an image that is in use.
 *
 * @module
 */

import { dirname, relative, resolve } from "node:path";
import type { DiskImage } from "./disk_image.ts";
import { LiveOperationError } from "./errors.ts";
import { Qcow2Image } from "./qcow2.ts";
import { openImage } from "./chain.ts";
import type { SwitchableDevice } from "./switchable_device.ts";
import { RemoteLayer } from "./remote_layer.ts";

/** Options for {@link createOverlay}. */
export interface OverlayOptions {
  /** Cluster size of the overlay (default 64 KiB). */
  clusterSize?: number;
  /**
   * Backing name to store; default: the parent's path relative to the
   * overlay's folder, or a network parent's URL as it is (`RemoteLayer`).
   */
  backingName?: string;
  /** Whether closing the overlay closes the parent too (default false). */
  adoptParent?: boolean;
}

/**
 * Creates a qcow2 overlay at `path` whose backing file is `parent`, and opens
 * it reading through the very `parent` object in use, so writes that reached
 * the parent before the switch (even ones still in its metadata cache) are
 * what the overlay sees. Switch the writer with `SwitchableDevice.switchTo`.
 *
 * @example
 * ```ts
 * import { createOverlay } from "./overlay.ts";
 * import { createImage, openImage } from "./chain.ts";
 * const dir = await Deno.makeTempDir();
 * createImage(`${dir}/disk.raw`, { size: 1 << 20, format: "raw" }).closeSync();
 * const parent = openImage(`${dir}/disk.raw`);
 * const overlay = createOverlay(parent, `${dir}/disk.overlay.qcow2`, { adoptParent: true });
 * await overlay.close(); // closes the parent too (adoptParent)
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function createOverlay(
  parent: DiskImage,
  path: string,
  options: OverlayOptions = {},
): Qcow2Image {
  if (resolve(parent.path) === resolve(path)) {
    throw new LiveOperationError(`overlay '${path}' cannot replace its own parent`);
  }
  // Make the parent's metadata durable first: the overlay file names it, so a
  // crash right after this call must leave a parent QEMU can open.
  if (!parent.readOnly) parent.flushSync();
  const backingName = options.backingName ??
    (parent instanceof RemoteLayer
      ? parent.path
      : relative(dirname(resolve(path)), resolve(parent.path)));
  Qcow2Image.create(path, {
    size: parent.size,
    backingFile: backingName,
    backingFormat: parent.format,
    ...(options.clusterSize !== undefined ? { clusterSize: options.clusterSize } : {}),
  });
  return Qcow2Image.open(path, { backing: parent, ownsBacking: options.adoptParent ?? false });
}

/**
 * The checkpoint's disk step in one call: creates an overlay on `parent`
 * (the image `device` currently writes to) and atomically switches `device`
 * to it. From the moment this resolves, `parent` is frozen: it can be copied
 * (`copyParent`) or kept, and the overlay later committed into it.
 *
 * @example
 * ```ts
 * import { createImage, openImage, SwitchableDevice, switchToOverlay } from "./mod.ts";
 * const dir = await Deno.makeTempDir();
 * createImage(`${dir}/disk.qcow2`, { size: 1 << 20 }).closeSync();
 * const parent = openImage(`${dir}/disk.qcow2`);
 * const dev = new SwitchableDevice(parent);
 * const overlay = await switchToOverlay(dev, parent, `${dir}/disk.ckpt1.qcow2`);
 * await overlay.close();
 * await parent.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function switchToOverlay(
  device: SwitchableDevice,
  parent: DiskImage,
  path: string,
  options: OverlayOptions = {},
): Promise<Qcow2Image> {
  if (device.target !== parent) {
    throw new LiveOperationError(
      `the device does not write to '${parent.path}'; switch only from the image in use`,
    );
  }
  const overlay = createOverlay(parent, path, options);
  try {
    await device.switchTo(overlay);
  } catch (err) {
    overlay.closeSync();
    throw err;
  }
  return overlay;
}

/**
 * `arg` itself, or the qcow2 image (with its chain) opened from that path; a raw
 * image is refused because only overlays can `verb`.
 */
export function openQcow2Overlay(arg: Qcow2Image | string, verb: string): Qcow2Image {
  if (typeof arg !== "string") return arg;
  const img = openImage(arg);
  if (!(img instanceof Qcow2Image)) {
    img.closeSync();
    throw new LiveOperationError(`'${arg}' is a raw image; only qcow2 overlays ${verb}`);
  }
  return img;
}
