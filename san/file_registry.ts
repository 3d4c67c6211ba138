/**
 * The embedded SUI registry: one append-only journal file shared by any number
 * of processes (format: `san/FORMAT.md`).
 *
 * Every write takes an exclusive `flock` on `<path>.lock`, catches up with
 * what other processes appended (or re-reads the file if another process
 * compacted it: the inode changed), appends its entries in one `write`, and
 * `fdatasync`s before returning, so a returned allocation survives a crash.
 * Every record carries a CRC-32C over its line number and bytes, so a
 * corrupt, removed or reordered complete record is refused with its line
 * number; only a trailing partial line (no newline) is a torn write, which
 * the next writer truncates (the killed caller never saw that allocation).
 * Concurrent calls in one process are group-committed: one lock and one fsync
 * for all of them. When the journal holds many more lines than live state it
 * is compacted by atomic replace (write temp, fsync, rename, fsync directory).
 *
 * A registry opened read-only writes nothing: it creates no lock file (it
 * takes a shared lock only if the lock file exists), truncates nothing and
 * does not create a missing journal. Nothing is ever written to a file that
 * does not start with a registry header.
 *
 * @module
 */

import { SuiRegistryError } from "./errors.ts";
import { classifyHeader, encodeRecords, HEADER_LEN, headerBytes, scanRecords } from "./journal.ts";
import {
  foreignFileError,
  peekHeader,
  readFully,
  statJournal,
  syncDir,
  writeAllAt,
  writeFileSynced,
} from "./journal_file.ts";
import {
  DEFAULT_QUARANTINE_MS,
  type RegistryEntry,
  type RegistryOptions,
  RegistryState,
  type SuiRegistry,
  vmKey,
} from "./registry.ts";
import {
  randomSuiGenerator,
  type SuiGenerator,
  type SuiRecord,
  type SuiType,
  validateVmId,
} from "./sui.ts";

/** Compact when the journal grew by this many lines plus its size after the last compaction. */
const COMPACT_SLACK = 4096;

type Op = (state: RegistryState, out: RegistryEntry[]) => void;

interface Pending {
  op: Op;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * A registry stored in a local journal file.
 *
 * @example
 * ```ts ignore
 * // ignore: needs a writable /var/lib/vmkit
 * const reg = await FileSuiRegistry.open("/var/lib/vmkit/sui.journal");
 * const rec = await reg.alloc("vm-1", "iqn");
 * console.log(rec.sui);
 * await reg.close();
 * ```
 */
export class FileSuiRegistry implements SuiRegistry {
  /** Path of the journal. */
  readonly path: string;
  /** True when opened read-only: nothing is ever written. */
  readonly readOnly: boolean;
  /** The lock file: created by writers; a reader opens it only if it exists. */
  #lockFile: Deno.FsFile | undefined;
  #file: Deno.FsFile | undefined;
  #ino = -1;
  #offset = 0;
  #lines = 0;
  /** Journal format version of the file read (1 is migrated to 2 by the first writer). */
  #version: 1 | 2 = 2;
  /** Lines right after the last compaction (or load): the growth baseline. */
  #baseLines = 0;
  readonly #state = new RegistryState();
  readonly #generate: SuiGenerator;
  readonly #quarantineMs: number;
  readonly #now: () => number;
  #queue: Pending[] = [];
  #running = false;
  #drained: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(path: string, lockFile: Deno.FsFile | undefined, options: RegistryOptions) {
    this.path = path;
    this.readOnly = options.readOnly ?? false;
    this.#lockFile = lockFile;
    this.#generate = options.generate ?? randomSuiGenerator(options);
    this.#quarantineMs = options.quarantineMs ?? DEFAULT_QUARANTINE_MS;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Opens the registry journal at `path`; a writer creates it if needed. A
   * file that is not a journal is refused without being touched.
   */
  static async open(path: string, options: RegistryOptions = {}): Promise<FileSuiRegistry> {
    const st = await statJournal(path);
    if (st !== undefined && (await peekHeader(path)).kind === "foreign") {
      throw foreignFileError(path);
    }
    let lockFile: Deno.FsFile | undefined;
    if (!options.readOnly) {
      try {
        lockFile = await Deno.open(`${path}.lock`, { read: true, write: true, create: true });
      } catch (err) {
        throw new SuiRegistryError(
          `cannot open the registry lock file '${path}.lock': ${(err as Error).message}; ` +
            `check that the directory exists and is writable`,
          { cause: err },
        );
      }
    }
    const reg = new FileSuiRegistry(path, lockFile, options);
    try {
      await reg.#run((): void => {});
    } catch (err) {
      reg.#closeFiles();
      throw err;
    }
    return reg;
  }

