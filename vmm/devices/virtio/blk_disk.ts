/**
 * A virtio-blk drive's back end on its I/O Worker: the image (a raw file, a
 * qcow2 chain from `cow/`, or an iSCSI LUN from `san/` logged in under the
 * VM's own SUI) behind a `SwitchableDevice`, and the operations a
 * checkpoint and `PATCH /drives` need: describe the chain, create an overlay
 * over the current top while the VM runs and switch to it when the device is
 * quiesced, commit an overlay back into its parent while running, and
 * replace the back end.
 *
 * Format probing: a file is qcow2 only when it starts with the qcow2 magic,
 * else raw; a raw file is written as raw bytes, so guest writes can never
 * turn it into qcow2.
 *
 * Three ways a request reaches the disk, chosen per request from the
 * switchable's current target: a raw file (the original one) through
 * io_uring on its own fd, straight between the file and guest memory; a
 * `cow/` image (or a commit's mirror) through its synchronous methods; any
 * other `BlockDevice` (iSCSI), and a qcow2 chain that ends in an iSCSI LUN,
 * through its promises.
 *
 * An iSCSI LUN is either the drive itself or the bottom of its qcow2 chain
 * (an overlay whose backing file is `iscsi://HOST[:PORT]/TARGET/LUN`, format
 * raw, as a checkpoint leaves it); either way the session logs in with the
 * VM's own SUI, and a LUN below an overlay is opened read-only.
 *
 * @module
 */

import { RemoteLayer } from "../../../cow/remote_layer.ts";
import { openImageAsync, probeFormat } from "../../../cow/chain.ts";
import { commit } from "../../../cow/commit.ts";
import type { BlockDevice } from "../../../cow/block_device.ts";
import type { DiskImage } from "../../../cow/disk_image.ts";
import { createOverlay } from "../../../cow/overlay.ts";
import { Qcow2Image } from "../../../cow/qcow2.ts";
import { RawImage } from "../../../cow/raw.ts";
import { SwitchableDevice } from "../../../cow/switchable_device.ts";
import { IscsiBlockDevice } from "../../../san/iscsi_block_device.ts";
import { parseIscsiUrl } from "../../../san/iscsi_url.ts";
import { type LunIdentity, lunIdentity } from "../../../san/lun_identity.ts";
import { closeFd, O_RDONLY, O_RDWR, openFd } from "../../../native/io_ffi.ts";
import type { DriveBackend } from "../../io_config.ts";
import { VirtioBackendError } from "./backend.ts";
import { type BlkBackendConfig, SECTOR } from "./blk_format.ts";

export type { BlkBackendConfig };

/** The synchronous surface shared by `cow/` images and a commit's mirror. */
export interface SyncTarget {
  readSync(offset: number, buf: Uint8Array): void;
  writeSync(offset: number, data: Uint8Array): void;
  flushSync(): void;
  discardSync(offset: number, length: number): void;
}

function isSyncTarget(d: BlockDevice): d is BlockDevice & SyncTarget {
  const t = d as Partial<SyncTarget> & { synchronous?: boolean };
  // A qcow2 chain over a LUN has the methods but serves unallocated ranges through promises only.
  return typeof t.readSync === "function" && typeof t.writeSync === "function" &&
    typeof t.flushSync === "function" && typeof t.discardSync === "function" &&
    t.synchronous !== false;
}

/** One layer of a drive's chain, top first. */
export interface DiskLayer {
  /** Image path. */
  readonly path: string;
  /** Image format. */
  readonly format: "raw" | "qcow2";
  /** Virtual size in bytes. */
  readonly size: number;
  /** Whether this layer is opened read-only. */
  readonly readOnly: boolean;
  /** Set when the layer is an iSCSI LUN (`path` is then its URL). */
  readonly lun?: { readonly url: string; readonly initiatorName?: string };
}

