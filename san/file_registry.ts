/**
 * The embedded SUI registry: one append-only journal file shared by any number
 * of processes.
 *
 * Every operation takes an exclusive `flock` on `<path>.lock`, catches up with
 * what other processes appended (or re-reads the file if another process
 * compacted it: the inode changed), appends its entries in one `write`, and
 * `fdatasync`s before returning, so a returned allocation survives a crash. A
 * process killed mid-append leaves a torn last line without its newline; the
 * next writer truncates it (the killed caller never saw that allocation).
 * Concurrent calls in one process are group-committed: one lock and one fsync
 * for all of them. When the journal holds many more lines than live state it
 * is compacted by atomic replace (write temp, fsync, rename, fsync directory).
 *
 * @module
 */

import { SuiRegistryError } from "./errors.ts";
import {
  DEFAULT_QUARANTINE_MS,
  parseEntry,
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

const HEADER = '{"vmkit-sui-registry":1}\n';
const NEWLINE = 0x0a;
/** Compact when the journal grew by this many lines plus its size after the last compaction. */
const COMPACT_SLACK = 4096;

type Op = (state: RegistryState, out: RegistryEntry[]) => void;

interface Pending {
  op: Op;
  resolve: () => void;
  reject: (err: unknown) => void;
}

function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? (i === 0 ? "/" : ".") : path.slice(0, i);
}

/**
 * A registry stored in a local journal file.
 *
 * @example
 * ```ts
 * const reg = await FileSuiRegistry.open("/var/lib/vmkit/sui.journal");
 * const rec = await reg.alloc("vm-1", "iqn");
 * console.log(rec.sui);
 * await reg.close();
 * ```
 */