  /** Runs `op` under the lock with a fresh state; resolves once its entries are durable. */
  #run(op: Op): Promise<void> {
    if (this.#closed) {
      return Promise.reject(new SuiRegistryError(`registry '${this.path}' is closed`));
    }
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ op, resolve, reject });
      if (!this.#running) this.#drained = this.#drain();
    });
  }

  /** Takes the lock (shared for a reader, if there is a lock file at all). */
  async #lock(): Promise<void> {
    if (this.readOnly && this.#lockFile === undefined) {
      try {
        this.#lockFile = await Deno.open(`${this.path}.lock`, { read: true });
      } catch (err) {
        // No lock file: no writer ever ran here; read the journal as it is.
        if (!(err instanceof Deno.errors.NotFound)) throw err;
        return;
      }
    }
    await this.#lockFile?.lock(!this.readOnly);
  }

  async #drain(): Promise<void> {
    this.#running = true;
    while (this.#queue.length > 0) {
      const batch = this.#queue;
      this.#queue = [];
      try {
        await this.#lock();
        try {
          await this.#refresh();
          const out: RegistryEntry[] = [];
          const errors: unknown[] = [];
          for (const p of batch) {
            const mark = out.length;
            try {
              p.op(this.#state, out);
              errors.push(undefined);
            } catch (err) {
              // Its partial entries are not persisted; the state is re-read below.
              out.length = mark;
              errors.push(err);
            }
          }
          if (out.length > 0) await this.#append(out);
          // A failed op may have touched the state before throwing: re-read next time.
          if (errors.some((e) => e !== undefined)) this.#ino = -1;
          if (!this.readOnly && this.#lines > this.#baseLines * 2 + COMPACT_SLACK) {
            await this.#compact();
          }
          batch.forEach((p, i) => {
            const e = errors[i];
            if (e === undefined) p.resolve();
            else p.reject(e);
          });
        } finally {
          await this.#lockFile?.unlock();
        }
      } catch (err) {
        // State may be ahead of the file after a failed write: force a full re-read.
        this.#ino = -1;
        for (const p of batch) p.reject(err);
      }
    }
    this.#running = false;
  }

  /** Creates the journal with its header (lock held), unless someone else already did. */
  async #create(): Promise<void> {
    const tmp = `${this.path}.tmp`;
    await writeFileSynced(tmp, headerBytes());
    try {
      // link(2) fails if the path exists: a file created meanwhile is never clobbered.
      await Deno.link(tmp, this.path);
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    } finally {
      await Deno.remove(tmp);
    }
    await syncDir(this.path);
  }

  /** Resets the in-memory view to an unread file. */
  #reset(ino: number): void {
    this.#ino = ino;
    this.#offset = 0;
    this.#lines = 0;
    this.#baseLines = 0;
    this.#state.clear();
  }

  /** Brings the in-memory state up to date with the journal (lock held). */
  async #refresh(): Promise<void> {
    let st = await statJournal(this.path);
    if (st === undefined) {
      this.#file?.close();
      this.#file = undefined;
      this.#reset(-1);
      if (this.readOnly) return; // nothing allocated yet, and a reader creates nothing
      await this.#create();
      st = await statJournal(this.path);
      if (st === undefined) throw new SuiRegistryError(`registry '${this.path}' vanished`);
    }
    // Under the lock nobody renames the journal, so the path's inode is the file we open.
    if (this.#file === undefined || st.ino !== this.#ino) {
      this.#file?.close();
      this.#file = undefined;
      this.#file = await Deno.open(this.path, { read: true, write: !this.readOnly });
      this.#reset(st.ino ?? 0);
    }
    const f = this.#file;
    if (this.#offset === 0) {
      const h = classifyHeader(await readFully(f, 0, HEADER_LEN));
      if (h.kind === "foreign") throw foreignFileError(this.path);
      if (h.kind === "unborn") {
        // A crash while creating it left it empty or with part of its header.
        if (this.readOnly) return;
        await f.truncate(0);
        await writeAllAt(f, 0, headerBytes());
        await f.syncData();
        this.#version = 2;
      } else this.#version = h.version;
      this.#offset = HEADER_LEN;
      this.#lines = 1;
      st = await f.stat();
    }
    const size = st.size;
    if (size > this.#offset) {
      const buf = await readFully(f, this.#offset, size - this.#offset);
      const r = scanRecords(buf, this.#version, this.#lines + 1, this.path, (e) => {
        this.#state.apply(e);
      });
      this.#offset += r.consumed;
      this.#lines += r.lines;
      if (this.#offset < size && !this.readOnly) {
        // A crashed writer left a partial line; nobody saw it succeed, so drop it.
        await f.truncate(this.#offset);
        await f.syncData();
      }
    }
    if (this.#baseLines === 0) this.#baseLines = this.#lines;
    // The first writer to meet a version 1 journal rewrites it with checksums.
    if (this.#version === 1 && !this.readOnly) await this.#compact();
  }

  async #append(entries: RegistryEntry[]): Promise<void> {
    if (this.readOnly) {
      throw new SuiRegistryError(`registry '${this.path}' is opened read-only`);
    }
    const f = this.#file;
    if (f === undefined) throw new SuiRegistryError("registry journal is not open");
    const bytes = encodeRecords(entries, this.#lines + 1);
    await writeAllAt(f, this.#offset, bytes);
    await f.syncData();
    this.#offset += bytes.length;
    this.#lines += entries.length;
  }

  async #compact(): Promise<void> {
    const snap = this.#state.snapshot(this.#now(), this.#quarantineMs);
    const head = headerBytes();
    const body = encodeRecords(snap, 2);
    const bytes = new Uint8Array(head.length + body.length);
    bytes.set(head);
    bytes.set(body, head.length);
    await writeFileSynced(`${this.path}.tmp`, bytes);
    await Deno.rename(`${this.path}.tmp`, this.path);
    await syncDir(this.path);
    // Re-read what we wrote so expired quarantine entries are gone from memory too.
    this.#file?.close();
    this.#file = undefined;
    this.#ino = -1;
    await this.#refresh();
    this.#baseLines = this.#lines;
  }

  #checkWritable(): void {
    if (this.readOnly) {
      throw new SuiRegistryError(
        `registry '${this.path}' is opened read-only; open it for writing to change it`,
      );
    }
  }

  /** Returns the VM's SUI of `type`, allocating a unique one if needed; durable once resolved. */
  async alloc(vmId: string, type: SuiType = "iqn"): Promise<SuiRecord> {
    const recs = await this.allocMany([vmId], type);
    const r = recs[0];
    if (r === undefined) throw new SuiRegistryError("allocation returned nothing");
    return r;
  }

  /** Allocates (or returns) SUIs for many VMs in one durable step. */
  async allocMany(vmIds: readonly string[], type: SuiType = "iqn"): Promise<SuiRecord[]> {
    this.#checkWritable();
    for (const id of vmIds) validateVmId(id);
    const out: SuiRecord[] = [];
    await this.#run((state, entries) => {
      out.length = 0;
      const now = this.#now();
      for (const id of vmIds) {
        const plan = state.planAlloc(id, type, this.#generate, now, this.#quarantineMs);
        if ("op" in plan) {
          state.apply(plan);
          entries.push(plan);
          const rec = state.byVm.get(vmKey(id, type));
          if (rec === undefined) throw new SuiRegistryError("allocation vanished from state");
          out.push(rec);
        } else {
          out.push(plan);
        }
      }
    });
    return out;
  }

  /** The VM's SUI of `type`, if it holds one. */
  async get(vmId: string, type: SuiType = "iqn"): Promise<SuiRecord | undefined> {
    validateVmId(vmId);
    let rec: SuiRecord | undefined;
    await this.#run((state) => {
      rec = state.byVm.get(vmKey(vmId, type));
    });
    return rec;
  }

  /** Every live allocation, sorted by VM id then type. */
  async list(): Promise<SuiRecord[]> {
    let recs: SuiRecord[] = [];
    await this.#run((state) => {
      recs = state.list();
    });
    return recs;
  }

  /** Releases the VM's SUI of `type` (all types if omitted) into quarantine; returns what was released. */
  async release(vmId: string, type?: SuiType): Promise<SuiRecord[]> {
    this.#checkWritable();
    validateVmId(vmId);
    const released: SuiRecord[] = [];
    await this.#run((state, entries) => {
      released.length = 0;
      const types: SuiType[] = type === undefined ? ["iqn", "wwpn", "nqn"] : [type];
      const now = this.#now();
      for (const t of types) {
        const rec = state.byVm.get(vmKey(vmId, t));
        if (rec === undefined) continue;
        const e: RegistryEntry = { op: "release", vm: vmId, type: t, sui: rec.sui, at: now };
        state.apply(e);
        entries.push(e);
        released.push(rec);
      }
    });
    return released;
  }

  /** Closes the journal and lock files; the registry is unusable afterwards. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#drained;
    this.#closeFiles();
  }

  #closeFiles(): void {
    this.#file?.close();
    this.#file = undefined;
    this.#lockFile?.close();
    this.#lockFile = undefined;
  }
}
