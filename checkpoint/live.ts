/**
 * Live checkpoints of a running machine, the method of US 8,266,404: while
 * the VM runs, write-protect its RAM (userfaultfd) and prepare the file;
 * stop it briefly, make every page copy-on-write (re-protecting only the
 * pages written since), save CPU and device state to memory, switch disks,
 * let it run again; then save the unmodified pages in the background in
 * address order while a fault thread copies any page the guest is about to
 * change first. The pause does not grow with memory size.
 *
 * @example
 * ```ts ignore
 * import { Checkpointer } from "./live.ts";
 * import type { CheckpointTarget, MachineCpuState } from "./target.ts";
 * declare const machine: CheckpointTarget; // a running machine: not available to a doc test
 * using cp = await Checkpointer.create(machine);
 * const save = await cp.checkpoint({ path: "/tmp/vm.ckpt" });
 * console.log(`paused ${save.pauseUs} µs`);
 * console.log(await save.done); // bytes, pages, ...
 * ```
 *
 * @module
 */

import {
  crc32c,
  openUffdShim,
  PageKind,
  scanPages,
  WP_PAGE,
  type WpCounters,
  WriteProtect,
} from "../native/uffd_ffi.ts";
import { CheckpointError } from "./errors.ts";
import {
  encodeHeader,
  FLAG_DIFF,
  FLAG_EXTERNAL_MEMORY,
  FORMAT_VERSION,
  HEADER_BYTES,
  idHex,
  PAGE,
  Section,
} from "./format.ts";
import { dirOf, finishFile, metadataStart, PendingFile } from "./file_io.ts";
import { encodePageMap, Kind, type RegionPages } from "./pagemap.ts";
import { encodeCpuState, encodeDevices } from "./state_codec.ts";
import { type DiskPolicy, DiskStep } from "./disks.ts";
import type { CheckpointTarget, MachineCpuState } from "./target.ts";

/** Pages per writer batch (2 MiB: one huge page). */
const BATCH = 512;
/** Re-protect rounds before the pause at most, and the pending count that ends them. */
const MAX_ROUNDS = 8;
const ROUND_TARGET = 64;
/** Milliseconds of writing between yields to the event loop (API requests, timers). */
const YIELD_MS = 40;
/** Ring pages taken per drain. */
const DRAIN = 64;
/** A page of zeros: what a diff's external memory file gets for a page zeroed since its parent. */
const ZERO_PAGE = new Uint8Array(PAGE);

/** Options of {@link Checkpointer.checkpoint}. */
export interface CheckpointOptions {
  /** Where the checkpoint goes (written under a temporary name, then renamed). */
  path: string;
  /** Put memory in this separate plain RAM image instead (Firecracker's `mem_file_path`). */
  memFilePath?: string;
  /** Save only the pages written since the previous checkpoint of this checkpointer. */
  diff?: boolean;
  /** What happens to the disks' parents (default `keep-parent`; see `disks.ts`). */
  diskPolicy?: DiskPolicy;
  /**
   * Drive id to the path of the qcow2 overlay its disk step creates (a new
   * file): required for a drive that is an iSCSI LUN; for a file drive it
   * replaces the default `<top>.<id8>.qcow2`.
   */
  overlays?: Readonly<Record<string, string>>;
}

/** Progress of a background save. */
export interface SaveProgress {
  /** `saving`, `done` or `failed`. */
  state: "saving" | "done" | "failed";
  /** Page bytes handled so far. */
  bytesWritten: number;
  /** Page bytes to handle in all. */
  bytesTotal: number;
  /** The failure, when failed. */
  error?: string;
  /** What went wrong after the checkpoint was complete (e.g. committing an overlay back). */
  warning?: string;
  /** How long the VM was stopped (µs). */
  pauseUs?: number;
}

