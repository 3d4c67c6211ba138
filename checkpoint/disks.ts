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
 * An iSCSI LUN is refused: a checkpoint cannot freeze a LUN without an
 * overlay over it, and vmkit's qcow2 reads backing files synchronously,
 * which a network LUN cannot serve.
 *
 * @module
 */

import { copyParent } from "../cow/copy_parent.ts";
import { cString } from "../native/ffi.ts";
import { crc32c, uffd } from "../native/uffd_ffi.ts";
import { CheckpointError } from "./errors.ts";
import type { CheckpointDisk, DiskInfo, DiskLayerInfo } from "./target.ts";

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

/** One image of a recorded chain. */
export interface RecordedLayer extends DiskLayerInfo {
  /** Its identity at the checkpoint. */
  readonly identity: DiskIdentity;
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

/** Throws naming the disk and file when `layer` is not as recorded (a changed parent). */
export function checkLayer(diskId: string, layer: RecordedLayer, checkpoint: string): void {
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
   * overlay over each writable disk (`<top>.<tag>.qcow2`, beside its top).
   */
  static async prepare(
    disks: readonly CheckpointDisk[],
    policy: DiskPolicy,
    checkpoint: string,
    tag: string,
  ): Promise<DiskStep> {
    const prepared: Prepared[] = [];
    const step = new DiskStep(policy, prepared, checkpoint, tag);
    try {
      for (const disk of disks) {
        const info = await disk.describe();
        if (info.kind === "iscsi") {
          throw new CheckpointError(
            `disk '${info.id}' is an iSCSI LUN (${info.url ?? "?"}): a checkpoint freezes a disk ` +
              "by putting a qcow2 overlay over it, and vmkit cannot read a LUN as a qcow2 backing " +
              "file; detach it (or keep that data on a file drive) to checkpoint this VM",
            { path: checkpoint },
          );
        }
        const top = info.layers[0];
        if (top === undefined) {
          throw new CheckpointError(`disk '${info.id}' has no image`, { path: checkpoint });
        }
        let overlay: string | undefined;
        if (!info.readOnly) {
          overlay = `${dirname(top.path)}/${basename(top.path)}.${tag}.qcow2`;
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
        const top = layers[0];
        if (top !== undefined) {
          const mode = (Deno.statSync(top.path).mode ?? 0o644) & 0o7777;
          this.#frozen.push({ path: top.path, mode });
          Deno.chmodSync(top.path, mode & 0o7555);
        }
      }
      for (const l of layers) fsyncPath(l.path);
      fsyncPath(dirname(layers[0]?.path ?? "."));
      out.push({
        id: d.info.id,
        readOnly: d.info.readOnly,
        size: d.info.size,
        layers: layers.map((l) => ({ ...l, identity: diskIdentity(l.path) })),
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
      if (
        typeof x.path !== "string" || (x.format !== "raw" && x.format !== "qcow2") ||
        !num(x.size) || id === undefined || !num(id.bytes) || !num(id.ino) ||
        !num(id.mtimeMs) || !num(id.headCrc)
      ) bad(`a layer of disk '${e.id}' is malformed`);
    }
  }
  return v as DisksRecord;
}
