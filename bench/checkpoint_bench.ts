/**
 * Live checkpoints, vmkit against QEMU 7.2 on the same PVH guest in the
 * same run (issue 10's performance list). The guest (`mode=tsc:MIB:PAGES`)
 * first touches all of its RAM (a non-zero word per page, so both sides
 * really hold and save it), then writes sequence numbers over 256 pages,
 * reading the TSC between writes and keeping the largest gap, which it
 * prints when asked over its serial port ('r' resets it, 'g' prints it).
 *
 * Per RAM size:
 * - **pause**: vmkit's `pauseUs` (host: request to running again) and the
 *   largest TSC gap the guest saw around the checkpoint; QEMU's
 *   `background-snapshot` migration to a file (its STOP to RESUME events,
 *   QEMU's own µs timestamps) and the same guest gap. p99 and max of the
 *   runs. Above 1 GiB, vmkit's runs after the first are diff checkpoints
 *   (the pause is the same code: re-protect what was written since, save
 *   the vCPUs; only the background part differs) so that 20 runs do not
 *   write 20 full images; QEMU has no RAM diffs, so it runs fewer full ones.
 * - at 1 GiB: **total time** to a complete, durable checkpoint (vmkit:
 *   request to the fsynced, renamed file; QEMU: `migrate` to `completed`
 *   plus an fsync of its file, background and stop-and-copy) beside `dd`'s
 *   sequential write rates (`bs=1M conv=fsync`, and with `oflag=direct`:
 *   vmkit writes guest pages with O_DIRECT)
 *   to the same folder in the same run; a **diff** after 1% of
 *   the pages were written (time and size against the full one); the
 *   **cost of a write-protect fault** during the save; **10 clones**
 *   (`vmkit run --restore` processes; QEMU `-incoming` processes): time
 *   until all run and their memory (RSS and PSS summed; PSS shares pages
 *   fairly).
 *
 * - at every size: **restore to running**, 5 runs. vmkit: from the call of
 *   `restoreMachine(path, { standby })` to the vCPU thread leaving the
 *   start gate for `KVM_RUN` (its own clock read, `Machine.enteredAt`, so
 *   the main thread's wake-up is not counted): opening and checking
 *   the file, the disks and page store, devices on every thread, memory
 *   mapped lazily (userfaultfd), device and CPU state, the new VM generation
 *   id, `start()`. Not counted: the standby machine (KVM VM, irqchip, PIT,
 *   memory slots, vCPUs, their Workers: `StandbyMachine`), built before the
 *   request, as QEMU's process is: QEMU is started with `-incoming defer`
 *   (its machine, RAM and devices built from its command line) and timed
 *   from `migrate-incoming` to `query-status` answering `running` (polled
 *   every millisecond), which reads the whole migration stream first. The
 *   file is in the page cache on both sides (written just before).
 *   The guest's pages come later on vmkit's side (first access faults
 *   them in); the last vmkit run also checks the guest answers on its
 *   serial port.
 *
 * QEMU's settings: microvm, KVM, `max-bandwidth` raised to 100 GiB/s (the
 * 32 MiB/s default would throttle it), `exec:cat > FILE` as the target
 * (QEMU 7.2 has no `file:` URI), `background-snapshot` on. Sides alternate
 * which goes first per size.
 *
 * Usage: `deno run -A bench/checkpoint_bench.ts [--sizes 128,1024,4096,16384]
 * [--runs 20] [--clones 10] [--qemu-clones 10] [--dir DIR] [--no-qemu]
 * [--restore-only] [--restore-runs 5]` (defaults: sizes 128,1024, 20 runs,
 * 10 clones; the big sizes need 2 × 16 GiB of RAM and disk, one side at a
 * time; `--restore-only` measures only restore to running, after one full
 * checkpoint or migration per size).
 *
 * @module
 */

import type { PausePhases } from "../checkpoint/mod.ts";
import type { RestorePhases } from "../vmm/checkpoint.ts";
import { machineLine, median, medianRange } from "./stats.ts";
import {
  HOT_PAGES,
  MiB,
  p99,
  QEMU,
  RESTORE_ONLY,
  RESTORE_RUNS,
  ROOT,
  RUNS,
  type SizeResult,
  SIZES,
} from "./checkpoint_common.ts";
import { vmkitSize } from "./checkpoint_vmkit.ts";
import { qemuSize } from "./checkpoint_qemu.ts";

