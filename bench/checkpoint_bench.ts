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
import { checkpointerFor, restoreMachine, type RestorePhases } from "../vmm/checkpoint.ts";
import { StandbyMachine } from "../vmm/standby.ts";
import { defaultDeviceSpecs, Serial16550 } from "../vmm/devices/mod.ts";
import { Machine } from "../vmm/machine.ts";
import { buildGuests } from "../tests/guests/build.ts";
import { processMemory, QemuVm } from "./qemu_peer.ts";
import { machineLine, median, medianRange } from "./stats.ts";

const MiB = 1 << 20;
const HOT_PAGES = 256;

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Deno.args[i + 1] ?? fallback : fallback;
}
const SIZES = arg("sizes", "128,1024").split(",").map(Number);
const RUNS = Number(arg("runs", "20"));
const CLONES = Number(arg("clones", "10"));
const QEMU_CLONES = Number(arg("qemu-clones", String(CLONES)));
const QEMU = !Deno.args.includes("--no-qemu");
const ROOT = arg("dir", "/var/tmp");
const RESTORE_ONLY = Deno.args.includes("--restore-only");
const RESTORE_RUNS = Number(arg("restore-runs", "5"));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function p99(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)] ?? NaN;
}

/** Reads the guest's "gap G tsc T loops L" answer to 'g'. */
function parseGap(line: string): { gap: number; tsc: number } {
  const m = /gap 0x([0-9a-f]+) tsc 0x([0-9a-f]+)/.exec(line);
  if (m === null) throw new Error(`bad gap line '${line}'`);
  return { gap: parseInt(m[1] ?? "0", 16), tsc: parseInt(m[2] ?? "0", 16) };
}

/** A guest's serial port: send bytes, wait for a line. */
interface GuestPort {
  send(text: string): Promise<void>;
  line(pred: (l: string) => boolean, ms: number): Promise<string>;
}

/** TSC ticks per µs, from two answers 2 s apart (host clock). */
async function calibrate(port: GuestPort): Promise<number> {
  await port.send("g");
  const a = parseGap(await port.line((l) => l.startsWith("gap "), 10_000));
  const ta = performance.now();
  await sleep(2000);
  await port.send("g");
  const b = parseGap(await port.line((l) => l.startsWith("gap "), 10_000));
  const tb = performance.now();
  return (b.tsc - a.tsc) / ((tb - ta) * 1000);
}

/** The largest gap (µs) since the last 'r'. */
async function gapUs(port: GuestPort, ticksPerUs: number): Promise<number> {
  await port.send("g");
  return parseGap(await port.line((l) => l.startsWith("gap "), 30_000)).gap / ticksPerUs;
}

/** vmkit's serial: output to a file read as it grows, input pushed into COM1. */
class FilePort implements GuestPort {
  #seen = 0;
  constructor(readonly path: string, readonly com: Serial16550) {}
  send(text: string): Promise<void> {
    this.com.pushInput(new TextEncoder().encode(text));
    return Promise.resolve();
  }
  async line(pred: (l: string) => boolean, ms: number): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      this.com.flush();
      const text = await Deno.readTextFile(this.path);
      const lines = text.slice(this.#seen).split("\n");
      let off = this.#seen;
      for (let i = 0; i < lines.length - 1; i++) {
        const l = lines[i] ?? "";
        off += l.length + 1;
        if (pred(l)) {
          this.#seen = off;
          return l;
        }
      }
      if (Date.now() > deadline) throw new Error(`no line within ${ms} ms`);
      await sleep(5);
    }
  }
}

interface SizeResult {
  mib: number;
  side: "vmkit" | "qemu";
  hostPauseUs: number[];
  guestGapUs: number[];
  note: string;
  /** vmkit: where each pause went. */
  phases: PausePhases[];
  /** 1 GiB only: request to a complete, durable checkpoint, every full run (ms). */
  totalsMs: number[];
  stopCopyMs?: number;
  stopCopyPauseUs?: number;
  /** Restore to running, every run (ms). */
  restoreMs: number[];
  /** vmkit: where each restore went. */
  restorePhases: RestorePhases[];
  writeMBs?: number;
  diff?: { ms: number; bytes: number; fullMs: number; fullBytes: number };
  faultUs?: { mean: number; max: number; count: number };
  clones?: { n: number; ms: number; rssMb: number; pssMb: number };
}

async function kernelPath(): Promise<string> {
  return `${await buildGuests()}guest-pvh.elf`;
}