/** A drive as a checkpoint sees it. */
export interface DiskDescription {
  /** Drive id. */
  readonly id: string;
  /** Back-end kind. */
  readonly kind: "file" | "iscsi";
  /** Whether the guest sees the drive read-only. */
  readonly readOnly: boolean;
  /** Size in bytes. */
  readonly size: number;
  /**
   * The chain, top first: image files, and an iSCSI LUN as the last layer
   * when the drive is a LUN (`kind` "iscsi": the only layer) or a chain over one.
   */
  readonly layers: readonly DiskLayer[];
  /** The iSCSI URL of the drive's LUN (the drive itself, or the bottom of its chain). */
  readonly url?: string;
  /** The initiator name the LUN is logged in under. */
  readonly initiatorName?: string;
  /** An overlay created and armed to take over at the next quiesce. */
  readonly armedOverlay?: string;
}

/** The drive's LUN: the drive itself, or the bottom of its chain. */
interface Lun {
  readonly dev: IscsiBlockDevice;
  readonly url: string;
}

interface Opened {
  readonly target: BlockDevice;
  readonly raw: { readonly image: RawImage; readonly fd: number } | null;
  readonly blockSize: number;
  readonly lun: Lun | null;
}

/** Logs in to the LUN at `url` under the VM's SUI. */
async function openLun(cfg: BlkBackendConfig, url: string, readOnly: boolean): Promise<Lun> {
  const u = parseIscsiUrl(url);
  if (u.target === undefined || u.lun === undefined) {
    throw new VirtioBackendError(cfg.id, `iSCSI URL '${url}' needs a target and a LUN`);
  }
  if (cfg.initiatorName === undefined) {
    throw new VirtioBackendError(
      cfg.id,
      `the iSCSI LUN ${url} needs the VM's storage identity (SUI): give a VM id and a SUI registry`,
    );
  }
  const dev = await IscsiBlockDevice.open({
    host: u.host,
    port: u.port,
    targetName: u.target,
    lun: u.lun,
    initiatorName: cfg.initiatorName,
    readOnly,
  });
  return { dev, url };
}

async function openBackend(cfg: BlkBackendConfig, backend: DriveBackend): Promise<Opened> {
  if (backend.kind === "iscsi") {
    const lun = await openLun(cfg, backend.url, cfg.readOnly);
    return {
      target: lun.dev,
      raw: null,
      blockSize: Math.max(SECTOR, lun.dev.blockSize),
      lun,
    };
  }
  const format = backend.format ?? probeFormat(backend.path);
  if (format === "raw") {
    // A probed raw image refuses writes that would make its first sector probe as another
    // format (QEMU's raw driver does the same), so a guest cannot plant a qcow2 header
    // naming a host file as its backing file for the next open to follow.
    const probed = backend.format === undefined;
    const image = RawImage.open(backend.path, { readOnly: cfg.readOnly, probed });
    let fd = -1;
    if (cfg.uring ?? true) {
      try {
        fd = openFd(backend.path, cfg.readOnly ? O_RDONLY : O_RDWR);
      } catch (err) {
        image.closeSync();
        throw err;
      }
    }
    return { target: image, raw: fd >= 0 ? { image, fd } : null, blockSize: SECTOR, lun: null };
  }
  let lun: Lun | null = null;
  const image = await openImageAsync(backend.path, {
    readOnly: cfg.readOnly,
    format,
    // A chain over a LUN (a checkpoint's overlay): the LUN is read-only below it.
    openBacking: async (name) => {
      if (!name.startsWith("iscsi://")) {
        throw new VirtioBackendError(
          cfg.id,
          `'${backend.path}' names backing '${name}'; vmkit opens iscsi:// network backings only`,
        );
      }
      lun = await openLun(cfg, name, true);
      return lun.dev;
    },
  });
  return { target: image, raw: null, blockSize: SECTOR, lun };
}

/** A drive's open back end. */
export class BlkDisk {
  /** Drive id. */
  readonly id: string;
  /** Whether the guest sees the drive read-only. */
  readonly readOnly: boolean;
  /** The writer's device; its target is what requests reach. */
  readonly dev: SwitchableDevice;
  #raw: Opened["raw"];
  #blockSize: number;
  #lun: Lun | null;
  #initiator: string | undefined;
  #armed: Qcow2Image | null = null;

