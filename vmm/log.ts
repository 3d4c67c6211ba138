/**
 * Structured logs: one JSON object per line (`ts`, `level`, `module`, `msg`,
 * then the event's own fields), written to a file or named pipe (Firecracker's
 * `--log-path`, `PUT /logger`) or to stderr, filtered by level (`--level`:
 * Error, Warning, Info, Debug, Trace, Off) and optionally by module.
 *
 * Writes are queued, never awaited by the caller, and bounded: past
 * {@link MAX_PENDING_BYTES} waiting for a slow reader, lines are dropped and
 * counted ({@link JsonLogger.dropped}), so a stalled log reader can neither
 * block the VMM nor grow its memory.
 *
 * @module
 */

/** Log levels, least verbose first (Firecracker's names). */
export const LEVELS = ["Off", "Error", "Warning", "Info", "Debug", "Trace"] as const;
/** A log level. */
export type Level = typeof LEVELS[number];

/** Bytes of log lines that may wait for the file before lines are dropped. */
export const MAX_PENDING_BYTES = 1024 * 1024;

/** Where and what to log. */
export interface LoggerConfig {
  /** File or named pipe (appended to); absent: stderr. */
  readonly path?: string;
  /** Most verbose level written. */
  readonly level: Level;
  /** Only this module's lines. */
  readonly module?: string;
}

const enc = new TextEncoder();

/**
 * A JSON-lines logger.
 *
 * @example
 * ```ts
 * import { JsonLogger } from "./log.ts";
 * const log = new JsonLogger({ vm: "web" });
 * await log.configure({ level: "Info" });
 * log.info("run", "vm started", { vcpus: 2 }); // {"ts":"…","level":"info","module":"run","msg":"vm started","vm":"web","vcpus":2}
 * await log.close();
 * ```
 */
export class JsonLogger {
  readonly #base: Record<string, unknown>;
  #level = 0;
  #module: string | undefined;
  #file: Deno.FsFile | undefined;
  #toStderr = false;
  #tail: Promise<void> = Promise.resolve();
  #pending = 0;
  #dropped = 0;
  #failed: Error | undefined;

  /** A logger (off until {@link configure}) adding `base` fields to every line. */
  constructor(base: Record<string, unknown> = {}) {
    this.#base = base;
  }

  /** Lines dropped because the file fell behind or failed. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Starts (or changes) logging; opens `config.path` for appending. */
  async configure(config: LoggerConfig): Promise<void> {
    const level = LEVELS.indexOf(config.level);
    if (level < 0) throw new Error(`log: unknown level '${config.level}'`);
    let file: Deno.FsFile | undefined;
    if (config.path !== undefined && level > 0) {
      try {
        file = await Deno.open(config.path, { append: true, create: true });
      } catch (err) {
        throw new Error(`cannot open log file '${config.path}': ${(err as Error).message}`);
      }
    }
    await this.#tail;
    this.#file?.close();
    this.#file = file;
    this.#toStderr = config.path === undefined;
    this.#level = level;
    this.#module = config.module;
    this.#failed = undefined;
  }

  /** Whether a line of `level` from `module` would be written. */
  enabled(level: Level, module: string): boolean {
    const l = LEVELS.indexOf(level);
    return l > 0 && l <= this.#level && (this.#module === undefined || this.#module === module);
  }

  /** Logs `msg` with `fields` at `level`. */
  log(level: Level, module: string, msg: string, fields: Record<string, unknown> = {}): void {
    if (!this.enabled(level, module)) return;
    const line = JSON.stringify({
      ts: new Date().toISOString(),
      level: level.toLowerCase(),
      module,
      msg,
      ...this.#base,
      ...fields,
    }) + "\n";
    const bytes = enc.encode(line);
    if (this.#toStderr) {
      Deno.stderr.writeSync(bytes);
      return;
    }
    const file = this.#file;
    if (file === undefined || this.#failed !== undefined) {
      this.#dropped++;
      return;
    }
    if (this.#pending + bytes.length > MAX_PENDING_BYTES) {
      this.#dropped++;
      return;
    }
    this.#pending += bytes.length;
    this.#tail = this.#tail.then(async () => {
      try {
        let off = 0;
        while (off < bytes.length) off += await file.write(bytes.subarray(off));
      } catch (err) {
        this.#failed = err as Error;
        this.#dropped++;
      } finally {
        this.#pending -= bytes.length;
      }
    });
  }

  /** Logs at Error. */
  error(module: string, msg: string, fields?: Record<string, unknown>): void {
    this.log("Error", module, msg, fields);
  }

  /** Logs at Warning. */
  warn(module: string, msg: string, fields?: Record<string, unknown>): void {
    this.log("Warning", module, msg, fields);
  }

  /** Logs at Info. */
  info(module: string, msg: string, fields?: Record<string, unknown>): void {
    this.log("Info", module, msg, fields);
  }

  /** Logs at Debug. */
  debug(module: string, msg: string, fields?: Record<string, unknown>): void {
    this.log("Debug", module, msg, fields);
  }

  /** Waits for queued lines, then closes the file. */
  async close(): Promise<void> {
    await this.#tail;
    this.#file?.close();
    this.#file = undefined;
    this.#level = 0;
  }
}
