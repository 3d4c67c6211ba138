/**
 * Active commit: copying an overlay's clusters down into its parent while the
 * overlay stays in use, then pivoting the writer to the parent (QEMU's active
 * commit, in its `copy-mode=write-blocking` form).
 *
 * How it stays correct with a live writer: the writer is switched to a
 * {@link CommitMirror} that writes to the overlay and, for every write below
 * the copy cursor, to the parent as well. Each copy step (read a chunk of
 * the overlay's allocated clusters, write them to the parent, advance the
 * cursor) runs synchronously, so no write can land between its read and its
 * write. Below the cursor the parent therefore always equals the overlay;
 * when the cursor reaches the end the two have converged and the writer is
 * switched to the parent.
 *
 * Resumable: every few chunks the parent is flushed and the cursor is saved
 * to a state file next to the overlay (`<overlay>.commit.json`, written to a
 * temporary name, synced, renamed). After a crash, `commit` on the same
 * overlay restarts from the saved cursor: copying is idempotent, and every
 * flushed write below the cursor reached both files. The state file is
 * removed after the pivot.
 *
 * The cursor is only trusted while the overlay is unchanged since it was
 * saved: the commit sets an autoclear feature bit in the overlay's header
 * (`AUTOCLEAR_COMMIT_MARKER`), which every writer that does not know it
 * (QEMU, or vmkit outside this commit) clears before its first write. A
 * resume that finds the bit gone starts over from the beginning.
 *
 * @module
 */

import { resolve } from "node:path";
import type { BlockDevice } from "./block_device.ts";
import { openImage } from "./chain.ts";
import { type DiskImage, settle } from "./disk_image.ts";
import { LiveOperationError } from "./errors.ts";
import { type BackgroundOptions, Pacer } from "./progress.ts";
import type { Qcow2Image } from "./qcow2.ts";
import { RawImage } from "./raw.ts";
import type { SwitchableDevice } from "./switchable_device.ts";
import { openQcow2Overlay } from "./overlay.ts";

/** Options for {@link commit}. */
export interface CommitOptions extends BackgroundOptions {
  /** The live writer's device; it is moved to the mirror, then to the parent. */
  switchable?: SwitchableDevice;
  /** Where progress is saved (default `<overlay>.commit.json`). */
  statePath?: string;
  /** Chunks between saved checkpoints of the cursor (default 16). */
  saveEvery?: number;
}

/** What {@link commit} did. */
export interface CommitResult {
  /** The parent, now holding everything; the writer's target if a switchable was given. */
  parent: DiskImage;
  /** Offset the copy started from (non-zero when resuming). */
  resumedFrom: number;
  /** Bytes copied into the parent by this run. */
  copied: number;
  /** A saved cursor was found but the overlay changed since: the copy started over. */
  restarted: boolean;
}

interface CommitState {
  version: 1;
  overlay: string;
  parent: string;
  cursor: number;
}

/**
 * The writer's target during a commit: writes go to the overlay, and to the
 * parent too when they fall below the copy cursor.
 */
export class CommitMirror implements BlockDevice {
  /** The overlay being committed. */
  readonly overlay: Qcow2Image;
  /** The parent receiving the overlay's data. */
  readonly parent: DiskImage;
  /** Everything below this offset is already in the parent. */
  cursor = 0;

  /** Creates a mirror of `overlay` into `parent`. */
  constructor(overlay: Qcow2Image, parent: DiskImage) {
    this.overlay = overlay;
    this.parent = parent;
  }