async function vmkitSize(dir: string, mib: number): Promise<SizeResult> {
  const serial = `${dir}/vmkit-serial.txt`;
  await Deno.writeTextFile(serial, "");
  const res: SizeResult = {
    mib,
    side: "vmkit",
    hostPauseUs: [],
    guestGapUs: [],
    note: "",
    phases: [],
    restoreMs: [],
    totalsMs: [],
    restorePhases: [],
  };
  const m = await Machine.create({
    memMiB: mib,
    vcpus: 1,
    kernel: await Deno.readFile(await kernelPath()),
    cmdline: `mode=tsc:${mib}:${HOT_PAGES}`,
    devices: defaultDeviceSpecs({ memMiB: mib, serialOut: { path: serial } }),
  });
  const path = `${dir}/vmkit.ckpt`;
  try {
    await vmkitCheckpoints(m, serial, dir, path, res);
  } finally {
    await m[Symbol.asyncDispose]();
  }
  // In both modes: restore from the last full checkpoint (its pages in the page cache).
  await vmkitRestores(path, serial, mib, res);
  if (mib === 1024 && !RESTORE_ONLY) res.clones = await vmkitClones(path);
  return res;
}

/** The pause and background-save figures of one size (restore-only: one full checkpoint). */
async function vmkitCheckpoints(
  m: Machine,
  serial: string,
  dir: string,
  path: string,
  res: SizeResult,
): Promise<void> {
  const mib = res.mib;
  {
    await m.start();
    const com = m.device("com1");
    if (!(com instanceof Serial16550)) throw new Error("no COM1");
    const port = new FilePort(serial, com);
    await port.line((l) => l.startsWith("touched"), 30 * 60_000);
    const cp = await checkpointerFor(m);
    if (RESTORE_ONLY) {
      await (await cp.checkpoint({ path })).done;
      res.note = "restore only";
      return;
    }
    const tpu = await calibrate(port);
    const big = mib > 1024;
    for (let i = 0; i < RUNS; i++) {
      await port.send("r");
      await sleep(30);
      const diff = big && i > 0;
      const t0 = performance.now();
      const before = cp.counters();
      const save = await cp.checkpoint({ path: diff ? `${dir}/vmkit-diff.ckpt` : path, diff });
      res.hostPauseUs.push(save.pauseUs);
      res.phases.push(save.pausePhases);
      const s = await save.done;
      const ms = performance.now() - t0;
      res.guestGapUs.push(await gapUs(port, tpu));
      if (mib === 1024) res.totalsMs.push(ms);
      if (i === 0 && mib === 1024) {
        res.writeMBs = (s.dataPages * 4096) / MiB / (s.saveMs / 1000);
      }
      // The second save (the first creates the userfaultfd, so its counters start there).
      if (i === 1 && mib === 1024) {
        const after = cp.counters();
        if (before !== undefined && after !== undefined) {
          const n = after.faults - before.faults;
          res.faultUs = {
            mean: n > 0 ? (after.faultNs - before.faultNs) / n / 1000 : 0,
            max: after.maxFaultNs / 1000,
            count: n,
          };
        }
      }
    }
    res.note = big ? `run 1 full, runs 2..${RUNS} diffs` : "full checkpoints";
    if (mib === 1024) {
      // A full one, then 1% of the pages written, then a diff.
      const full = await (await cp.checkpoint({ path })).done;
      const pages = mib * 256;
      const step = 100;
      const one = new Uint8Array([0xa5]);
      for (let p = 0; p < pages; p += step) {
        const gpa = p * 4096 + 0x100;
        if (gpa >= 16 * MiB) m.memory.write(gpa, one);
      }
      const t0 = performance.now();
      const d = await (await cp.checkpoint({ path: `${dir}/vmkit-1pct.ckpt`, diff: true })).done;
      // Allocated bytes: a diff's file is as long as RAM, with holes where the parent holds pages.
      const allocated = (p: string) => (Deno.statSync(p).blocks ?? 0) * 512;
      res.diff = {
        ms: performance.now() - t0,
        bytes: allocated(d.path),
        fullMs: full.saveMs,
        fullBytes: allocated(full.path),
      };
    }
  }
}

/**
 * Restore to running, {@link RESTORE_RUNS} times: each on a standby machine
 * built first (as a VMM waiting for a snapshot has it, and QEMU its
 * `-incoming defer` process), timed from the call to every vCPU thread
 * entering `KVM_RUN`. The last restored guest must answer on its console.
 */
