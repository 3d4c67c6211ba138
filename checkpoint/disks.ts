/**
 * The disk step of a live checkpoint (the seed's steps 1, 2 and 4): while
 * the VM runs, a qcow2 overlay is created over each writable disk's top and
 * armed; the machine's quiesce inside the pause switches the disk to it, so
 * the parent is frozen at the pause instant. Then, in the background:
 *
 * - `keep-parent`: the parent (and the chain below it) belongs to the
 *   checkpoint: it is made read-only and recorded with an identity; the VM
 *   goes on in the overlay.
 * - `copy-parent`: the parent is copied (its chain flattened) into a file of
 *   the checkpoint's, then the overlay is committed back into the parent
 *   while the VM runs, so the VM ends on its own file again.
 *
 * A recorded layer carries an identity (size, inode, modification time and
 * a CRC of its first 64 KiB) so a restore refuses a parent changed since.
 *
 * An iSCSI LUN (a disk that is a LUN, or a chain over one) is frozen the same
 * way, by a qcow2 overlay over it whose backing file is the LUN's URL
 * (`qemu-img create -f qcow2 -b iscsi://… -F raw`); a LUN has no folder to
 * put it beside, so its path must be given (`overlays`), or the checkpoint
 * is refused. Only `keep-parent`: the LUN itself is the checkpoint's frozen
 * parent, recorded by its URL, the SUI it was logged in under, and an
 * identity (size, block size, VPD device id and serial, SHA-256 of its
 * first 64 KiB) a restore compares before it uses the LUN. `copy-parent`
 * would copy the LUN and commit back into it, and vmkit copies and commits
 * local image files only: refused.
 *
 * @module
 */

import { copyParent } from "../cow/copy_parent.ts";
import { cString } from "../native/ffi.ts";
import { crc32c, uffd } from "../native/uffd_ffi.ts";
import { lunIdentityChange } from "../san/lun_identity.ts";
import { CheckpointError } from "./errors.ts";
import type { CheckpointDisk, DiskInfo, DiskLayerInfo, LunIdentity } from "./target.ts";

/** What happens to a disk's parent (see the module doc). */
export type DiskPolicy = "keep-parent" | "copy-parent";

/** Bytes of a layer's head that its identity checksums. */
const HEAD_BYTES = 64 * 1024;

/** What a restore checks of a recorded image before it uses it. */
export interface DiskIdentity {
  /** File size in bytes. */
  readonly bytes: number;
  /** Inode number. */
  readonly ino: number;
  /** Modification time (ms since the epoch). */
  readonly mtimeMs: number;
  /** CRC32C of the first 64 KiB (the qcow2 header and tables start there). */
  readonly headCrc: number;
}

/** A LUN of a recorded chain. */
export interface RecordedLun {
  /** `iscsi://HOST[:PORT]/TARGET/LUN`. */
  readonly url: string;
  /** The SUI (initiator name) it was logged in under at the checkpoint. */
  readonly initiatorName?: string;
  /** Its identity at the checkpoint. */
  readonly identity: LunIdentity;
}

/** One image (or LUN) of a recorded chain. */
export interface RecordedLayer extends DiskLayerInfo {
  /** A file's identity at the checkpoint (file layers). */
  readonly identity?: DiskIdentity;
  /** The LUN (LUN layers; `path` is then its URL). */
  readonly lun?: RecordedLun;
}

/** One disk as the `disks` section records it. */
export interface RecordedDisk {
  /** Drive id. */
  readonly id: string;
  /** Whether the guest sees it read-only. */
  readonly readOnly: boolean;
  /** Size in bytes. */
  readonly size: number;
  /** The chain holding the disk as it was at the pause, top first. */
  readonly layers: readonly RecordedLayer[];
}

/** The `disks` section. */
export interface DisksRecord {
  /** The policy the checkpoint was taken with. */
  readonly policy: DiskPolicy;
  /** Every disk of the machine. */
  readonly disks: readonly RecordedDisk[];
}

/** The identity of the image at `path` now. */
export function diskIdentity(path: string): DiskIdentity {
  const st = Deno.statSync(path);
  const fd = uffd().vk_file_open(cString(path), 0, 0);
  if (fd < 0) throw new CheckpointError(`cannot open disk image ${path}: errno ${-fd}`);
  try {
    const head = new Uint8Array(Math.min(HEAD_BYTES, st.size));
    const n = Number(uffd().vk_pread_buf(fd, head, BigInt(head.length), 0n));
    if (n !== head.length) throw new CheckpointError(`cannot read disk image ${path}`);
    return {
      bytes: st.size,
      ino: st.ino ?? 0,
      mtimeMs: st.mtime?.getTime() ?? 0,
      headCrc: crc32c(head),
    };
  } finally {
    uffd().vk_file_close(fd);
  }
}

