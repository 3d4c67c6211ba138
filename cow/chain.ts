/**
 * Opening and creating images with their backing chains: format probing,
 * relative and absolute backing names, the backing-format extension, loop
 * and missing-parent detection, and backing names that are not files
 * (protocol URLs such as `iscsi://…`, opened through a caller's hook).
 *
 * @module
 */

import { dirname, isAbsolute, resolve } from "node:path";
import type { BlockDevice } from "./block_device.ts";
import type { DiskImage } from "./disk_image.ts";
import { BackingChainError, CowError } from "./errors.ts";
import { type FaultInjector, ImageFile } from "./file_io.ts";
import type { LockMode } from "./image_lock.ts";
import { PROBE_BYTES, probeBytes } from "./probe.ts";
import { Qcow2Image } from "./qcow2.ts";
import { RawImage } from "./raw.ts";
import { isRemoteName, RemoteLayer } from "./remote_layer.ts";

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
  /** The top qcow2 image's L2 cache in bytes (QEMU's `l2-cache-size`; see `Qcow2OpenOptions`). */
  l2CacheSize?: number;
  /** The top qcow2 image's refcount cache in bytes (QEMU's `refcount-cache-size`). */
  refcountCacheSize?: number;
  /**
   * Opens a backing file whose name is a protocol URL, not a path (QEMU's
   * rule: a `:` before any `/`, e.g. `iscsi://HOST/IQN/LUN`), as a read-only
   * device; `format` is the stored backing format (only "raw" or none is
   * accepted: vmkit never probes a network device). Without it such a chain
   * is refused. For devices that open asynchronously use {@link openImageAsync}.
   */
  openBacking?: (name: string, format: "raw" | null) => BlockDevice;
  /**
   * Leave a backing file that is a protocol URL unopened (its ranges read as
   * zeros): for describing the files of a chain (`imageInfo`), never for data.
   */
  skipRemoteBacking?: boolean;
}

/** Options for {@link openImageAsync}: {@link OpenImageOptions} with an asynchronous hook. */
export interface AsyncOpenImageOptions extends Omit<OpenImageOptions, "openBacking"> {
  /** As {@link OpenImageOptions.openBacking}, and it may resolve later (a login). */
  openBacking?: (name: string, format: "raw" | null) => BlockDevice | Promise<BlockDevice>;
}

/** A protocol backing name met while opening a chain, and the layer that names it. */
interface RemoteRequest {
  readonly layer: Qcow2Image;
  readonly name: string;
  readonly format: "raw" | null;
}

/**
 * What a chain open does on meeting a protocol backing name: attach the
 * device returned now, or (null) leave it for the caller.
 */
type OnRemote = (req: RemoteRequest) => BlockDevice | null;

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
  const hook = options.openBacking;
  return openChain(path, options, (req) => {
    if (hook !== undefined) return hook(req.name, req.format);
    if (options.skipRemoteBacking) return null;
    throw remoteRefused(req);
  });
}

/**
 * {@link openImage} for chains that end in a device opened asynchronously:
 * `openBacking` may log in to a LUN before it resolves. The image returned
 * reads unallocated clusters from the device through its promise methods
 * (`synchronous` is false for it); close it with `close()`.
 *
 * @example
 * ```ts ignore
 * // ignore: needs an iSCSI target.
 * import { openImageAsync } from "./chain.ts";
 * import { IscsiBlockDevice } from "../san/iscsi_block_device.ts";
 * import { parseIscsiUrl } from "../san/iscsi_url.ts";
 * const disk = await openImageAsync("/var/lib/vm/overlay.qcow2", {
 *   openBacking: (name) => {
 *     const u = parseIscsiUrl(name);
 *     return IscsiBlockDevice.open({
 *       host: u.host, port: u.port, targetName: u.target ?? "", lun: u.lun ?? 0,
 *       initiatorName: "iqn.2024-01.dev.vmkit:vm-1", readOnly: true,
 *     });
 *   },
 * });
 * await disk.close();
 * ```
 */
export async function openImageAsync(
  path: string,
  options: AsyncOpenImageOptions = {},
): Promise<DiskImage> {
  const { openBacking, ...rest } = options;
  let want: RemoteRequest | null = null;
  const top = openChain(path, rest, (req) => {
    if (openBacking === undefined && !options.skipRemoteBacking) throw remoteRefused(req);
    want = req;
    return null;
  });
  const req = want as RemoteRequest | null;
  if (req === null || openBacking === undefined) return top;
  let dev: BlockDevice;
  try {
    dev = await openBacking(req.name, req.format);
  } catch (err) {
    top.closeSync(); // nothing asynchronous is attached yet
    throw err;
  }
  if (req.layer.backing !== null) {
    await dev.close();
    top.closeSync();
    throw new BackingChainError(`'${req.layer.path}' changed its backing while it was opened`);
  }
  req.layer.setBacking(new RemoteLayer(req.name, dev), undefined, true);
  return top;
}