  /** Size of the overlay. */
  get size(): number {
    return this.overlay.size;
  }
  /** Reads from the overlay. */
  readSync(offset: number, buf: Uint8Array): void {
    this.overlay.readSync(offset, buf);
  }
  /** Writes to the overlay, and to the parent below the cursor. */
  writeSync(offset: number, data: Uint8Array): void {
    this.overlay.writeSync(offset, data);
    if (offset < this.cursor) this.parent.writeSync(offset, data);
  }
  /** Discards in the overlay, and in the parent below the cursor. */
  discardSync(offset: number, length: number): void {
    this.overlay.discardSync(offset, length);
    if (offset < this.cursor) this.parent.discardSync(offset, length);
  }
  /** Flushes the parent, then the overlay. */
  flushSync(): void {
    this.parent.flushSync();
    this.overlay.flushSync();
  }
  /** Async {@link CommitMirror.readSync}. */
  read(offset: number, buf: Uint8Array): Promise<void> {
    return settle(() => this.readSync(offset, buf));
  }
  /** Async {@link CommitMirror.writeSync}. */
  write(offset: number, data: Uint8Array): Promise<void> {
    return settle(() => this.writeSync(offset, data));
  }
  /** Async {@link CommitMirror.discardSync}. */
  discard(offset: number, length: number): Promise<void> {
    return settle(() => this.discardSync(offset, length));
  }
  /** Async {@link CommitMirror.flushSync}. */
  flush(): Promise<void> {
    return settle(() => this.flushSync());
  }
  /** Closes the overlay (and the parent if the overlay owns it). */
  close(): Promise<void> {
    return this.overlay.close();
  }

  /**
   * Bytes from `offset` the next {@link copyStep} should take: a whole run
   * the overlay does not allocate (nothing to copy, however long), else
   * at most `chunk`.
   */
  nextStep(offset: number, chunk: number): number {
    const rest = this.overlay.size - offset;
    const st = this.overlay.blockStatus(offset, rest);
    return st.kind === "unallocated" ? st.length : Math.min(chunk, rest);
  }

  /** Copies the overlay's allocation in `[offset, offset + length)` down; advances the cursor. */
  copyStep(offset: number, length: number, buf: Uint8Array): number {
    let copied = 0;
    let p = offset;
    const end = offset + length;
    while (p < end) {
      const st = this.overlay.blockStatus(p, end - p);
      if (st.kind === "data") {
        for (let q = p; q < p + st.length; q += buf.length) {
          const n = Math.min(buf.length, p + st.length - q);
          const part = n === buf.length ? buf : buf.subarray(0, n);
          this.overlay.readSync(q, part);
          this.parent.writeSync(q, part);
        }
        copied += st.length;
      } else if (st.kind === "zero") {
        this.parent.discardSync(p, st.length);
      }
      p += st.length;
    }
    this.cursor = end;
    return copied;
  }
}

function loadState(path: string): CommitState | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  const s = JSON.parse(text) as Partial<CommitState>;
  if (
    s.version !== 1 || typeof s.cursor !== "number" || !Number.isSafeInteger(s.cursor) ||
    s.cursor < 0 || typeof s.parent !== "string" || typeof s.overlay !== "string"
  ) {
    throw new LiveOperationError(`commit state file '${path}' is malformed; delete it to restart`);
  }
  return s as CommitState;
}

function saveState(path: string, state: CommitState): void {
  const tmp = `${path}.tmp`;
  const f = Deno.openSync(tmp, { write: true, create: true, truncate: true });
  try {
    f.writeSync(new TextEncoder().encode(JSON.stringify(state)));
    f.syncDataSync();
  } finally {
    f.close();
  }
  Deno.renameSync(tmp, path);
}

/**
 * The overlay's parent opened read-write, in place of the read-only one the
 * chain holds. The read-only one stops refusing writers first (its locks
 * drop to force-share), so the read-write open can take the write lock; if
 * that open fails, it goes back to its read locks.
 */
function writableParent(overlay: Qcow2Image): DiskImage {
  const b = overlay.backing;
  if (b === null) {
    throw new LiveOperationError(`'${overlay.path}' has no backing file to commit into`);
  }
  if (!b.readOnly) return b;
  b.relock("force-share");
  let fresh: DiskImage;
  try {
    fresh = openImage(b.path, {
      format: b.format,
      ...(b instanceof RawImage ? { formatProbed: b.probed } : {}),
    });
  } catch (err) {
    b.relock("read");
    throw err;
  }
  overlay.setBacking(fresh, undefined, true);
  return fresh;
}

