/**
 * QEMU 7.2's side of the checkpoint bench: `background-snapshot` migrations
 * to a file, and `migrate-incoming` restores (settings in
 * `checkpoint_bench.ts`).
 *
 * @module
 */

import { QemuVm } from "./qemu_peer.ts";
import {
  calibrate,
  emptyResult,
  gapUs,
  type GuestPort,
  HOT_PAGES,
  kernelPath,
  MiB,
  QEMU_CLONES,
  RESTORE_ONLY,
  RESTORE_RUNS,
  RUNS,
  type SizeResult,
  sleep,
} from "./checkpoint_common.ts";

/** Migrates `vm` to `file` and waits for completion; returns ms and the STOP→RESUME pause (µs). */
export async function qemuMigrate(
  vm: QemuVm,
  file: string,
): Promise<{ ms: number; pauseUs: number }> {
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

export async function qemuSize(dir: string, mib: number): Promise<SizeResult> {
  const res = emptyResult(mib, "qemu");
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
export async function qemuRestores(
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