function remoteRefused(req: RemoteRequest): BackingChainError {
  return new BackingChainError(
    `'${req.layer.path}' names backing file '${req.name}', which is not a local file; ` +
      "vmkit opens such a backing only through a hook that opens the device " +
      "(openImageAsync(path, { openBacking }); a VM's drive logs in to an iscsi:// LUN with " +
      "the VM's own SUI)",
  );
}

function openChain(path: string, options: OpenImageOptions, onRemote: OnRemote): DiskImage {
  if (options.forceShare && !(options.readOnly ?? false)) {
    throw new CowError(
      `cannot open '${path}': force-share can only be used with read-only images`,
    );
  }
  const seen = new Set<string>();
  return openLayer(path, options.format, options, seen, null, 1, path, onRemote);
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
  onRemote: OnRemote,
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
      ...(top && options.l2CacheSize !== undefined ? { l2CacheSize: options.l2CacheSize } : {}),
      ...(top && options.refcountCacheSize !== undefined
        ? { refcountCacheSize: options.refcountCacheSize }
        : {}),
    });
  } catch (err) {
    file.close();
    throw err;
  }
  try {
    const name = img.backingFile;
    const bfmt = img.backingFormat;
    if (name !== null && !options.noBacking && isRemoteName(name)) {
      if (bfmt !== null && bfmt !== "raw") {
        throw new BackingChainError(
          `'${path}' names backing file '${name}' with format '${bfmt}'; vmkit reads a ` +
            "network backing as raw only",
        );
      }
      const dev = onRemote({ layer: img, name, format: bfmt });
      if (dev !== null) img.setBacking(new RemoteLayer(name, dev), undefined, true);
    } else if (name !== null && !options.noBacking) {
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
        onRemote,
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
  /** Opens a backing file that is a protocol URL (see {@link OpenImageOptions.openBacking}). */
  openBacking?: (name: string, format: "raw" | null) => BlockDevice;
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
  if (options.backingFile !== undefined && isRemoteName(options.backingFile)) {
    // A network device (qemu-img create -b iscsi://… -F raw): nothing here can open it.
    if (format === "raw") throw new CowError(`raw image '${path}' cannot have a backing file`);
    if (backingFormat !== undefined && backingFormat !== "raw") {
      throw new CowError(`backing '${options.backingFile}' must have format raw`);
    }
    if (size === undefined || options.openBacking === undefined) {
      throw new CowError(
        `creating '${path}' over '${options.backingFile}' needs a size and an openBacking ` +
          "hook (cow/ does not open network devices itself; Qcow2Image.create writes the file alone)",
      );
    }
    backingFormat = "raw";
  } else if (options.backingFile !== undefined) {
    if (format === "raw") throw new CowError(`raw image '${path}' cannot have a backing file`);
    const bpath = resolveBackingPath(path, options.backingFile);
    if (realPath(bpath) === realPath(path)) {
      throw new BackingChainError(`'${path}' cannot be its own backing file`);
    }
    const parent = openImage(bpath, {
      readOnly: true,
      // Only its size, format and files are looked at: a network device below is not opened.
      skipRemoteBacking: true,
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
  return openImage(path, {
    format: "qcow2",
    ...(options.openBacking === undefined ? {} : { openBacking: options.openBacking }),
  });
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

/**
 * The protocol backing name (e.g. `iscsi://…`) at the bottom of the file
 * chain of `path`, or null when the chain is all files. Only the files'
 * headers are read (read-only, sharing every lock).
 */
export function remoteBacking(path: string): string | null {
  const top = openImage(path, { readOnly: true, forceShare: true, skipRemoteBacking: true });
  try {
    let d: DiskImage = top;
    while (d.backing !== null) d = d.backing;
    const name = d instanceof Qcow2Image ? d.backingFile : null;
    return name !== null && isRemoteName(name) ? name : null;
  } finally {
    top.closeSync();
  }
}

/** Paths of `image` and its backing images, top first. */
export function chainPaths(image: DiskImage): string[] {
  const out: string[] = [];
  for (let d: DiskImage | null = image; d !== null; d = d.backing) out.push(d.path);
  return out;
}
