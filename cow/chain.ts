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
import { type FaultInjector, ImageFile } from "./file_io.ts";
import type { LockMode } from "./image_lock.ts";
import { PROBE_BYTES, probeBytes } from "./probe.ts";
import { Qcow2Image } from "./qcow2.ts";
import { RawImage } from "./raw.ts";

/** A disk image format vmkit reads. */
export type ImageFormat = "raw" | "qcow2";

/**
 * Deepest backing chain vmkit opens (each layer holds a file descriptor and
 * a stack frame per read through it; real chains are a few layers deep).
 */
export const MAX_CHAIN_DEPTH = 512;

/** Options for {@link openImage}. */
export interface OpenImageOptions {
  /** Open the top image read-only (backing images are always read-only). */
  readOnly?: boolean;
  /** Skip probing and use this format for the top image. */
  format?: ImageFormat;
  /**
   * With `format`: it was found by probing, not named by the user, so a raw
   * image keeps guarding its first sector (see `raw.ts`).
   */
  formatProbed?: boolean;
  /** Fault injection for the top image (crash tests). */
  faults?: FaultInjector;
  /** Do not open backing files; unallocated clusters read as zeros (for info/check). */
  noBacking?: boolean;
  /**
   * Read-only opens only: let others keep writing the image (QEMU's
   * `force-share`, `qemu-img -U`), for looking at an image in use. Applies
   * to the whole chain. What is read may change meanwhile.
   */
  forceShare?: boolean;
  /** Lock the image files as QEMU does (default true; false is QEMU's `locking=off`). */
  locking?: boolean;
  /** The top qcow2 image's overlap checks (QEMU's `overlap-check`; default "all"). */
  overlapCheck?: "all" | "none";
}

/** Reads the first bytes of `path` and returns its format ("raw" unless qcow2 magic). */
export function probeFormat(path: string): ImageFormat {
  const file = openFile(path, null, { readOnly: true, lock: "none" });
  try {
    return probeFile(file);
  } finally {
    file.close();
  }
}

/** The format of an open file, refusing formats vmkit does not open. */
function probeFile(file: ImageFile): ImageFormat {
  const head = new Uint8Array(Math.min(PROBE_BYTES, file.length()));
  file.pread(head, 0);
  const fmt = probeBytes(head);
  if (fmt === "raw" || fmt === "qcow2") return fmt;
  throw new CowError(
    `'${file.path}' is a ${fmt} image; vmkit opens raw and qcow2 images only ` +
      `(convert it: qemu-img convert -O qcow2 '${file.path}' <new.qcow2>)`,
  );
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

/** `stat` of an image path, with the errors a user can act on. */
export function statImage(path: string, child: string | null = null): Deno.FileInfo {
  if (path.includes("\0")) {
    throw new CowError(`image path ${JSON.stringify(path)} contains a NUL byte`);
  }
  try {
    return Deno.statSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      const hint = path.includes("\uFFFD") ? " (vmkit takes UTF-8 file names only)" : "";
      throw new BackingChainError(
        child === null
          ? `image '${path}' does not exist${hint}`
          : `backing file '${path}' of '${child}' does not exist; restore it or rebase the image`,
      );
    }
    if (err instanceof Error && err.name in Deno.errors) {
      throw new CowError(`cannot open '${path}': ${err.message}`, { cause: err });
    }
    throw err;
  }
}

function openFile(
  path: string,
  child: string | null,
  options: { readOnly: boolean; lock: LockMode; faults?: FaultInjector },
): ImageFile {
  statImage(path, child);
  return ImageFile.open(path, options);
}

/**
 * Opens `path` and its whole backing chain (up to {@link MAX_CHAIN_DEPTH}).
 * Backing files are opened read-only and owned by the image above them, so
 * closing the top closes the chain. Every file is locked as QEMU locks it
 * (see `image_lock.ts`): an image another process writes is refused.
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
  if (options.forceShare && !(options.readOnly ?? false)) {
    throw new CowError(
      `cannot open '${path}': force-share can only be used with read-only images`,
    );
  }
  const seen = new Set<string>();
  return openLayer(path, options.format, options, seen, null, 1, path);
}

function lockMode(options: OpenImageOptions, readOnly: boolean): LockMode {
  if (options.locking === false) return "none";
  if (!readOnly) return "write";
  return options.forceShare ? "force-share" : "read";
}

function openLayer(
  path: string,
  format: ImageFormat | undefined,
  options: OpenImageOptions,
  seen: Set<string>,
  child: string | null,
  depth: number,
  topPath: string,
): DiskImage {
  if (depth > MAX_CHAIN_DEPTH) {
    throw new BackingChainError(
      `the backing chain of '${topPath}' is more than ${MAX_CHAIN_DEPTH} images deep ` +
        `('${child}' names '${path}'); shorten it with 'vmkit disk stream' or 'qemu-img rebase'`,
    );
  }
  const st = statImage(path, child);
  const id = `${st.dev}:${st.ino}`;
  if (seen.has(id)) {
    throw new BackingChainError(
      `backing chain loop: '${child}' names '${path}', which is already in the chain`,
    );
  }
  seen.add(id);
  const top = depth === 1;
  const readOnly = top ? options.readOnly ?? false : true;
  const file = ImageFile.open(path, {
    readOnly,
    lock: lockMode(options, readOnly),
    ...(top && options.faults ? { faults: options.faults } : {}),
  });
  let img: Qcow2Image;
  try {
    const fmt = format ?? probeFile(file);
    if (fmt === "raw") {
      const probed = format === undefined || (top && options.formatProbed === true);
      return RawImage.fromFile(file, probed);
    }
    img = Qcow2Image.fromFile(file, {
      backing: null,
      ...(top && options.overlapCheck ? { overlapCheck: options.overlapCheck } : {}),
    });
  } catch (err) {
    file.close();
    throw err;
  }
  try {
    const name = img.backingFile;
    const bfmt = img.backingFormat;
    if (name !== null && !options.noBacking) {
      if (bfmt !== null && bfmt !== "raw" && bfmt !== "qcow2") {
        throw new BackingChainError(
          `'${path}' names backing format '${bfmt}'; vmkit reads only raw and qcow2`,
        );
      }
      const backing = openLayer(
        resolveBackingPath(path, name),
        bfmt ?? undefined,
        options,
        seen,
        path,
        depth + 1,
        topPath,
      );
      img.setBacking(backing, undefined, true);
    }
    return img;
  } catch (err) {
    img.abandon();
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
    try {
      const hit = chainLayerAt(parent, path);
      if (hit !== null) {
        throw new BackingChainError(
          `'${path}' is '${hit.path}', a file of its own backing chain; creating it would ` +
            `destroy its backing file`,
        );
      }
      backingFormat ??= parent.format;
      size ??= parent.size;
    } finally {
      parent.closeSync();
    }
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

/**
 * The layer of `image`'s chain that the file at `path` is (same device and
 * inode: also through a symlink or a hard link), or null when `path` does
 * not exist or is none of them.
 */
export function chainLayerAt(image: DiskImage, path: string): DiskImage | null {
  if (path.includes("\0")) {
    throw new CowError(`image path ${JSON.stringify(path)} contains a NUL byte`);
  }
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  for (let d: DiskImage | null = image; d !== null; d = d.backing) {
    if (d.identity.dev === st.dev && d.identity.ino === st.ino) return d;
  }
  return null;
}

/** Paths of `image` and its backing images, top first. */
export function chainPaths(image: DiskImage): string[] {
  const out: string[] = [];
  for (let d: DiskImage | null = image; d !== null; d = d.backing) out.push(d.path);
  return out;
}