export class FileSuiRegistry implements SuiRegistry {
  /** Path of the journal. */
  readonly path: string;
  readonly #lockFile: Deno.FsFile;
  #file: Deno.FsFile | undefined;
  #ino = -1;
  #offset = 0;
  #lines = 0;
  /** Lines right after the last compaction (or load): the growth baseline. */
  #baseLines = 0;
  readonly #state = new RegistryState();
  readonly #generate: SuiGenerator;
  readonly #quarantineMs: number;
  readonly #now: () => number;
  readonly #encoder = new TextEncoder();
  readonly #decoder = new TextDecoder();
  #queue: Pending[] = [];
  #running = false;
  #drained: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(path: string, lockFile: Deno.FsFile, options: RegistryOptions) {
    this.path = path;
    this.#lockFile = lockFile;
    this.#generate = options.generate ?? randomSuiGenerator(options);
    this.#quarantineMs = options.quarantineMs ?? DEFAULT_QUARANTINE_MS;
    this.#now = options.now ?? Date.now;
  }

  /** Opens (creating if needed) the registry journal at `path`. */
  static async open(path: string, options: RegistryOptions = {}): Promise<FileSuiRegistry> {
    let lockFile: Deno.FsFile;
    try {
      lockFile = await Deno.open(`${path}.lock`, { read: true, write: true, create: true });
    } catch (err) {
      throw new SuiRegistryError(
        `cannot open the registry lock file '${path}.lock': ${(err as Error).message}; ` +
          `check that the directory exists and is writable`,
        { cause: err },
      );
    }
    const reg = new FileSuiRegistry(path, lockFile, options);
    try {
      await reg.#run((): void => {});
    } catch (err) {
      lockFile.close();
      reg.#file?.close();
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

  async #drain(): Promise<void> {
    this.#running = true;
    while (this.#queue.length > 0) {
      const batch = this.#queue;
      this.#queue = [];
      try {
        await this.#lockFile.lock(true);
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
          if (this.#lines > this.#baseLines * 2 + COMPACT_SLACK) await this.#compact();
          batch.forEach((p, i) => {
            const e = errors[i];
            if (e === undefined) p.resolve();
            else p.reject(e);
          });
        } finally {
          await this.#lockFile.unlock();
        }
      } catch (err) {
        // State may be ahead of the file after a failed write: force a full re-read.
        this.#ino = -1;
        for (const p of batch) p.reject(err);
      }
    }
    this.#running = false;
  }

  /** Brings the in-memory state up to date with the journal (lock held). */
  async #refresh(): Promise<void> {
    let st: Deno.FileInfo | undefined;
    try {
      st = await Deno.stat(this.path);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    if (st === undefined) {
      this.#file?.close();
      this.#file = undefined;
      const f = await Deno.open(this.path, { read: true, append: true, create: true });
      await f.write(this.#encoder.encode(HEADER));
      await f.syncData();
      await this.#syncDir();
      this.#file = f;
      this.#ino = (await f.stat()).ino ?? 0;
      this.#offset = HEADER.length;
      this.#lines = 1;
      this.#baseLines = 1;
      this.#state.clear();
      return;
    }
    // Under the lock nobody renames the journal, so the path's inode is the file we open.
    if (this.#file === undefined || st.ino !== this.#ino) {
      this.#file?.close();
      this.#file = await Deno.open(this.path, { read: true, append: true });
      this.#ino = st.ino ?? 0;
      this.#offset = 0;
      this.#lines = 0;
      this.#baseLines = 0;
      this.#state.clear();
    }
    const size = st.size;
    if (size <= this.#offset) return;
    const buf = new Uint8Array(size - this.#offset);
    await this.#file.seek(this.#offset, Deno.SeekMode.Start);
    let got = 0;
    while (got < buf.length) {
      const n = await this.#file.read(buf.subarray(got));
      if (n === null) break;
      got += n;
    }
    const end = buf.subarray(0, got).lastIndexOf(NEWLINE) + 1;
    const text = this.#decoder.decode(buf.subarray(0, end));
    const lines = text.split("\n");
    lines.pop();
    let consumed = 0;
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i] ?? "";
      const lineBytes = this.#encoder.encode(line).length + 1;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch (err) {
        if (i === lines.length - 1) break; // torn tail from a crashed writer
        throw new SuiRegistryError(
          `registry journal '${this.path}' is corrupt at byte ${this.#offset + consumed}; ` +
            `restore it from backup or remove the bad line`,
          { cause: err },
        );
      }
      if (this.#offset + consumed === 0) {
        if (typeof value !== "object" || value === null || !("vmkit-sui-registry" in value)) {
          throw new SuiRegistryError(`'${this.path}' is not a vmkit SUI registry journal`);
        }
      } else {
        this.#state.apply(parseEntry(value));
      }
      consumed += lineBytes;
      this.#lines++;
    }
    this.#offset += consumed;
    if (this.#baseLines === 0) this.#baseLines = this.#lines;
    if (this.#offset < size) {
      // A crashed writer left a partial entry; nobody saw it succeed, so drop it.
      await this.#file.truncate(this.#offset);
      await this.#file.syncData();
    }
  }

  async #append(entries: RegistryEntry[]): Promise<void> {
    const f = this.#file;
    if (f === undefined) throw new SuiRegistryError("registry journal is not open");
    let text = "";
    for (const e of entries) text += JSON.stringify(e) + "\n";
    const bytes = this.#encoder.encode(text);
    let done = 0;
    while (done < bytes.length) done += await f.write(bytes.subarray(done));
    await f.syncData();
    this.#offset += bytes.length;
    this.#lines += entries.length;
  }

  async #compact(): Promise<void> {
    const tmp = `${this.path}.tmp`;
    let text = HEADER;
    const snap = this.#state.snapshot(this.#now(), this.#quarantineMs);
    for (const e of snap) text += JSON.stringify(e) + "\n";
    const bytes = this.#encoder.encode(text);
    const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      let done = 0;
      while (done < bytes.length) done += await f.write(bytes.subarray(done));
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, this.path);
    await this.#syncDir();
    // Re-read what we wrote so expired quarantine entries are gone from memory too.
    this.#file?.close();
    this.#file = undefined;
    this.#ino = -1;
    await this.#refresh();
    this.#baseLines = this.#lines;
  }

  async #syncDir(): Promise<void> {
    const d = await Deno.open(dirname(this.path), { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
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
    this.#file?.close();
    this.#file = undefined;
    this.#lockFile.close();
  }
}
