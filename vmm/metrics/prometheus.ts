/**
 * Metrics as records and their Prometheus text exposition (format 0.0.4):
 * `# HELP`, `# TYPE`, one sample per line, label values escaped.
 *
 * A {@link MetricsRegistry} collects families from any number of
 * collectors (the machine, each device, the checkpoint) at scrape time and
 * merges families of the same name, so each device can add its own labelled
 * samples to a shared family.
 *
 * @module
 */

/** One sample of a family. */
export interface MetricSample {
  /** Label names and values (names `[a-zA-Z_][a-zA-Z0-9_]*`). */
  readonly labels?: Readonly<Record<string, string>>;
  /** The value. */
  readonly value: number;
}

/** A metric family: name, help, type and samples. */
export interface MetricFamily {
  /** `[a-zA-Z_:][a-zA-Z0-9_:]*`; counters end in `_total`. */
  readonly name: string;
  /** One line of help. */
  readonly help: string;
  /** `counter` only goes up; `gauge` goes both ways. */
  readonly type: "counter" | "gauge";
  /** The samples. */
  readonly samples: readonly MetricSample[];
}

/** Produces families at scrape time. */
export type MetricsCollector = () => readonly MetricFamily[];

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

/** Renders `families` as Prometheus text; throws on a bad metric or label name. */
export function renderPrometheus(families: readonly MetricFamily[]): string {
  const out: string[] = [];
  for (const f of families) {
    if (!NAME.test(f.name)) throw new Error(`metrics: bad metric name '${f.name}'`);
    out.push(`# HELP ${f.name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`);
    out.push(`# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels ?? {});
      for (const [k] of labels) {
        if (!LABEL.test(k)) throw new Error(`metrics: bad label name '${k}' in ${f.name}`);
      }
      const l = labels.length === 0
        ? ""
        : `{${labels.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
      out.push(`${f.name}${l} ${formatValue(s.value)}`);
    }
  }
  return out.length === 0 ? "" : out.join("\n") + "\n";
}

/**
 * Collectors registered by whoever owns counters; {@link MetricsRegistry.text}
 * renders all of them.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from "./prometheus.ts";
 * const reg = new MetricsRegistry();
 * let reads = 0;
 * reg.add(() => [{
 *   name: "demo_reads_total",
 *   help: "Reads.",
 *   type: "counter",
 *   samples: [{ labels: { device: "vda" }, value: ++reads }],
 * }]);
 * console.log(reg.text());
 * ```
 */
export class MetricsRegistry {
  readonly #collectors = new Set<MetricsCollector>();

  /** Adds a collector; the returned function removes it. */
  add(collector: MetricsCollector): () => void {
    this.#collectors.add(collector);
    return () => this.#collectors.delete(collector);
  }

  /** Every collector's families, same-named families merged (first help and type win). */
  collect(): MetricFamily[] {
    const byName = new Map<
      string,
      { help: string; type: MetricFamily["type"]; samples: MetricSample[] }
    >();
    for (const c of this.#collectors) {
      for (const f of c()) {
        const have = byName.get(f.name);
        if (have === undefined) {
          byName.set(f.name, { help: f.help, type: f.type, samples: [...f.samples] });
        } else {
          if (have.type !== f.type) {
            throw new Error(`metrics: '${f.name}' is both a ${have.type} and a ${f.type}`);
          }
          have.samples.push(...f.samples);
        }
      }
    }
    return [...byName].map(([name, f]) => ({ name, ...f }));
  }

  /** The Prometheus text of {@link collect}. */
  text(): string {
    return renderPrometheus(this.collect());
  }
}