async function vmkitRestores(
  path: string,
  serial: string,
  mib: number,
  res: SizeResult,
): Promise<void> {
  // The VMM's own devices (COM1 to the file), built with the standby as QEMU's are.
  const hostDevices = (memMiB: number) =>
    defaultDeviceSpecs({ memMiB, serialOut: { path: serial } });
  for (let i = 0; i < RESTORE_RUNS; i++) {
    const standby = await StandbyMachine.create({
      memMiB: mib,
      vcpus: 1,
      devices: hostDevices(mib),
    });
    await sleep(300);
    const t0 = performance.timeOrigin + performance.now();
    const r = await restoreMachine(path, { standby, hostDevices });
    await r.machine.start();
    const entered = r.machine.waitEntered(10_000);
    // Until the vCPU thread's own clock read before KVM_RUN (not this thread's wake-up).
    const ms = (r.machine.enteredAt(0) ?? NaN) - t0;
    try {
      if (!entered || Number.isNaN(ms)) {
        throw new Error("vmkit: the restored vCPU did not enter KVM_RUN");
      }
      if (!r.usedStandby) throw new Error("vmkit: the standby machine was not used");
      res.restoreMs.push(ms);
      res.restorePhases.push(r.phases);
      if (i === RESTORE_RUNS - 1) {
        await Deno.writeTextFile(serial, "");
        const com = r.machine.device("com1");
        if (!(com instanceof Serial16550)) throw new Error("no COM1");
        const port = new FilePort(serial, com);
        for (let k = 0;; k++) {
          await port.send("g");
          try {
            await port.line((l) => l.startsWith("gap "), 200);
            break;
          } catch (err) {
            if (k > 100) throw err; // the guest polls its port every 4096 writes
          }
        }
      }
    } finally {
      await r[Symbol.asyncDispose]();
      await standby[Symbol.asyncDispose]();
    }
  }
}

/** `vmkit run --restore` processes, until each answers on its console. */
async function vmkitClones(
  path: string,
): Promise<{ n: number; ms: number; rssMb: number; pssMb: number }> {
  const main = new URL("../cli/main.ts", import.meta.url).pathname;
  const kids: Deno.ChildProcess[] = [];
  const t0 = performance.now();
  try {
    for (let i = 0; i < CLONES; i++) {
      kids.push(
        new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", main, "run", "--restore", path, "--vm-id", `clone${i}`],
          stdin: "piped",
          stdout: "piped",
          stderr: "inherit",
        }).spawn(),
      );
    }
    await Promise.all(kids.map(async (k) => {
      let text = "";
      let ended = false;
      const reading = (async () => {
        for await (const chunk of k.stdout.pipeThrough(new TextDecoderStream())) text += chunk;
        ended = true;
      })();
      const w = k.stdin.getWriter();
      // Ask until it answers: the restored guest polls its serial port every 4096 writes.
      while (!text.includes("gap ")) {
        if (ended) throw new Error(`a clone ended: ${text}`);
        await w.write(new TextEncoder().encode("g"));
        await sleep(50);
      }
      w.releaseLock();
      void reading;
    }));
    const ms = performance.now() - t0;
    let rss = 0, pss = 0;
    for (const k of kids) {
      const mem = processMemory(k.pid);
      rss += mem.rssKb;
      pss += mem.pssKb;
    }
    return { n: CLONES, ms, rssMb: rss / 1024, pssMb: pss / 1024 };
  } finally {
    for (const k of kids) await stopChild(k);
  }
}

/** SIGTERM, unless it exited already; waits for it. */
async function stopChild(k: Deno.ChildProcess): Promise<void> {
  try {
    k.kill("SIGTERM");
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
  }
  await k.status;
}

/** Migrates `vm` to `file` and waits for completion; returns ms and the STOP→RESUME pause (µs). */
async function qemuMigrate(vm: QemuVm, file: string): Promise<{ ms: number; pauseUs: number }> {
  vm.events.length = 0;
  const t0 = performance.now();
  await vm.qmp("migrate", { uri: `exec:cat > ${file}` });
  await vm.until(async () => {
    const s = await vm.qmp("query-migrate") as { status?: string };
    if (s.status === "failed") throw new Error("QEMU: migration failed");
    return s.status === "completed";
  }, 30 * 60_000);
  // Durable, as vmkit's file is when it reports done (exec:cat does not fsync).
  const f = Deno.openSync(file, { read: true });
  f.syncSync();
  f.close();
  const ms = performance.now() - t0;
  // The RESUME may come just after "completed" for stop-and-copy; poll once more.
  await vm.qmp("query-status");
  const stop = vm.events.find((e) => e.event === "STOP");
  const resume = vm.events.find((e) => e.event === "RESUME");
  const pauseUs = stop !== undefined && resume !== undefined ? (resume.at - stop.at) * 1e6 : NaN;
  return { ms, pauseUs };
}