/**
 * Throws naming the disk and LUN when the LUN a restore logged in to
 * (`now`) is not the recorded one (another LUN, resized, or written since).
 */
export function checkLunLayer(
  diskId: string,
  layer: RecordedLayer,
  now: LunIdentity,
  checkpoint: string,
): void {
  if (layer.lun === undefined) throw new CheckpointError(`disk '${diskId}': not a LUN layer`);
  const what = lunIdentityChange(layer.lun.identity, now);
  if (what !== null) {
    throw new CheckpointError(
      `disk '${diskId}': the iSCSI LUN ${layer.lun.url} changed since the checkpoint (${what}); ` +
        "restore needs the LUN as it was",
      { path: checkpoint, section: "disks" },
    );
  }
}

/** Throws naming the disk and file when `layer` is not as recorded (a changed parent). */
export function checkLayer(diskId: string, layer: RecordedLayer, checkpoint: string): void {
  if (layer.identity === undefined) {
    throw new CheckpointError(`disk '${diskId}': layer ${layer.path} is not a file`, {
      path: checkpoint,
      section: "disks",
    });
  }
  let now: DiskIdentity;
  try {
    now = diskIdentity(layer.path);
  } catch (err) {
    throw new CheckpointError(
      `disk '${diskId}': its image ${layer.path} cannot be read (${(err as Error).message})`,
      { path: checkpoint, section: "disks" },
    );
  }
  const was = layer.identity;
  const what = now.bytes !== was.bytes
    ? `its size is ${now.bytes}, not ${was.bytes}`
    : now.ino !== was.ino
    ? "it is another file (inode)"
    : now.headCrc !== was.headCrc
    ? "its first 64 KiB changed"
    : now.mtimeMs !== was.mtimeMs
    ? "it was modified"
    : undefined;
  if (what !== undefined) {
    throw new CheckpointError(
      `disk '${diskId}': ${layer.path} changed since the checkpoint (${what}); ` +
        "restore needs the images as they were",
      { path: checkpoint, section: "disks" },
    );
  }
}

