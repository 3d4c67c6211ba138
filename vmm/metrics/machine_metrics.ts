/**
 * The machine's own counters: vCPU exits by reason (counted on each vCPU's
 * Worker in shared memory) and pauses (count and time), plus the registry
 * where devices and the checkpoint add theirs. `GET /metrics` and
 * `--metrics-path` render {@link MachineMetrics.registry}.
 *
 * @module
 */

import { type MetricFamily, MetricsRegistry } from "./prometheus.ts";

/** Exit reasons counted per vCPU, in slot order. */
export const EXIT_KINDS = [
  "io_in",
  "io_out",
  "mmio_read",
  "mmio_write",
  "intr",
  "hlt",
  "shutdown",
  "system_event",
  "internal_error",
  "fail_entry",
  "other",
] as const;

/** A counted exit reason. */
export type ExitKind = typeof EXIT_KINDS[number];

/** Slot of each exit reason within a vCPU's row. */
export const EXIT_SLOT: Readonly<Record<ExitKind, number>> = Object.fromEntries(
  EXIT_KINDS.map((k, i) => [k, i]),
) as Record<ExitKind, number>;

/** Bytes of the exit-counter buffer for `vcpus` vCPUs. */
export function exitCounterBytes(vcpus: number): number {
  return vcpus * EXIT_KINDS.length * 8;
}

/**
 * A vCPU's row of exit counters over the shared buffer (its Worker is the
 * only writer of the row).
 */
export function exitCounterRow(buffer: SharedArrayBuffer, vcpu: number): Float64Array {
  return new Float64Array(buffer, vcpu * EXIT_KINDS.length * 8, EXIT_KINDS.length);
}

/**
 * The machine's counters and metrics registry.
 *
 * @example
 * ```ts
 * import { MachineMetrics } from "./machine_metrics.ts";
 * const m = new MachineMetrics(1);
 * m.recordPause(0.4);
 * console.log(m.registry.text().includes("vmkit_pauses_total 1")); // true
 * ```
 */
export class MachineMetrics {
  /** Where the machine, its devices and the checkpoint register collectors. */
  readonly registry: MetricsRegistry = new MetricsRegistry();
  /** Exit counters, one row of {@link EXIT_KINDS} per vCPU (posted to each Worker). */
  readonly exits: SharedArrayBuffer;
  readonly #vcpus: number;
  #pauses = 0;
  #pauseMsTotal = 0;
  #pauseMsLast = 0;
  #pauseMsMax = 0;

  /** Counters for a machine with `vcpus` vCPUs. */
  constructor(vcpus: number) {
    this.#vcpus = vcpus;
    this.exits = new SharedArrayBuffer(Math.max(8, exitCounterBytes(vcpus)));
    this.registry.add(() => this.collect());
  }

  /** Records one pause that took `ms` from request to every vCPU parked. */
  recordPause(ms: number): void {
    this.#pauses++;
    this.#pauseMsTotal += ms;
    this.#pauseMsLast = ms;
    if (ms > this.#pauseMsMax) this.#pauseMsMax = ms;
  }

  /** Pauses so far. */
  get pauses(): number {
    return this.#pauses;
  }

  /** Exits of `kind` on vCPU `vcpu` so far. */
  exitCount(vcpu: number, kind: ExitKind): number {
    return exitCounterRow(this.exits, vcpu)[EXIT_SLOT[kind]] ?? 0;
  }

  /** The machine's own families. */
  collect(): MetricFamily[] {
    const exits = [];
    for (let v = 0; v < this.#vcpus; v++) {
      const row = exitCounterRow(this.exits, v);
      for (let k = 0; k < EXIT_KINDS.length; k++) {
        const value = row[k] ?? 0;
        if (value === 0) continue;
        exits.push({ labels: { vcpu: String(v), reason: EXIT_KINDS[k] ?? "other" }, value });
      }
    }
    return [
      {
        name: "vmkit_vcpu_exits_total",
        help: "vCPU exits to the VMM, by vCPU and reason (KVM_RUN returns; intr includes kicks).",
        type: "counter",
        samples: exits,
      },
      {
        name: "vmkit_pauses_total",
        help: "Pauses of every vCPU (API, netguard, checkpoints).",
        type: "counter",
        samples: [{ value: this.#pauses }],
      },
      {
        name: "vmkit_pause_seconds_total",
        help: "Time from a pause request until every vCPU was parked, summed.",
        type: "counter",
        samples: [{ value: this.#pauseMsTotal / 1000 }],
      },
      {
        name: "vmkit_pause_last_seconds",
        help: "Time the last pause took to park every vCPU.",
        type: "gauge",
        samples: [{ value: this.#pauseMsLast / 1000 }],
      },
      {
        name: "vmkit_pause_max_seconds",
        help: "Longest time a pause took to park every vCPU.",
        type: "gauge",
        samples: [{ value: this.#pauseMsMax / 1000 }],
      },
    ];
  }
}
