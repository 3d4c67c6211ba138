/**
 * cow/ against `qemu-img bench` on the same machine and the same kind of
 * images: 4 KiB cluster-allocating writes into a fresh overlay over a 1 GiB
 * raw parent, 4 KiB rewrites of allocated clusters, 4 KiB reads through a
 * 3-deep chain, and sequential 1 MiB reads of a fully allocated image.
 *
 * `qemu-img bench` issues requests at `offset += step` (it has no random
 * mode), so both sides use the same strided offsets; a 64 KiB step makes
 * every write land in a new 64 KiB cluster. vmkit runs its async
 * BlockDevice API one request at a time; qemu-img runs queue depth 64 with
 * cache=writeback. Neither side flushes inside the timing. Each metric runs
 * 3 rounds, alternating which side goes first; the best round of each side
 * counts (the machine is shared, so single runs are noisy).
 *
 * Usage: `deno run -A bench/cow_qemu_img_bench.ts`
 *
 * @module
 */

import { createImage, type DiskImage, openImage } from "../cow/mod.ts";

const GiB = 1 << 30;
const MiB = 1 << 20;
const CLUSTER = 65536;

interface Row {
  metric: string;
  unit: string;
  vmkit: number;
  peer: number;
  command: string;
}

async function qemuBench(args: string[]): Promise<{ seconds: number; command: string }> {
  const command = `qemu-img bench ${args.join(" ")}`;
  const out = await new Deno.Command("qemu-img", { args: ["bench", ...args], stdout: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`${command} failed: ${text}`);
  const m = /Run completed in ([\d.]+) seconds/.exec(text);
  if (m === null || m[1] === undefined) {
    throw new Error(`cannot parse qemu-img bench output: ${text}`);
  }
  return { seconds: Number(m[1]), command };
}

async function vmkitRun(
  dev: DiskImage,
  write: boolean,
  count: number,
  size: number,
  step: number,
): Promise<number> {
  const buf = new Uint8Array(size).fill(write ? 0xa5 : 0);
  let off = 0;
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    if (write) await dev.write(off, buf);
    else await dev.read(off, buf);
    off += step;
    if (off + size > dev.size) off = 0;
  }
  return (performance.now() - t0) / 1000;
}

/** Rounds per metric; each side's best round counts, and the order alternates. */
const ROUNDS = 3;

interface Best {
  vmkit: number;
  peer: number;
  command: string;
}

async function bestOf(
  vmkit: (round: number) => Promise<number>,
  qemu: (round: number) => Promise<{ seconds: number; command: string }>,
): Promise<Best> {
  let v = Infinity;
  let q = Infinity;
  let command = "";
  for (let r = 0; r < ROUNDS; r++) {
    if (r % 2 === 0) v = Math.min(v, await vmkit(r));
    const x = await qemu(r);
    q = Math.min(q, x.seconds);
    command = x.command;
    if (r % 2 === 1) v = Math.min(v, await vmkit(r));
  }
  return { vmkit: v, peer: q, command };
}

/** A table row from best times: `work` is requests (IOPS) or GB (GB/s). */
function row(metric: string, unit: string, work: number, b: Best): Row {
  return { metric, unit, vmkit: work / b.vmkit, peer: work / b.peer, command: b.command };
}

function cpuModel(): string {
  const info = Deno.readTextFileSync("/proc/cpuinfo");
  return /model name\s*:\s*(.*)/.exec(info)?.[1] ?? "unknown";
}