async function qemuSize(dir: string, mib: number): Promise<SizeResult> {
  const res: SizeResult = {
    mib,
    side: "qemu",
    hostPauseUs: [],
    guestGapUs: [],
    note: "",
    phases: [],
    restoreMs: [],
    totalsMs: [],
    restorePhases: [],
  };
  const kernel = await kernelPath();
  const file = `${dir}/qemu.mig`;
  {
    await using vm = await QemuVm.start(dir, kernel, mib, `mode=tsc:${mib}:${HOT_PAGES}`);
    const port: GuestPort = {
      send: (t) => vm.send(t),
      line: (p, ms) => vm.serial.next(p, ms),
    };
    await port.line((l) => l.startsWith("touched"), 30 * 60_000);
    await vm.qmp("migrate-set-parameters", { "max-bandwidth": 100 * 1024 * MiB });
    if (RESTORE_ONLY) {
      // One migration to the file (precopy; the VM runs on), for the restores below.
      await qemuMigrate(vm, file);
      res.note = "restore only";
    }
  }
  if (RESTORE_ONLY) {
    await qemuRestores(dir, kernel, file, mib, res);
    return res;
  }
  {
    await using vm = await QemuVm.start(dir, kernel, mib, `mode=tsc:${mib}:${HOT_PAGES}`);
    const port: GuestPort = {
      send: (t) => vm.send(t),
      line: (p, ms) => vm.serial.next(p, ms),
    };
    await port.line((l) => l.startsWith("touched"), 30 * 60_000);
    const tpu = await calibrate(port);
    await vm.qmp("migrate-set-parameters", { "max-bandwidth": 100 * 1024 * MiB });
    await vm.qmp("migrate-set-capabilities", {
      capabilities: [{ capability: "background-snapshot", state: true }],
    });
    const runs = mib > 1024 ? Math.min(RUNS, 3) : RUNS;
    for (let i = 0; i < runs; i++) {
      await port.send("r");
      await sleep(30);
      const r = await qemuMigrate(vm, file);
      res.hostPauseUs.push(r.pauseUs);
      res.guestGapUs.push(await gapUs(port, tpu));
      if (mib === 1024) res.totalsMs.push(r.ms);
    }
    res.note = `${runs} background snapshots`;
    if (mib === 1024) {
      // Stop-and-copy: the VM stays stopped for the whole save.
      await vm.qmp("migrate-set-capabilities", {
        capabilities: [{ capability: "background-snapshot", state: false }],
      });
      await vm.qmp("stop");
      const t0 = performance.now();
      await vm.qmp("migrate", { uri: `exec:cat > ${dir}/qemu-stopcopy.mig` });
      await vm.until(async () => {
        const s = await vm.qmp("query-migrate") as { status?: string };
        return s.status === "completed";
      }, 30 * 60_000);
      const f = Deno.openSync(`${dir}/qemu-stopcopy.mig`, { read: true });
      f.syncSync();
      f.close();
      res.stopCopyMs = performance.now() - t0;
      await vm.qmp("cont");
      res.stopCopyPauseUs = res.stopCopyMs * 1000;
    }
  }
  await qemuRestores(dir, kernel, file, mib, res);
  if (mib === 1024) {
    // Clones: -incoming processes until each runs.
    const vms: QemuVm[] = [];
    const t0 = performance.now();
    try {
      for (let i = 0; i < QEMU_CLONES; i++) {
        vms.push(await QemuVm.start(dir, kernel, mib, `mode=tsc:${mib}:${HOT_PAGES}`, true));
      }
      await Promise.all(vms.map((vm) => vm.qmp("migrate-incoming", { uri: `exec:cat ${file}` })));
      await Promise.all(vms.map((vm) =>
        vm.until(async () => {
          const s = await vm.qmp("query-status") as { status?: string };
          return s.status === "running";
        }, 10 * 60_000)
      ));
      const ms = performance.now() - t0;
      let rss = 0, pss = 0;
      for (const vm of vms) {
        const mem = vm.memory();
        rss += mem.rssKb;
        pss += mem.pssKb;
      }
      res.clones = { n: QEMU_CLONES, ms, rssMb: rss / 1024, pssMb: pss / 1024 };
    } finally {
      for (const vm of vms) await vm[Symbol.asyncDispose]();
    }
  }
  return res;
}

/** `migrate-incoming` into a process started with `-incoming defer`, until it runs. */
async function qemuRestores(
  dir: string,
  kernel: string,
  file: string,
  mib: number,
  res: SizeResult,
): Promise<void> {
  for (let i = 0; i < RESTORE_RUNS; i++) {
    await using vm = await QemuVm.start(dir, kernel, mib, `mode=tsc:${mib}:${HOT_PAGES}`, true);
    await sleep(300);
    const t0 = performance.now();
    await vm.qmp("migrate-incoming", { uri: `exec:cat ${file}` });
    await vm.until(
      async () => {
        const s = await vm.qmp("query-status") as { status?: string };
        return s.status === "running";
      },
      30 * 60_000,
      1,
    );
    res.restoreMs.push(performance.now() - t0);
  }
}

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
