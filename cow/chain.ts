/**
 * Opening and creating images with their backing chains: format probing,
 * relative and absolute backing names, the backing-format extension, loop
 * and missing-parent detection.
 *
 * @module
 */

import { dirname, isAbsolute, resolve } from "node:path";
import type { DiskImage } from "./disk_image.ts";
import { BackingChainError, CowError } from "./errors.ts";
import type { FaultInjector } from "./file_io.ts";
import { Qcow2Image } from "./qcow2.ts";
import { QCOW2_MAGIC } from "./qcow2_format.ts";
import { RawImage } from "./raw.ts";

/** A disk image format vmkit reads. */
export type ImageFormat = "raw" | "qcow2";

/** Options for {@link openImage}. */
export interface OpenImageOptions {
  /** Open the top image read-only (backing images are always read-only). */
  readOnly?: boolean;
  /** Skip probing and use this format for the top image. */
  format?: ImageFormat;
  /** Fault injection for the top image (crash tests). */
  faults?: FaultInjector;
  /** Do not open backing files; unallocated clusters read as zeros (for info/check). */
  noBacking?: boolean;
}

/** Reads the first bytes of `path` and returns its format ("raw" unless qcow2 magic). */
export function probeFormat(path: string): ImageFormat {
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new BackingChainError(`image '${path}' does not exist`);
    }
    throw new CowError(`cannot open '${path}': ${(err as Error).message}`, { cause: err });
  }
  try {
    const head = new Uint8Array(4);
    const n = file.readSync(head);
    if (n === 4 && new DataView(head.buffer).getUint32(0, false) === QCOW2_MAGIC) return "qcow2";
    return "raw";
  } finally {
    file.close();
  }
}

/** Resolves a backing name stored in `imagePath` the way QEMU does (relative to its folder). */
export function resolveBackingPath(imagePath: string, name: string): string {
  return isAbsolute(name) ? name : resolve(dirname(imagePath), name);
}

function realPath(path: string): string {
  try {
    return Deno.realPathSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return resolve(path);
    throw err;
  }
}

/**
 * Opens `path` and its whole backing chain (any depth). Backing files are
 * opened read-only and owned by the image above them, so closing the top
 * closes the chain.
 *
 * @example
 * ```ts
 * import { createImage, openImage } from "./chain.ts";
 * const dir = await Deno.makeTempDir();
 * createImage(`${dir}/overlay.qcow2`, { size: 1 << 20 }).closeSync();
 * const disk = openImage(`${dir}/overlay.qcow2`);
 * const buf = new Uint8Array(4096);
 * await disk.read(0, buf);
 * await disk.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function openImage(path: string, options: OpenImageOptions = {}): DiskImage {
  const seen = new Set<string>();
  return openLayer(path, options.format, options, seen, null, true);
}

function openLayer(
  path: string,
  format: ImageFormat | undefined,
  options: OpenImageOptions,
  seen: Set<string>,
  child: string | null,
  top: boolean,
): DiskImage {
  const real = realPath(path);
  if (seen.has(real)) {
    throw new BackingChainError(
      `backing chain loop: '${child}' names '${path}', which is already in the chain`,
    );
  }
  seen.add(real);
  try {
    Deno.statSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new BackingChainError(
        child === null
          ? `image '${path}' does not exist`
          : `backing file '${path}' of '${child}' does not exist; restore it or rebase the image`,
      );
    }
    throw err;
  }
  const fmt = format ?? probeFormat(path);
  const readOnly = top ? options.readOnly ?? false : true;
  const faults = top && options.faults ? { faults: options.faults } : {};
  if (fmt === "raw") return RawImage.open(path, { readOnly, ...faults });
  const peek = Qcow2Image.open(path, { readOnly: true, backing: null });
  const name = peek.backingFile;
  const bfmt = peek.backingFormat;
  peek.closeSync();
  let backing: DiskImage | null = null;
  if (name !== null && !options.noBacking) {
    if (bfmt !== null && bfmt !== "raw" && bfmt !== "qcow2") {
      throw new BackingChainError(
        `'${path}' names backing format '${bfmt}'; vmkit reads only raw and qcow2`,
      );
    }
    backing = openLayer(
      resolveBackingPath(path, name),
      bfmt ?? undefined,
      options,
      seen,
      path,
      false,
    );
  }
  try {
    return Qcow2Image.open(path, { readOnly, ...faults, backing });
  } catch (err) {
    backing?.closeSync();
    throw err;
  }
}

/** Options for {@link createImage}. */
export interface CreateImageOptions {
  /** Virtual size; defaults to the backing image's size. */
  size?: number;
  /** Backing file name as stored in the header (relative to the new image's folder). */
  backingFile?: string;
  /** Backing format (probed when omitted). */
  backingFormat?: ImageFormat;
  /** Cluster size in bytes (default 64 KiB). */
  clusterSize?: number;
  /** Image format (default qcow2). */
  format?: ImageFormat;
}

/**
 * Creates a qcow2 (or raw) image at `path`, optionally over a backing file,
 * and returns it opened read-write with its chain.
 *
 * @example
 * ```ts
 * import { createImage } from "./chain.ts";
 * const base = createImage("/tmp/base.raw", { size: 1 << 20, format: "raw" });
 * await base.close();
 * const top = createImage("/tmp/top.qcow2", { backingFile: "base.raw" });
 * await top.write(0, new Uint8Array(512).fill(7));
 * await top.close();
 * ```
 */
export function createImage(path: string, options: CreateImageOptions): DiskImage {
  const format = options.format ?? "qcow2";
  let size = options.size;
  let backingFormat = options.backingFormat;
  if (options.backingFile !== undefined) {
    if (format === "raw") throw new CowError(`raw image '${path}' cannot have a backing file`);
    const bpath = resolveBackingPath(path, options.backingFile);
    if (realPath(bpath) === realPath(path)) {
      throw new BackingChainError(`'${path}' cannot be its own backing file`);
    }
    const parent = openImage(bpath, {
      readOnly: true,
      ...(backingFormat ? { format: backingFormat } : {}),
    });
    backingFormat ??= parent.format;
    size ??= parent.size;
    parent.closeSync();
  }
  if (size === undefined) {
    throw new CowError(`creating '${path}' needs a size or a backing file`);
  }
  if (format === "raw") return RawImage.create(path, size);
  Qcow2Image.create(path, {
    size,
    ...(options.clusterSize !== undefined ? { clusterSize: options.clusterSize } : {}),
    ...(options.backingFile !== undefined ? { backingFile: options.backingFile } : {}),
    ...(backingFormat !== undefined ? { backingFormat } : {}),
  });
  return openImage(path, { format: "qcow2" });
}

/** Paths of `image` and its backing images, top first. */
export function chainPaths(image: DiskImage): string[] {
  const out: string[] = [];
  for (let d: DiskImage | null = image; d !== null; d = d.backing) out.push(d.path);
  return out;
}