  private constructor(cfg: BlkBackendConfig, o: Opened) {
    this.id = cfg.id;
    this.readOnly = cfg.readOnly;
    this.dev = new SwitchableDevice(o.target);
    this.#raw = o.raw;
    this.#blockSize = o.blockSize;
    this.#lun = o.lun;
    this.#initiator = cfg.initiatorName;
  }

  /** Opens the drive's back end. */
  static async open(cfg: BlkBackendConfig): Promise<BlkDisk> {
    return new BlkDisk(cfg, await openBackend(cfg, cfg.backend));
  }

  /** Size in bytes of what the guest sees (whole sectors). */
  get size(): number {
    return Math.floor(this.dev.size / SECTOR) * SECTOR;
  }

  /** Logical block size. */
  get blockSize(): number {
    return this.#blockSize;
  }

  /** The raw file's fd when requests may go to it through io_uring now, else -1. */
  get uringFd(): number {
    const r = this.#raw;
    return r !== null && this.dev.target === r.image ? r.fd : -1;
  }

  /**
   * Whether a write reaching the first sector must take the synchronous path,
   * where the probed raw image checks it (io_uring writes go around it).
   */
  get guardsSector0(): boolean {
    const r = this.#raw;
    return r !== null && r.image.probed && this.dev.target === r.image;
  }

  /** The synchronous target when the current one has one, else null (asynchronous device). */
  syncTarget(): SyncTarget | null {
    const t = this.dev.target;
    return isSyncTarget(t) ? t : null;
  }