/** Fsyncs the file at `path` (data written through another descriptor reaches the disk too). */
function fsyncPath(path: string): void {
  const s = uffd();
  const fd = s.vk_file_open(cString(path), 0, 0);
  if (fd < 0) throw new CheckpointError(`cannot open ${path} to fsync it: errno ${-fd}`);
  try {
    const r = s.vk_file_fsync(fd);
    if (r < 0) throw new CheckpointError(`fsync of ${path} failed: errno ${-r}`);
  } finally {
    s.vk_file_close(fd);
  }
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

interface Prepared {
  disk: CheckpointDisk;
  info: DiskInfo;
  /** The overlay armed over its top (writable disks). */
  overlay: string | undefined;
}

/** Progress of the background part (bytes of disk copies). */
export type DiskProgress = (done: number, total: number) => void;

/** The disk step of one checkpoint. */
export class DiskStep {
  readonly policy: DiskPolicy;
  readonly #disks: Prepared[];
  readonly #checkpoint: string;
  readonly #tag: string;
  #copies: string[] = [];
  /** Files made read-only (keep-parent), with their modes before. */
  #frozen: Array<{ path: string; mode: number }> = [];

  private constructor(policy: DiskPolicy, disks: Prepared[], checkpoint: string, tag: string) {
    this.policy = policy;
    this.#disks = disks;
    this.#checkpoint = checkpoint;
    this.#tag = tag;
  }

  /** Bytes the background part copies (copy-parent: the disks' sizes). */
  get copyBytes(): number {
    if (this.policy !== "copy-parent") return 0;
    return this.#disks.reduce((n, d) => n + (d.overlay === undefined ? 0 : d.info.size), 0);
  }

  /**
   * While the VM runs: refuses what cannot be checkpointed and arms an
   * overlay over each writable disk: at `overlays[id]` when given (needed
   * for a disk that is an iSCSI LUN; the file must not exist), else
   * `<top>.<tag>.qcow2`, beside its top.
   */
  static async prepare(
    disks: readonly CheckpointDisk[],
    policy: DiskPolicy,
    checkpoint: string,
    tag: string,
    overlays: Readonly<Record<string, string>> = {},
  ): Promise<DiskStep> {
    const prepared: Prepared[] = [];
    const step = new DiskStep(policy, prepared, checkpoint, tag);
    const refuse = (what: string): never => {
      throw new CheckpointError(what, { path: checkpoint });
    };
    for (const id of Object.keys(overlays)) {
      if (!disks.some((d) => d.id === id)) {
        refuse(`an overlay is given for '${id}', which is no disk of this VM`);
      }
    }
    const given = Object.values(overlays);
    if (new Set(given).size !== given.length) refuse("two disks are given the same overlay file");
    try {
      const infos: DiskInfo[] = [];
      for (const disk of disks) infos.push(await disk.describe());
      // Everything refused before anything is armed.
      for (const info of infos) checkDisk(info, policy, overlays[info.id], refuse);
      for (const [i, disk] of disks.entries()) {
        const info = infos[i];
        const top = info?.layers[0];
        if (info === undefined || top === undefined) continue;
        let overlay: string | undefined;
        if (!info.readOnly) {
          overlay = overlays[info.id] ?? `${dirname(top.path)}/${basename(top.path)}.${tag}.qcow2`;
          await disk.armOverlay(overlay);
        }
        prepared.push({ disk, info, overlay });
      }
    } catch (err) {
      await step.abandon();
      throw err;
    }
    return step;
  }

  /**
   * Undoes the step after a failure: before the pause, armed overlays are
   * dropped; after it (the disks run on their overlays), copy-parent commits
   * them back and keep-parent leaves the VM on them (nothing is lost).
   */
  async abandon(switched = false): Promise<void> {
    for (const d of this.#disks) {
      if (d.overlay === undefined) continue;
      if (!switched) await d.disk.disarm();
      else if (this.policy === "copy-parent") await this.#commitBack(d);
    }
    for (const c of this.#copies) {
      try {
        Deno.removeSync(c);
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      }
    }
    for (const f of this.#frozen) Deno.chmodSync(f.path, f.mode);
    this.#copies = [];
    this.#frozen = [];
  }

  /**
   * After the pause, in the background: the parents made read-only
   * (keep-parent) or copied (copy-parent), flushed to disk, recorded with
   * their identities.
   */
  async record(onProgress?: DiskProgress): Promise<DisksRecord> {
    const out: RecordedDisk[] = [];
    const total = this.copyBytes;
    let base = 0;
    for (const d of this.#disks) {
      let layers: DiskLayerInfo[] = [...d.info.layers];
      if (d.overlay !== undefined && this.policy === "copy-parent") {
        // Written under a temporary name too: a crash leaves no half copy under the final one.
        const dst = `${this.#checkpoint}.${this.#tag}.${d.info.id}.qcow2`;
        const tmp = `${dst}.partial-${Deno.pid}`;
        this.#copies.push(tmp, dst);
        const top = layers[0];
        if (top === undefined) continue;
        const at = base;
        await copyParent(top.path, tmp, {
          format: "qcow2",
          forceShare: true,
          onProgress: ({ done }) => onProgress?.(at + done, total),
        });
        fsyncPath(tmp);
        Deno.renameSync(tmp, dst);
        base += d.info.size;
        layers = [{ path: dst, format: "qcow2", size: d.info.size }];
      } else if (d.overlay !== undefined) {
        // keep-parent: the frozen top belongs to the checkpoint now.
        // A LUN is frozen by the overlay alone: nothing on the host can make it read-only.
        const top = layers[0];
        if (top !== undefined && top.lun === undefined) {
          const mode = (Deno.statSync(top.path).mode ?? 0o644) & 0o7777;
          this.#frozen.push({ path: top.path, mode });
          Deno.chmodSync(top.path, mode & 0o7555);
        }
      }
      const files = layers.filter((l) => l.lun === undefined);
      for (const l of files) fsyncPath(l.path);
      if (files[0] !== undefined) fsyncPath(dirname(files[0].path));
      const recorded: RecordedLayer[] = [];
      for (const l of layers) {
        if (l.lun === undefined) {
          recorded.push({
            path: l.path,
            format: l.format,
            size: l.size,
            identity: diskIdentity(l.path),
          });
          continue;
        }
        // Read after the switch: the LUN's bytes are the pause instant's from here on.
        const identity = await d.disk.lunIdentity?.();
        if (identity === undefined) {
          throw new CheckpointError(`disk '${d.info.id}' cannot tell its LUN's identity`);
        }
        recorded.push({ ...l, lun: { ...l.lun, identity } });
      }
      out.push({
        id: d.info.id,
        readOnly: d.info.readOnly,
        size: d.info.size,
        layers: recorded,
      });
    }
    return { policy: this.policy, disks: out };
  }

  /** After the checkpoint is durable: copy-parent commits each overlay back into its parent. */
  async finish(): Promise<void> {
    this.#copies = []; // they belong to the checkpoint now
    this.#frozen = [];
    if (this.policy !== "copy-parent") return;
    for (const d of this.#disks) if (d.overlay !== undefined) await this.#commitBack(d);
  }

  async #commitBack(d: Prepared): Promise<void> {
    await d.disk.commit();
    if (d.overlay === undefined) return;
    try {
      Deno.removeSync(d.overlay);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
}

/** Refuses (through `refuse`) a disk this checkpoint cannot take, with the reason. */
function checkDisk(
  info: DiskInfo,
  policy: DiskPolicy,
  overlay: string | undefined,
  refuse: (what: string) => never,
): void {
  const lun = info.layers.find((l) => l.lun !== undefined)?.lun;
  const url = lun?.url ?? info.url ?? "?";
  if (info.layers[0] === undefined) refuse(`disk '${info.id}' has no image`);
  if (info.readOnly) {
    if (overlay !== undefined) refuse(`disk '${info.id}' is read-only: it takes no overlay`);
    return;
  }
  if (info.kind === "iscsi" && overlay === undefined) {
    refuse(
      `disk '${info.id}' is the iSCSI LUN ${url}: a checkpoint freezes a disk by putting a ` +
        "qcow2 overlay file over it, and a LUN has no folder to put one beside; give the " +
        `overlay's path (API: "disk_overlays": [{"drive_id": "${info.id}", ` +
        `"path_on_host": PATH}] in PUT /snapshot/create; CLI: --overlay ${info.id}=PATH)`,
    );
  }
  if (lun !== undefined && policy === "copy-parent") {
    refuse(
      `disk '${info.id}' ${info.kind === "iscsi" ? "is" : "is a qcow2 chain over"} the iSCSI ` +
        `LUN ${url}: copy-parent copies the parent for the checkpoint and then commits the ` +
        "overlay back into it, and vmkit copies and commits local image files only; use " +
        "keep-parent (the LUN is then the checkpoint's frozen parent)",
    );
  }
  if (overlay !== undefined && exists(overlay)) {
    refuse(`the overlay ${overlay} for disk '${info.id}' exists; give a new file`);
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** Parses and checks a `disks` section's JSON; throws naming the section. */
export function parseDisksRecord(v: unknown, path: string): DisksRecord {
  const bad = (what: string): never => {
    throw new CheckpointError(what, { path, section: "disks" });
  };
  if (typeof v !== "object" || v === null) return bad("not an object");
  const r = v as Record<string, unknown>;
  if (r.policy !== "keep-parent" && r.policy !== "copy-parent") bad("unknown policy");
  if (!Array.isArray(r.disks)) return bad("no disk list");
  const num = (x: unknown): boolean => typeof x === "number" && Number.isFinite(x) && x >= 0;
  for (const d of r.disks as unknown[]) {
    const e = d as Record<string, unknown>;
    if (typeof e.id !== "string" || typeof e.readOnly !== "boolean" || !num(e.size)) {
      bad("a disk entry is malformed");
    }
    if (!Array.isArray(e.layers) || e.layers.length === 0) bad(`disk '${e.id}' has no layers`);
    for (const l of e.layers as unknown[]) {
      const x = l as Record<string, unknown>;
      const id = x.identity as Record<string, unknown> | undefined;
      const lun = x.lun as Record<string, unknown> | undefined;
      const common = typeof x.path === "string" && (x.format === "raw" || x.format === "qcow2") &&
        num(x.size);
      const file = id !== undefined && lun === undefined && num(id.bytes) && num(id.ino) &&
        num(id.mtimeMs) && num(id.headCrc);
      if (!common || (!file && !lunOk(lun, x.format))) {
        bad(`a layer of disk '${e.id}' is malformed`);
      }
    }
  }
  return v as DisksRecord;
}

/** Whether a recorded layer's `lun` entry is well formed. */
function lunOk(lun: Record<string, unknown> | undefined, format: unknown): boolean {
  if (lun === undefined || format !== "raw" || typeof lun.url !== "string") return false;
  if (lun.initiatorName !== undefined && typeof lun.initiatorName !== "string") return false;
  const i = lun.identity as Record<string, unknown> | undefined;
  const int = (x: unknown): boolean => Number.isSafeInteger(x) && (x as number) >= 0;
  return i !== undefined && typeof i === "object" && i !== null && int(i.bytes) &&
    int(i.blockSize) && typeof i.serial === "string" && typeof i.headSha256 === "string" &&
    Array.isArray(i.designators) &&
    (i.designators as unknown[]).every((d) => {
      const r = d as Record<string, unknown>;
      return typeof d === "object" && d !== null && int(r.type) && int(r.association) &&
        int(r.codeSet) && typeof r.value === "string";
    });
}