/** What a finished save reports. */
export interface SaveSummary {
  /** Final path. */
  path: string;
  /** The checkpoint's id (hex). */
  id: string;
  /** Whether it is a diff. */
  diff: boolean;
  /** Bytes of the checkpoint file (and memory file). */
  fileBytes: number;
  /** Pages stored with data. */
  dataPages: number;
  /** Pages recorded as zero. */
  zeroPages: number;
  /** Pages left to the parent (diffs). */
  inheritedPages: number;
  /** Pages the fault thread copied before the guest changed them. */
  copiedPages: number;
  /** Milliseconds from the end of the pause to the durable file. */
  saveMs: number;
  /** What went wrong after the checkpoint was complete (it is still valid). */
  warning?: string;
}

/** The parts of a pause (µs, host clock); they add up to {@link LiveSave.pauseUs}. */
export interface PausePhases {
  /** Asking the vCPUs to stop until none runs guest code (each then saves its own state). */
  stopUs: number;
  /** Re-protecting the pages written since the last round (userfaultfd). */
  freezeUs: number;
  /** The VM's state (irqchip, PIT, clock), then the vCPUs' (waiting for their threads). */
  cpuUs: number;
  /** Saving the devices' state. */
  devicesUs: number;
  /** Letting the vCPUs run again. */
  resumeUs: number;
}

/** A checkpoint in progress: the VM runs again; the file is being written. */
export interface LiveSave {
  /** The checkpoint's id (hex; in the header from the first byte written). */
  id: string;
  /** How long the VM was stopped (µs, host clock). */
  pauseUs: number;
  /** Pages re-protected inside the pause. */
  pausePages: number;
  /** Where the pause went. */
  pausePhases: PausePhases;
  /** Resolves when the file is durable under its name; rejects on failure (no file then). */
  done: Promise<SaveSummary>;
  /** Current progress. */
  progress(): SaveProgress;
}

/** Options of {@link Checkpointer.create}. */
export interface CheckpointerOptions {
  /**
   * Keep tracking writes after a save (pages stay write-protected until first
   * written), which diff checkpoints need. Default true.
   */
  track?: boolean;
  /** Pages of the fault thread's copy ring (default 4096: 16 MiB). */
  ringPages?: number;
  /**
   * Lazily restored RAM: per region, the host address of a read-only source
   * mapping (`MemorySource`) that missing pages are filled from. The
   * userfaultfd is then registered at once, before the VM runs.
   */
  sources?: readonly bigint[];
  /**
   * With `sources`: the shared page store each region is mapped from
   * (`MAP_PRIVATE` of `fd` at `offset`; see `page_store.ts`).
   */
  stores?: readonly { readonly fd: number; readonly offset: number }[];
  /** The checkpoint the RAM was restored from: the parent of a first diff. */
  restoredFrom?: { path: string; id: Uint8Array };
}

/** The last complete checkpoint, a diff's parent. */
interface Parent {
  path: string;
  id: Uint8Array;
}

/**
 * Checkpoints one machine: owns the userfaultfd over its RAM. One checkpoint
 * at a time; {@link busy} says whether one is being written.
 */
export class Checkpointer implements Disposable {
  readonly #target: CheckpointTarget;
  readonly #track: boolean;
  readonly #ringPages: number;
  #wp: WriteProtect | undefined;
  #protected = false;
  #busy = false;
  #parent: Parent | undefined;
  #trackingSinceParent = false;
  #last: SaveProgress | undefined;

  private constructor(target: CheckpointTarget, opts: CheckpointerOptions) {
    this.#target = target;
    this.#track = opts.track ?? true;
    this.#ringPages = opts.ringPages ?? 4096;
  }

  /** A checkpointer for `target` (nothing is protected until the first checkpoint). */
  static async create(
    target: CheckpointTarget,
    opts: CheckpointerOptions = {},
  ): Promise<Checkpointer> {
    await openUffdShim();
    const cp = new Checkpointer(target, opts);
    if (opts.sources !== undefined) {
      const sources = opts.sources;
      if (sources.length !== target.regions.length) {
        throw new CheckpointError(
          `${sources.length} memory sources for ${target.regions.length} regions`,
        );
      }
      const stores = opts.stores;
      const wp = WriteProtect.create(
        target.regions.map((r, i) => {
          const store = stores?.[i];
          return {
            hostAddr: r.hostAddr,
            size: r.size,
            source: sources[i] ?? 0n,
            ...(store === undefined ? {} : { store }),
          };
        }),
        cp.#ringPages,
      );
      cp.#wp = wp;
      if (cp.#track) {
        // Fill pages protected: every write from the first instruction on is tracked.
        wp.setProtecting(true);
        cp.#protected = true;
        if (opts.restoredFrom !== undefined) {
          cp.#parent = opts.restoredFrom;
          cp.#trackingSinceParent = true;
        }
      }
    }
    return cp;
  }

