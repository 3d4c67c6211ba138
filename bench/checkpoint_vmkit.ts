/**
 * vmkit's side of the checkpoint bench: pauses, full and diff checkpoints,
 * write-protect fault cost, restores onto a standby machine and clones.
 *
 * @module
 */

import { checkpointerFor, restoreMachine } from "../vmm/checkpoint.ts";
import { StandbyMachine } from "../vmm/standby.ts";
import { defaultDeviceSpecs, Serial16550 } from "../vmm/devices/mod.ts";
import { Machine } from "../vmm/machine.ts";
import { processMemory } from "./qemu_peer.ts";
import {
  calibrate,
  CLONES,
  emptyResult,
  gapUs,
  type GuestPort,
  HOT_PAGES,
  kernelPath,
  MiB,
  RESTORE_ONLY,
  RESTORE_RUNS,
  RUNS,
  type SizeResult,
  sleep,
  stopChild,
} from "./checkpoint_common.ts";

/** vmkit's serial: output to a file read as it grows, input pushed into COM1. */
export class FilePort implements GuestPort {
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

export async function vmkitSize(dir: string, mib: number): Promise<SizeResult> {
  const serial = `${dir}/vmkit-serial.txt`;
  await Deno.writeTextFile(serial, "");
  const res = emptyResult(mib, "vmkit");
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
export async function vmkitCheckpoints(
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
export async function vmkitRestores(
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
export async function vmkitClones(
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