async function ddRate(dir: string, direct: boolean): Promise<number> {
  const out = await new Deno.Command("dd", {
    args: [
      "if=/dev/zero",
      `of=${dir}/dd.bin`,
      "bs=1M",
      "count=1024",
      "conv=fsync",
      ...(direct ? ["oflag=direct"] : []),
    ],
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr);
  await Deno.remove(`${dir}/dd.bin`);
  const m = /copied, ([\d.]+) s/.exec(text);
  if (m === null) throw new Error(`dd: ${text}`);
  return 1024 / Number(m[1]);
}

const fmt = (x: number | undefined, d = 0): string =>
  x === undefined || Number.isNaN(x) ? "-" : x.toFixed(d);

/** Median [range] of `xs` with `d` decimals, "-" for none. */
const mr = (xs: readonly number[], d = 0): string =>
  xs.length === 0 ? "-" : medianRange(xs, (x) => x.toFixed(d));

/** Restore to running per size: medians and ranges, the ratio, and where vmkit's time went. */
function printRestores(results: readonly SizeResult[]): void {
  console.log(
    `\nrestore to running, ms, median [range] of ${RESTORE_RUNS} (vmkit: restoreMachine on a ` +
      "standby to vCPU in KVM_RUN; QEMU: migrate-incoming to running, process up with -incoming defer)\n",
  );
  console.log("| RAM | vmkit | QEMU 7.2 | ratio (QEMU/vmkit) |");
  console.log("|---|---|---|---|");
  for (const mib of SIZES) {
    const v = results.find((r) => r.side === "vmkit" && r.mib === mib);
    const q = results.find((r) => r.side === "qemu" && r.mib === mib);
    const vm = v === undefined ? NaN : median(v.restoreMs);
    const qm = q === undefined ? NaN : median(q.restoreMs);
    console.log(
      `| ${mib} MiB | ${mr(v?.restoreMs ?? [], 2)} | ${mr(q?.restoreMs ?? [], 0)} | ${
        Number.isNaN(vm) || Number.isNaN(qm) ? "-" : (qm / vm).toFixed(0)
      } |`,
    );
  }
  const keys: (keyof RestorePhases)[] = [
    "openMs",
    "standbyMs",
    "disksMs",
    "machineMs",
    "memoryMs",
    "decodeMs",
    "slotsMs",
    "vmMs",
    "devicesMs",
    "vcpusMs",
    "vmGenIdMs",
  ];
  console.log(
    "\nvmkit restore phases, ms, median [max]: " +
      keys.map((k) => k.replace(/Ms$/, "")).join(" | ") +
      " | start to KVM_RUN",
  );
  for (const r of results.filter((x) => x.restorePhases.length > 0)) {
    const cols = keys.map((k) => {
      const xs = r.restorePhases.map((p) => p[k]);
      return `${fmt(median(xs), 2)} [${fmt(Math.max(...xs), 2)}]`;
    });
    const rest = r.restoreMs.map((t, i) => t - (r.restorePhases[i]?.totalMs ?? 0));
    console.log(
      `| ${r.mib} MiB | ${cols.join(" | ")} | ${fmt(median(rest), 2)} [${
        fmt(Math.max(...rest), 2)
      }] |`,
    );
  }
}

async function main(): Promise<void> {
  console.log(`machine: ${machineLine()}`);
  const dir = await Deno.makeTempDir({ dir: ROOT, prefix: "vmkit-ckpt-bench-" });
  const results: SizeResult[] = [];
  let dd = NaN;
  let ddDirect = NaN;
  try {
    for (const [i, mib] of SIZES.entries()) {
      const order = i % 2 === 0 ? ["vmkit", "qemu"] : ["qemu", "vmkit"];
      for (const side of order) {
        if (side === "qemu" && !QEMU) continue;
        console.log(`-- ${side} ${mib} MiB (load ${Deno.loadavg()[0]?.toFixed(2)})`);
        results.push(side === "vmkit" ? await vmkitSize(dir, mib) : await qemuSize(dir, mib));
        for (const f of Deno.readDirSync(dir)) {
          if (f.name.endsWith(".ckpt") || f.name.endsWith(".mig")) {
            Deno.removeSync(`${dir}/${f.name}`);
          }
        }
      }
      if (mib === 1024 && !RESTORE_ONLY) {
        dd = await ddRate(dir, false);
        ddDirect = await ddRate(dir, true);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  console.log(`\nmachine after: ${machineLine()}`);
  printRestores(results);
  if (RESTORE_ONLY) return;
  console.log(`\nruns per size: ${RUNS}; pause = p99 and max of the runs (µs)\n`);
  console.log(
    "| RAM | side | host pause median | p99 | max | guest gap median | p99 | max | runs |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const r of results) {
    const h = r.hostPauseUs;
    const g = r.guestGapUs;
    console.log(
      `| ${r.mib} MiB | ${r.side} | ${fmt(median(h))} | ${fmt(p99(h))} | ${
        fmt(Math.max(...h))
      } | ` +
        `${fmt(median(g))} | ${fmt(p99(g))} | ${fmt(Math.max(...g))} | ${r.note} |`,
    );
  }
  console.log(
    "\nvmkit pause phases, median [max] µs: stop (vCPUs park, each saving its state) | freeze | cpu | devices | resume",
  );
  for (const r of results.filter((x) => x.phases.length > 0)) {
    const col = (k: keyof PausePhases): string => {
      const xs = r.phases.map((p) => p[k]);
      return `${fmt(median(xs))} [${fmt(Math.max(...xs))}]`;
    };
    console.log(
      `| ${r.mib} MiB | ${col("stopUs")} | ${col("freezeUs")} | ${col("cpuUs")} | ` +
        `${col("devicesUs")} | ${col("resumeUs")} |`,
    );
  }
  const v = results.find((r) => r.side === "vmkit" && r.mib === 1024);
  const q = results.find((r) => r.side === "qemu" && r.mib === 1024);
  if (v !== undefined) {
    const ratio = (a?: number, b?: number) =>
      a === undefined || b === undefined || !Number.isFinite(b / a) ? "-" : (b / a).toFixed(1);
    console.log(
      "\n1 GiB | metric | vmkit | QEMU 7.2 | ratio (peer/vmkit, higher is better for vmkit)",
    );
    console.log("|---|---|---|---|");
    console.log(
      `| complete checkpoint (ms, median [range] of the full runs) | ${mr(v.totalsMs)} | ${
        mr(q?.totalsMs ?? [])
      } (background-snapshot) | ${ratio(median(v.totalsMs), q && median(q.totalsMs))} |`,
    );
    console.log(`| stop-and-copy (ms, VM stopped throughout) | - | ${fmt(q?.stopCopyMs)} | - |`);
    console.log(
      `| checkpoint write rate (MB/s) | ${fmt(v.writeMBs)} | dd bs=1M conv=fsync: ${
        fmt(dd)
      }, +oflag=direct: ${fmt(ddDirect)} | - |`,
    );
    if (v.diff !== undefined) {
      console.log(
        `| diff after 1% written: time (ms) | ${fmt(v.diff.ms)} (full: ${
          fmt(v.diff.fullMs)
        }) | n/a (no RAM diffs) | - |`,
      );
      console.log(
        `| diff after 1% written: size (MiB) | ${fmt(v.diff.bytes / MiB, 1)} (full: ${
          fmt(v.diff.fullBytes / MiB, 1)
        }) | n/a | - |`,
      );
    }
    if (v.faultUs !== undefined) {
      console.log(
        `| write-protect fault during the save (µs, mean/max over ${v.faultUs.count}) | ${
          fmt(v.faultUs.mean, 1)
        } / ${fmt(v.faultUs.max)} | n/a | - |`,
      );
    }
    if (v.clones !== undefined) {
      console.log(
        `| ${v.clones.n} clones: time until all run (ms) | ${fmt(v.clones.ms)} | ${
          fmt(q?.clones?.ms)
        } (${q?.clones?.n ?? 0} clones) | - |`,
      );
      console.log(
        `| ${v.clones.n} clones: RSS sum (MiB) | ${fmt(v.clones.rssMb)} | ${
          fmt(q?.clones?.rssMb)
        } | - |`,
      );
      console.log(
        `| ${v.clones.n} clones: PSS sum (MiB) | ${fmt(v.clones.pssMb)} | ${
          fmt(q?.clones?.pssMb)
        } | - |`,
      );
    }
  }
  if (QEMU) {
    console.log(
      "\nQEMU: qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel kvm -cpu host,-arch-capabilities " +
        "-m MIB -nodefaults -no-user-config -display none -qmp unix:... -serial unix:... -kernel guest-pvh.elf " +
        `-append mode=tsc:MIB:${HOT_PAGES}; migrate-set-parameters max-bandwidth=100 GiB/s; ` +
        "migrate-set-capabilities background-snapshot=on; migrate exec:cat > FILE " +
        "(--restore-only: plain migrate); restore: -incoming defer + migrate-incoming exec:cat FILE",
    );
  }
}

await main();