  /** The chain, identity and armed overlay. */
  describe(): DiskDescription {
    const layers: DiskLayer[] = [];
    const lun = this.#lun;
    const lunInfo = lun === null ? undefined : {
      url: lun.url,
      ...(this.#initiator === undefined ? {} : { initiatorName: this.#initiator }),
    };
    const target = this.dev.target;
    let t: DiskImage | null = topImage(target);
    while (t !== null) {
      const remote = t instanceof RemoteLayer && lunInfo !== undefined;
      layers.push({
        path: t.path,
        format: t.format,
        size: t.size,
        readOnly: t.readOnly,
        ...(remote ? { lun: lunInfo } : {}),
      });
      t = t.backing;
    }
    const isLun = lun !== null && target === lun.dev;
    if (isLun && lunInfo !== undefined) {
      layers.push({
        path: lun.url,
        format: "raw",
        size: lun.dev.size,
        readOnly: this.readOnly,
        lun: lunInfo,
      });
    }
    return {
      id: this.id,
      kind: isLun ? "iscsi" : "file",
      readOnly: this.readOnly,
      size: this.size,
      layers,
      ...(lunInfo === undefined ? {} : lunInfo),
      ...(this.#armed === null ? {} : { armedOverlay: this.#armed.path }),
    };
  }

  /** The identity of the drive's LUN (size, VPD device id and serial, digest of its head). */
  async lunIdentity(): Promise<LunIdentity> {
    if (this.#lun === null) throw new VirtioBackendError(this.id, "the drive uses no iSCSI LUN");
    return await lunIdentity(this.#lun.dev);
  }

  /**
   * Creates a qcow2 overlay at `path` over the current top (reading through
   * the open top, so nothing written so far is missed) and arms it: the
   * next quiesce switches the drive to it after the last in-flight request.
   */
  armOverlay(path: string): DiskDescription {
    if (this.#armed !== null) {
      throw new VirtioBackendError(this.id, `overlay '${this.#armed.path}' is already armed`);
    }
    if (this.readOnly) throw new VirtioBackendError(this.id, "a read-only drive takes no overlay");
    const top = this.dev.target;
    const lun = this.#lun;
    if (lun !== null && top === lun.dev) {
      // The LUN itself: the overlay names it by its URL (format raw, as qemu-img create -b
      // iscsi://… -F raw) and reads it through this very session; it owns it from the switch on.
      this.#armed = createOverlay(new RemoteLayer(lun.url, lun.dev), path, { adoptParent: true });
      return this.describe();
    }
    if (!(top instanceof RawImage) && !(top instanceof Qcow2Image)) {
      throw new VirtioBackendError(
        this.id,
        "only a file or iSCSI drive that is not being committed takes an overlay",
      );
    }
    // The overlay owns its parent from the switch on: closing the drive closes both.
    this.#armed = createOverlay(top, path, { adoptParent: true });
    return this.describe();
  }

  /** Drops an armed overlay (its file is removed). */
  disarm(): void {
    const a = this.#armed;
    if (a === null) return;
    this.#armed = null;
    a.detachBacking(); // the parent is still the drive's top
    a.closeSync();
    Deno.removeSync(a.path);
  }

  /** Switches to the armed overlay, if any (the caller has drained the device). */
  async switchArmed(): Promise<boolean> {
    const a = this.#armed;
    if (a === null) return false;
    this.#armed = null;
    await this.dev.switchTo(a);
    // The parent is frozen: it holds read locks from now on, as a backing file does
    // (QEMU reopens it read-only), so other VMs (a checkpoint's clones) may read it.
    a.backing?.relock("read");
    return true;
  }

  /**
   * Commits the current top (a qcow2 overlay) into its parent while the
   * drive stays in use; the drive ends up on the parent.
   */
  async commitTop(): Promise<DiskDescription> {
    const top = this.dev.target;
    if (!(top instanceof Qcow2Image) || top.backing === null) {
      throw new VirtioBackendError(
        this.id,
        "the drive's top is not an overlay with a parent to commit into",
      );
    }
    if (!top.backing.synchronous) {
      throw new VirtioBackendError(
        this.id,
        `the overlay's chain ends in the iSCSI LUN ${this.#lun?.url ?? "?"}: vmkit commits ` +
          "into local image files only",
      );
    }
    // Writing the parent again: its write lock back (refused while others read it).
    if (!top.backing.readOnly) top.backing.relock("write");
    await commit(top, { switchable: this.dev });
    return this.describe();
  }

  /**
   * Replaces the back end with `backend` (the caller has drained the
   * device); the old one is flushed and closed. Returns the new size.
   */
  async replace(cfg: BlkBackendConfig): Promise<number> {
    // The drive's own file again (Firecracker clients PATCH the same path_on_host so that the
    // guest sees a new size): the new open takes over the top image's lock, else it would
    // conflict with this very drive.
    const top = topImage(this.dev.target);
    const same = cfg.backend.kind === "file" && top !== null &&
      sameFile(top.identity, cfg.backend.path);
    const mode = cfg.readOnly ? "read" : "write";
    if (same) top.relock("none");
    let next: Opened;
    try {
      next = await openBackend(cfg, cfg.backend);
    } catch (err) {
      if (same) top.relock(mode);
      throw err;
    }
    const oldRaw = this.#raw;
    try {
      await this.dev.switchTo(next.target, { closeOld: true });
    } catch (err) {
      await next.target.close();
      if (next.raw !== null) closeFd(next.raw.fd);
      if (same) top.relock(mode);
      throw err;
    }
    if (oldRaw !== null) closeFd(oldRaw.fd);
    this.#raw = next.raw;
    this.#blockSize = next.blockSize;
    this.#lun = next.lun;
    return this.size;
  }

  /** Flushes and closes everything. */
  async close(): Promise<void> {
    this.disarm();
    try {
      await this.dev.close();
    } finally {
      if (this.#raw !== null) closeFd(this.#raw.fd);
      this.#raw = null;
    }
  }
}

/** Whether `path` names the file `id` (false when it cannot be looked at). */
function sameFile(id: { dev: number; ino: number }, path: string): boolean {
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(path);
  } catch (_err) {
    return false; // the open that follows reports why
  }
  return st.dev === id.dev && st.ino === id.ino;
}

/** The top `cow/` image of a target (a commit's mirror counts as its overlay), or null. */
function topImage(t: BlockDevice): DiskImage | null {
  if (t instanceof RawImage || t instanceof Qcow2Image) return t;
  const m = t as { overlay?: unknown };
  if (m.overlay instanceof Qcow2Image) return m.overlay;
  return null;
}