  /** Whether a checkpoint is being written. */
  get busy(): boolean {
    return this.#busy;
  }

  /** Progress of the current or last checkpoint. */
  progress(): SaveProgress | undefined {
    return this.#last === undefined ? undefined : { ...this.#last };
  }

  /** The write-protect context's counters (faults, copies, fault time). */
  counters(): WpCounters | undefined {
    return this.#wp?.counters();
  }

  /**
   * Takes a checkpoint; resolves once the VM runs again (a paused VM stays
   * paused), with the pause and a promise of the finished file.
   */
  async checkpoint(opts: CheckpointOptions): Promise<LiveSave> {
    if (this.#busy) {
      throw new CheckpointError("a checkpoint is already being written", { path: opts.path });
    }
    const diff = opts.diff ?? false;
    const parent = this.#parent;
    if (diff && (parent === undefined || !this.#trackingSinceParent)) {
      throw new CheckpointError(
        "a diff needs a previous complete checkpoint of this VM taken with write tracking on",
        { path: opts.path },
      );
    }
    this.#busy = true;
    try {
      return await this.#checkpoint(opts, diff ? parent : undefined);
    } catch (err) {
      this.#busy = false;
      throw err;
    }
  }

  async #checkpoint(opts: CheckpointOptions, parent: Parent | undefined): Promise<LiveSave> {
    const t = this.#target;
    const regions = t.regions;
    const memBytes = regions.reduce((n, r) => n + r.size, 0);
    const external = opts.memFilePath !== undefined;
    const id = crypto.getRandomValues(new Uint8Array(16));
    const parentId = parent?.id ?? new Uint8Array(16);
    const flags = (parent !== undefined ? FLAG_DIFF : 0) | (external ? FLAG_EXTERNAL_MEMORY : 0);
    const memOffset = external ? 0 : HEADER_BYTES;
    const file = PendingFile.create(opts.path, metadataStart(memBytes, external), {
      direct: !external,
    });
    let memFile: PendingFile | undefined;
    try {
      if (opts.memFilePath !== undefined) {
        memFile = PendingFile.create(opts.memFilePath, memBytes, { direct: true });
      }
      // A header without sections: a reader of a partial file is told it is incomplete.
      file.write(
        encodeHeader({
          version: FORMAT_VERSION,
          flags,
          id,
          parentId,
          memBytes,
          memOffset,
          tableOffset: 0,
          sectionCount: 0,
          tableCrc: 0,
          createdMs: Date.now(),
        }, (b) => crc32c(b)),
        0,
      );
    } catch (err) {
      file.abandon();
      memFile?.abandon();
      throw err;
    }
    // Overlays over the disks, armed while the VM runs (the quiesce switches them).
    let step: DiskStep;
    try {
      step = await DiskStep.prepare(
        t.disks?.() ?? [],
        opts.diskPolicy ?? "keep-parent",
        opts.path,
        idHex(id).slice(0, 8),
        opts.overlays,
      );
    } catch (err) {
      file.abandon();
      memFile?.abandon();
      throw err;
    }

    // ---- while the VM runs: protect, converge ----
    let wp = this.#wp;
    if (wp === undefined) {
      wp = WriteProtect.create(
        regions.map((r) => ({ hostAddr: r.hostAddr, size: r.size })),
        this.#ringPages,
      );
      this.#wp = wp;
      this.#protected = false;
    }
    wp.reset(parent !== undefined);
    if (!this.#protected) wp.protectAll();
    for (let round = 0; round < MAX_ROUNDS && wp.pending() > ROUND_TARGET; round++) wp.reprotect();
    const diffTotal = parent === undefined ? memBytes : this.#dirtyBytes(wp);

    // ---- the pause ----
    try {
      await t.quiesceDevices();
    } catch (err) {
      this.#abandon(wp, file, memFile);
      await step.abandon(false);
      await t.resumeDevices();
      throw err;
    }
    const wasPaused = t.paused;
    const t0 = performance.now();
    let pausePages = 0;
    let cpuState: MachineCpuState;
    let deviceState: Record<string, Uint8Array>;
    const marks: number[] = [];
    try {
      if (!wasPaused) await t.pause();
      marks.push(performance.now());
      pausePages = wp.freeze();
      marks.push(performance.now());
      deviceState = t.saveDevices();
      marks.push(performance.now());
      // Last: the vCPU threads save their own state meanwhile.
      cpuState = t.saveCpuState();
      marks.push(performance.now());
    } catch (err) {
      // Leave the machine as it was: running, unprotected, no file.
      this.#abandon(wp, file, memFile);
      if (!wasPaused) await t.resume();
      await t.resumeDevices();
      await step.abandon(true);
      throw err;
    }
    if (!wasPaused) await t.resume();
    const end = performance.now();
    const pauseUs = Math.round((end - t0) * 1000);
    const us = (a: number, b: number): number => Math.round((b - a) * 1000);
    const [stopped = t0, frozen = t0, devsaved = t0, saved = t0] = marks;
    const pausePhases: PausePhases = {
      stopUs: us(t0, stopped),
      freezeUs: us(stopped, frozen),
      devicesUs: us(frozen, devsaved),
      cpuUs: us(devsaved, saved),
      resumeUs: us(saved, end),
    };
    await t.resumeDevices();
    // Encoded once the VM runs again: the saved state is plain data by now.
    const cpu = encodeCpuState(cpuState);
    const devices = encodeDevices(deviceState);

    // ---- background save ----
    const progress: SaveProgress = {
      state: "saving",
      bytesWritten: 0,
      bytesTotal: diffTotal + step.copyBytes,
      pauseUs,
    };
    this.#last = progress;
    const config = {
      machine: t.describe(),
      memBytes,
      regions: regions.map((r) => ({ guestAddr: r.guestAddr, size: r.size })),
    };
    const started = performance.now();
    const done = (async (): Promise<SaveSummary> => {
      try {
        // In a diff's own memory file a hole means "as in the parent" (Firecracker's diff
        // memory file, merged by its rebase-snap), so a page zeroed since is written out.
        const zeroPages = parent !== undefined && memFile !== undefined;
        const pages = await this.#writePages(wp, file, memFile, memOffset, progress, zeroPages);
        const pageBytes = progress.bytesWritten;
        const disks = await step.record((done) => progress.bytesWritten = pageBytes + done);
        const sections: Array<[number, Uint8Array]> = [
          [Section.CONFIG, json(config)],
          [Section.CPU, cpu],
          [Section.DEVICES, devices],
          [Section.PAGEMAP, encodePageMap(pages.map)],
          [Section.PAGECRC, pages.crcs],
        ];
        if (disks.disks.length > 0) sections.push([Section.DISKS, json(disks)]);
        if (parent !== undefined) {
          sections.push([
            Section.PARENT,
            json({ path: linkPath(opts.path, parent.path), id: idHex(parent.id) }),
          ]);
        }
        if (memFile !== undefined) {
          sections.push([Section.MEMFILE, json({ path: memFile.path, bytes: memBytes })]);
          memFile.commit();
        }
        const { bytes } = finishFile(file, metadataStart(memBytes, external), {
          header: {
            version: FORMAT_VERSION,
            flags,
            id,
            parentId,
            memBytes,
            memOffset,
            createdMs: Date.now(),
          },
          sections,
        });
        this.#parent = { path: opts.path, id };
        this.#trackingSinceParent = this.#track;
        const saveMs = performance.now() - started;
        let warning: string | undefined;
        try {
          await step.finish(); // copy-parent: the VM goes back onto its own files
        } catch (err) {
          // The checkpoint is complete; the VM goes on in its overlays, nothing is lost.
          warning = `the checkpoint is complete, but committing the disks back failed: ${
            (err as Error).message
          }; the VM goes on in its overlays`;
          progress.warning = warning;
        }
        progress.state = "done";
        return {
          path: opts.path,
          id: idHex(id),
          diff: parent !== undefined,
          fileBytes: bytes + (memFile === undefined ? 0 : memBytes),
          dataPages: pages.data,
          zeroPages: pages.zero,
          inheritedPages: pages.inherited,
          copiedPages: pages.copied,
          saveMs,
          ...(warning === undefined ? {} : { warning }),
        };
      } catch (err) {
        progress.state = "failed";
        progress.error = err instanceof Error ? err.message : String(err);
        this.#abandon(wp, file, memFile);
        await step.abandon(true);
        throw err;
      } finally {
        this.#busy = false;
      }
    })();
    // The caller may never await `done`; a failure is still reported through progress().
    done.catch(() => {});
    return {
      id: idHex(id),
      pauseUs,
      pausePages,
      pausePhases,
      done,
      progress: () => ({ ...progress }),
    };
  }

  /**
   * A save that cannot go on: nothing stays protected (the guest must never
   * wait on a dead save), tracking starts over, the files are removed.
   */
  #abandon(wp: WriteProtect, file: PendingFile, memFile: PendingFile | undefined): void {
    wp.abort();
    this.#protected = false;
    this.#trackingSinceParent = false;
    file.abandon();
    memFile?.abandon();
  }