/**
 * Commits `overlay` into its parent (see module doc). With a `switchable`,
 * the live writer keeps writing throughout and ends up on the parent. The
 * overlay file is left in place (its clusters now equal the parent's) and
 * is closed; the returned parent is open and owned by the caller.
 *
 * @example
 * ```ts
 * import { createImage } from "./chain.ts";
 * import { commit } from "./commit.ts";
 * const dir = await Deno.makeTempDir();
 * createImage(`${dir}/disk.qcow2`, { size: 1 << 20 }).closeSync();
 * createImage(`${dir}/disk.overlay.qcow2`, { backingFile: "disk.qcow2" }).closeSync();
 * const { parent } = await commit(`${dir}/disk.overlay.qcow2`, {
 *   onProgress: ({ done, total }) => console.error(`${done}/${total}`),
 * });
 * await parent.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function commit(
  overlayArg: Qcow2Image | string,
  options: CommitOptions = {},
): Promise<CommitResult> {
  const overlay = openQcow2Overlay(overlayArg, "commit");
  try {
    return await commitOpen(overlay, options);
  } catch (err) {
    // An overlay we opened ourselves is closed (with its chain) on failure;
    // the state file stays, so a later call resumes. A caller's overlay may
    // go on being written: the marker then goes at its next write.
    if (typeof overlayArg === "string") overlay.closeSync();
    else overlay.releaseCommitMarker();
    throw err;
  }
}

async function commitOpen(overlay: Qcow2Image, options: CommitOptions): Promise<CommitResult> {
  const statePath = options.statePath ?? `${overlay.path}.commit.json`;
  const parent = writableParent(overlay);
  const size = overlay.size;
  if (parent.size < size) parent.grow(size);
  const state: CommitState = {
    version: 1,
    overlay: resolve(overlay.path),
    parent: resolve(parent.path),
    cursor: 0,
  };
  const saved = loadState(statePath);
  let restarted = false;
  if (saved !== null) {
    if (saved.parent !== state.parent || saved.overlay !== state.overlay) {
      throw new LiveOperationError(
        `commit state '${statePath}' is for '${saved.overlay}' → '${saved.parent}', not this chain; ` +
          `delete it to restart`,
      );
    }
    // Trust the cursor only if nobody wrote the overlay since it was saved.
    if (overlay.commitMarker) state.cursor = Math.min(saved.cursor, size);
    else restarted = true;
  }
  const mirror = new CommitMirror(overlay, parent);
  mirror.cursor = state.cursor;
  const resumedFrom = state.cursor;
  if (options.switchable) await options.switchable.switchTo(mirror);
  const pacer = new Pacer(options);
  const chunk = Math.max(overlay.clusterSize, options.chunkSize ?? 1 << 20);
  const saveEvery = options.saveEvery ?? 16;
  const buf = new Uint8Array(chunk);
  let copied = 0;
  let steps = 0;
  // The cursor (0 when starting over) is durable before the marker vouches for it.
  saveState(statePath, state);
  overlay.setCommitMarker(true);
  options.onProgress?.({ done: state.cursor, total: size });
  while (mirror.cursor < size) {
    const n = mirror.nextStep(mirror.cursor, chunk);
    const c = mirror.copyStep(mirror.cursor, n, buf);
    copied += c;
    if (++steps % saveEvery === 0 || mirror.cursor >= size) {
      parent.flushSync();
      state.cursor = mirror.cursor;
      saveState(statePath, state);
    }
    options.onProgress?.({ done: mirror.cursor, total: size });
    await pacer.step(c);
  }
  if (options.switchable) {
    await options.switchable.switchTo(parent);
  } else {
    parent.flushSync();
  }
  overlay.flushSync();
  overlay.setCommitMarker(false);
  overlay.detachBacking();
  overlay.closeSync();
  Deno.removeSync(statePath);
  return { parent, resumedFrom, copied, restarted };
}
