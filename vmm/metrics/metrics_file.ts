/**
 * `--metrics-path FILE` (Firecracker's flag, and `PUT /metrics`): the
 * Prometheus text of the VMM's metrics written to a file every minute (as
 * Firecracker flushes), on `FlushMetrics` and when the VMM exits.
 *
 * A regular file is replaced atomically (written beside it, then renamed),
 * so a reader — node_exporter's textfile collector, `cat` — always sees one
 * whole exposition. A named pipe is written in place, one exposition per
 * flush. A flush that finds the previous one still waiting (a pipe with no
 * reader) returns that one instead of queueing another.
 *
 * @module
 */

/** Firecracker's metrics period. */
export const METRICS_PERIOD_MS = 60_000;

/**
 * Writes `text()` to `path` on {@link MetricsFile.flush} and periodically.
 *
 * @example
 * ```ts ignore
 * import { MetricsFile } from "./metrics_file.ts";
 * const f = new MetricsFile("/run/vm.prom", () => machine.metrics.registry.text());
 * f.start();
 * await f.close(); // one last flush
 * ```
 */
export class MetricsFile {
  readonly #text: () => string;
  #inFlight: Promise<void> | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  #flushes = 0;

  /** A writer of `text()` to `path` (nothing is written until a flush). */
  constructor(readonly path: string, text: () => string) {
    this.#text = text;
  }

  /** Completed flushes. */
  get flushes(): number {
    return this.#flushes;
  }

  /** Checks that `path` can be written (creating it), so a bad path fails at configuration. */
  async check(): Promise<void> {
    await this.flush();
  }

  /** Writes the metrics now. */
  flush(): Promise<void> {
    if (this.#inFlight !== undefined) return this.#inFlight;
    const text = this.#text();
    this.#inFlight = this.#write(text).finally(() => this.#inFlight = undefined);
    return this.#inFlight;
  }

  async #write(text: string): Promise<void> {
    const bytes = new TextEncoder().encode(text);
    let info: Deno.FileInfo | undefined;
    try {
      info = await Deno.stat(this.path);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw this.#error(err);
    }
    try {
      if (info?.isFifo === true) {
        const f = await Deno.open(this.path, { write: true });
        try {
          let off = 0;
          while (off < bytes.length) off += await f.write(bytes.subarray(off));
        } finally {
          f.close();
        }
      } else {
        if (info !== undefined && !info.isFile) {
          throw new Error("it is not a regular file or a named pipe");
        }
        const tmp = `${this.path}.${Deno.pid}.tmp`;
        await Deno.writeFile(tmp, bytes, { mode: 0o644 });
        await Deno.rename(tmp, this.path);
      }
    } catch (err) {
      throw this.#error(err);
    }
    this.#flushes++;
  }

  #error(err: unknown): Error {
    return new Error(`cannot write metrics to '${this.path}': ${(err as Error).message}`);
  }

  /** Flushes every `periodMs`, reporting failures to `onError`. */
  start(periodMs = METRICS_PERIOD_MS, onError: (err: Error) => void = () => {}): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => {
      this.flush().catch(onError);
    }, periodMs);
  }

  /** Stops the timer and writes one last time. */
  async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }
}