  #dirtyBytes(wp: WriteProtect): number {
    let pages = 0;
    this.#target.regions.forEach((_r, i) => {
      for (const w of wp.dirtyMap(i)) pages += popcount(w);
    });
    return pages * PAGE;
  }

  /** Saves every page still to save, in address order, plus what the fault thread copies. */
  async #writePages(
    wp: WriteProtect,
    file: PendingFile,
    memFile: PendingFile | undefined,
    memOffset: number,
    progress: SaveProgress,
    zeroPages: boolean,
  ): Promise<
    {
      map: RegionPages[];
      crcs: Uint8Array;
      data: number;
      zero: number;
      inherited: number;
      copied: number;
    }
  > {
    const regions = this.#target.regions;
    const out = memFile ?? file;
    const base = memFile === undefined ? memOffset : 0;
    const kinds = regions.map((r) => new Uint8Array(r.size / PAGE)); // INHERIT until saved
    const crcs = regions.map((r) => new Uint32Array(r.size / PAGE));
    const fileOff: number[] = [];
    regions.reduce((off, r) => (fileOff.push(off), off + r.size), base);
    const bk = new Uint8Array(BATCH);
    const bc = new Uint32Array(BATCH);
    const ids = new BigUint64Array(DRAIN);
    const ring = new Uint8Array(DRAIN * WP_PAGE);
    const rk = new Uint8Array(DRAIN);
    const rc = new Uint32Array(DRAIN);
    const ringAddr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(ring)));
    let copied = 0;
    const drain = (): void => {
      for (;;) {
        const n = wp.ringTake(ids, ring);
        if (n === 0) return;
        scanPages(ringAddr, n, rk, rc);
        for (let i = 0; i < n; i++) {
          const id = ids[i] ?? 0n;
          const ri = Number(id >> 56n);
          const page = Number(id & 0xff_ffff_ffff_ffffn);
          const k = kinds[ri];
          const c = crcs[ri];
          const off = fileOff[ri];
          if (k === undefined || c === undefined || off === undefined) {
            throw new CheckpointError(`the fault thread reported page ${page} of region ${ri}`);
          }
          k[page] = rk[i] ?? Kind.ZERO;
          c[page] = rc[i] ?? 0;
          if (k[page] === Kind.DATA || (zeroPages && k[page] === Kind.ZERO)) {
            out.write(ring.subarray(i * WP_PAGE, (i + 1) * WP_PAGE), off + page * PAGE);
          }
          progress.bytesWritten += PAGE;
        }
        copied += n;
      }
    };
    let lastYield = performance.now();
    for (let ri = 0; ri < regions.length; ri++) {
      const r = regions[ri];
      const k = kinds[ri];
      const c = crcs[ri];
      const off = fileOff[ri];
      if (r === undefined || k === undefined || c === undefined || off === undefined) continue;
      const pages = r.size / PAGE;
      for (let first = 0; first < pages; first += BATCH) {
        const n = Math.min(BATCH, pages - first);
        const claimed = wp.claim(ri, first, n, bk, bc);
        if (claimed > 0) {
          let i = 0;
          while (i < n) {
            const kind = bk[i] ?? 0;
            if (kind === PageKind.NONE) {
              i++;
              continue;
            }
            k[first + i] = kind;
            c[first + i] = bc[i] ?? 0;
            if (kind !== PageKind.DATA) {
              if (zeroPages && kind === PageKind.ZERO) {
                out.write(ZERO_PAGE, off + (first + i) * PAGE);
              }
              i++;
              continue;
            }
            let j = i + 1;
            while (j < n && bk[j] === PageKind.DATA) {
              k[first + j] = Kind.DATA;
              c[first + j] = bc[j] ?? 0;
              j++;
            }
            out.writeFrom(
              r.hostAddr + BigInt((first + i) * PAGE),
              (j - i) * PAGE,
              off + (first + i) * PAGE,
            );
            i = j;
          }
          progress.bytesWritten += claimed * PAGE;
        }
        wp.release(ri, first, n, !this.#track);
        drain();
        if (performance.now() - lastYield > YIELD_MS) {
          await new Promise((res) => setTimeout(res, 0));
          lastYield = performance.now();
        }
      }
    }
    wp.sync(); // a copy begun before the last claim is in the ring now
    drain();
    wp.finish(this.#track);
    this.#protected = this.#track;
    let data = 0, zero = 0, inherited = 0;
    const crcList: number[] = [];
    kinds.forEach((k, ri) => {
      const c = crcs[ri];
      for (let p = 0; p < k.length; p++) {
        const kind = k[p];
        if (kind === Kind.DATA) {
          data++;
          crcList.push(c?.[p] ?? 0);
        } else if (kind === Kind.ZERO) zero++;
        else inherited++;
      }
    });
    const map = regions.map((r, i) => ({
      guestAddr: r.guestAddr,
      size: r.size,
      kinds: kinds[i] ?? new Uint8Array(),
    }));
    return {
      map,
      crcs: new Uint8Array(new Uint32Array(crcList).buffer),
      data,
      zero,
      inherited,
      copied,
    };
  }

  /**
   * Writes `data` into guest RAM at host address `hostAddr` (the VMM's own
   * write, e.g. a restore's new VM generation id) on this thread, handled as
   * a guest write is (recorded as written, a lazily restored page filled
   * first) but with no round trip to the fault thread. False when there is
   * no userfaultfd (nothing to fill or track: write the memory directly).
   * Throws while a checkpoint is being saved.
   */
  writeMemory(hostAddr: bigint, data: Uint8Array): boolean {
    if (this.#wp === undefined) return false;
    this.#wp.write(hostAddr, data);
    return true;
  }

  /**
   * Stops tracking: unprotects all guest RAM and closes the userfaultfd. For
   * lazily restored RAM, call only when the machine's memory is gone.
   */
  close(): void {
    this.#wp?.close();
    this.#wp = undefined;
    this.#protected = false;
    this.#trackingSinceParent = false;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** How a file at `from` records `to`: its name when they share a folder, else absolute. */
function linkPath(from: string, to: string): string {
  if (dirOf(from) === dirOf(to)) return to.slice(to.lastIndexOf("/") + 1);
  return to.startsWith("/") ? to : Deno.realPathSync(to);
}

function json(v: unknown): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(JSON.stringify(v));
}

function popcount(w: bigint): number {
  let n = 0;
  let x = w;
  while (x !== 0n) {
    x &= x - 1n;
    n++;
  }
  return n;
}