async function main(): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit_cow_bench_" });
  const rows: Row[] = [];
  try {
    const parent = `${dir}/parent.raw`;
    // 1 GiB raw parent, sparse except a 64 MiB written head.
    createImage(parent, { size: GiB, format: "raw" }).closeSync();
    {
      const p = openImage(parent, { format: "raw" });
      const chunk = new Uint8Array(MiB).fill(0x5a);
      for (let o = 0; o < 64 * MiB; o += MiB) p.writeSync(o, chunk);
      p.closeSync();
    }
    const benchArgs = (file: string, w: boolean, count: number, size: number, step: number) => [
      ...(w ? ["-w"] : []),
      "-c",
      String(count),
      "-d",
      "64",
      "-s",
      String(size),
      "-S",
      String(step),
      "-t",
      "writeback",
      "-f",
      "qcow2",
      file,
    ];

    // 1. cluster-allocating 4 KiB writes, a fresh pair of overlays per round
    const writes = 8192; // 512 MiB / 64 KiB: every write allocates a new cluster
    const ov = (who: string, r: number) => `${dir}/overlay_${who}_${r}.qcow2`;
    const alloc = await bestOf(
      (r) => {
        createImage(ov("v", r), { backingFile: "parent.raw", backingFormat: "raw" }).closeSync();
        const dev = openImage(ov("v", r));
        return vmkitRun(dev, true, writes, 4096, CLUSTER).finally(() => dev.closeSync());
      },
      (r) => {
        createImage(ov("q", r), { backingFile: "parent.raw", backingFormat: "raw" }).closeSync();
        return qemuBench(benchArgs(ov("q", r), true, writes, 4096, CLUSTER));
      },
    );
    rows.push(row("4K alloc writes, fresh overlay", "IOPS", writes, alloc));
    for (let r = 1; r < ROUNDS; r++) {
      await Deno.remove(ov("v", r));
      await Deno.remove(ov("q", r));
    }

    // 2. 4 KiB rewrites of the clusters allocated in round 0
    const rewrites = 32768;
    const rew = await bestOf(
      () => {
        const dev = openImage(ov("v", 0));
        return vmkitRun(dev, true, rewrites, 4096, CLUSTER).finally(() => dev.closeSync());
      },
      () => qemuBench(benchArgs(ov("q", 0), true, rewrites, 4096, CLUSTER)),
    );
    rows.push(row("4K rewrites, allocated", "IOPS", rewrites, rew));

    // 3. 4 KiB reads through a 3-deep chain (parent.raw <- l1 <- l2 <- l3)
    const l1 = `${dir}/l1.qcow2`;
    const l2 = `${dir}/l2.qcow2`;
    const l3 = `${dir}/l3.qcow2`;
    createImage(l1, { backingFile: "parent.raw", backingFormat: "raw" }).closeSync();
    createImage(l2, { backingFile: "l1.qcow2", backingFormat: "qcow2" }).closeSync();
    createImage(l3, { backingFile: "l2.qcow2", backingFormat: "qcow2" }).closeSync();
    {
      // every layer holds a third of the first 256 MiB; the rest falls to the parent
      const data = new Uint8Array(CLUSTER).fill(0x11);
      for (const [i, p] of [l1, l2, l3].entries()) {
        const img = openImage(p);
        for (let c = i; c < (256 * MiB) / CLUSTER; c += 3) img.writeSync(c * CLUSTER, data);
        img.closeSync();
      }
    }
    const reads = 65536;
    const readStep = CLUSTER + 4096;
    const rd = await bestOf(
      () => {
        const dev = openImage(l3, { readOnly: true });
        return vmkitRun(dev, false, reads, 4096, readStep).finally(() => dev.closeSync());
      },
      () => qemuBench(benchArgs(l3, false, reads, 4096, readStep)),
    );
    rows.push(row("4K reads, 3-deep chain", "IOPS", reads, rd));

    // 4. sequential 1 MiB reads of a fully allocated 256 MiB image
    const full = `${dir}/full.qcow2`;
    {
      const img = createImage(full, { size: 256 * MiB });
      const chunk = new Uint8Array(MiB).fill(0x77);
      for (let o = 0; o < 256 * MiB; o += MiB) img.writeSync(o, chunk);
      img.closeSync();
    }
    const seqCount = 1024; // 4 passes over 256 MiB
    const seq = await bestOf(
      () => {
        const dev = openImage(full, { readOnly: true });
        return vmkitRun(dev, false, seqCount, MiB, MiB).finally(() => dev.closeSync());
      },
      () => qemuBench(benchArgs(full, false, seqCount, MiB, MiB)),
    );
    rows.push(row("seq 1M reads, allocated", "GB/s", (seqCount * MiB) / 1e9, seq));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  console.log(`machine: ${navigator.hardwareConcurrency} CPUs (nproc), ${cpuModel()}`);
  console.log(`deno ${Deno.version.deno}; peer: qemu-img bench (qemu-utils), cache=writeback`);
  console.log("");
  console.log(
    "| metric | unit | vmkit | peer (qemu-img) | ratio vmkit/peer |\n|---|---|---|---|---|",
  );
  for (const r of rows) {
    const fmt = (v: number) => (r.unit === "GB/s" ? v.toFixed(2) : Math.round(v).toString());
    console.log(
      `| ${r.metric} | ${r.unit} | ${fmt(r.vmkit)} | ${fmt(r.peer)} | ${
        (r.vmkit / r.peer).toFixed(2)
      } |`,
    );
  }
  console.log("\npeer commands (image paths in a temp folder):");
  for (const r of rows) console.log(`  ${r.metric}: ${r.command}`);
}

await main();
