/**
 * cow/ against `qemu-img bench` on the same machine and the same kind of
 * images: 4 KiB cluster-allocating writes into a fresh overlay over a 1 GiB
 * raw parent, 4 KiB rewrites of allocated clusters, 4 KiB reads through a
 * 3-deep chain, and sequential 1 MiB reads of a fully allocated image; the
 * reads both with a warm page cache and a cold one (the image files' pages
 * dropped with fdatasync + posix_fadvise(DONTNEED) before every run, on both
 * sides). Then what the metadata overlap checks cost vmkit: the same writes
 * with `overlapCheck: "all"` (the default) and `"none"`.
 *
 * `qemu-img bench` issues requests at `offset += step` (it has no random
 * mode), so both sides use the same strided offsets; a 64 KiB step makes
 * every write land in a new 64 KiB cluster. vmkit runs its async
 * BlockDevice API one request at a time; qemu-img runs at its best setting
 * here, queue depth 64, cache=writeback, aio=io_uring (depth 1, cache=none
 * and aio=threads were slower on this machine). Neither side flushes inside the timing. Each
 * metric runs one untimed warm-up run per side, then 5 rounds, alternating
 * which side goes first; the table shows the median of each side with its
 * range, and the machine load.
 *
 * Usage: `deno run -A bench/cow_qemu_img_bench.ts`
 *
 * @module
 */

import { createImage, type DiskImage, openImage, type OpenImageOptions } from "../cow/mod.ts";

const GiB = 1 << 30;
const MiB = 1 << 20;
const CLUSTER = 65536;
/** Rounds per metric (each side runs once per round; the order alternates). */
const ROUNDS = 5;

interface Timing {
  seconds: number;
  command: string;
}

interface Row {
  metric: string;
  unit: string;
  /** Work per run: requests (IOPS) or GB (GB/s). */
  work: number;
  a: number[];
  b: number[];
  command: string;
}

async function qemuBench(args: string[]): Promise<Timing> {
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

const libc = Deno.dlopen("libc.so.6", {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
});
const POSIX_FADV_DONTNEED = 4;

/** Drops the page cache of `paths` (written back first), so the next read goes to the disk. */
function dropCache(paths: string[]): void {
  for (const p of paths) {
    const fd = libc.symbols.open(new TextEncoder().encode(p + "\0"), 0, 0);
    if (fd < 0) throw new Error(`cannot open ${p} to drop its cache`);
    libc.symbols.fdatasync(fd);
    const rc = libc.symbols.posix_fadvise(fd, 0n, 0n, POSIX_FADV_DONTNEED);
    libc.symbols.close(fd);
    if (rc !== 0) throw new Error(`posix_fadvise(DONTNEED) on ${p} failed: ${rc}`);
  }
}

/** Runs `a` and `b` once per round, alternating which goes first; `before` runs before each. */
async function rounds(
  a: (round: number) => Promise<number | Timing>,
  b: (round: number) => Promise<number | Timing>,
  before: () => void = () => {},
): Promise<{ a: number[]; b: number[]; command: string }> {
  const as: number[] = [];
  const bs: number[] = [];
  let command = "";
  const take = (x: number | Timing): number => {
    if (typeof x === "number") return x;
    command = x.command;
    return x.seconds;
  };
  // One untimed run of each side first: V8 optimizes vmkit's I/O path only after a few
  // thousand calls, which a run of large requests does not reach (qemu-img is native).
  await a(-1);
  await b(-1);
  for (let r = 0; r < ROUNDS; r++) {
    if (r % 2 === 0) {
      before();
      as.push(take(await a(r)));
    }
    before();
    bs.push(take(await b(r)));
    if (r % 2 === 1) {
      before();
      as.push(take(await a(r)));
    }
  }
  return { a: as, b: bs, command };
}

function median(xs: number[]): number {
  const s = [...xs].sort((p, q) => p - q);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] ?? NaN : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2;
}

function cpuModel(): string {
  const info = Deno.readTextFileSync("/proc/cpuinfo");
  return /model name\s*:\s*(.*)/.exec(info)?.[1] ?? "unknown";
}

function loadAvg(): string {
  return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
}

async function main(): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vmkit_cow_bench_" });
  const peerRows: Row[] = [];
  const costRows: Row[] = [];
  const loadBefore = loadAvg();
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
      "-i",
      "io_uring",
      "-f",
      "qcow2",
      file,
    ];
    let n = 0;
    const fresh = (): string => {
      const p = `${dir}/overlay_${n++}.qcow2`;
      createImage(p, { backingFile: "parent.raw", backingFormat: "raw" }).closeSync();
      return p;
    };
    const vmkitWrites = async (
      path: string,
      count: number,
      options: OpenImageOptions = {},
    ): Promise<number> => {
      const dev = openImage(path, options);
      try {
        return await vmkitRun(dev, true, count, 4096, CLUSTER);
      } finally {
        dev.closeSync();
      }
    };

    // 1. cluster-allocating 4 KiB writes, a fresh overlay per run
    const writes = 8192; // 512 MiB / 64 KiB: every write allocates a new cluster
    const alloc = await rounds(
      () => vmkitWrites(fresh(), writes),
      () => qemuBench(benchArgs(fresh(), true, writes, 4096, CLUSTER)),
    );
    peerRows.push({
      metric: "4K alloc writes, fresh overlay",
      unit: "IOPS",
      work: writes,
      ...alloc,
    });

    // 2. 4 KiB rewrites of allocated clusters (one overlay per side, allocated once)
    const vAllocated = fresh();
    await vmkitWrites(vAllocated, writes);
    const qAllocated = fresh();
    await qemuBench(benchArgs(qAllocated, true, writes, 4096, CLUSTER));
    const rewrites = 32768;
    const rew = await rounds(
      () => vmkitWrites(vAllocated, rewrites),
      () => qemuBench(benchArgs(qAllocated, true, rewrites, 4096, CLUSTER)),
    );
    peerRows.push({ metric: "4K rewrites, allocated", unit: "IOPS", work: rewrites, ...rew });

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
    const readStep = CLUSTER + 4096;
    const chainFiles = [l3, l2, l1, parent];
    for (const cold of [false, true]) {
      // Warm: four passes over the parent's 1 GiB; cold: one (a second would be warm).
      const reads = cold ? Math.floor(GiB / readStep) : 65536;
      const rd = await rounds(
        async () => {
          const dev = openImage(l3, { readOnly: true });
          try {
            return await vmkitRun(dev, false, reads, 4096, readStep);
          } finally {
            dev.closeSync();
          }
        },
        () => qemuBench(benchArgs(l3, false, reads, 4096, readStep)),
        cold ? () => dropCache(chainFiles) : undefined,
      );
      peerRows.push({
        metric: `4K reads, 3-deep chain, ${cold ? "cold" : "warm"} cache`,
        unit: "IOPS",
        work: reads,
        ...rd,
      });
    }

    // 4. sequential 1 MiB reads of a fully allocated 256 MiB image
    const full = `${dir}/full.qcow2`;
    {
      const img = createImage(full, { size: 256 * MiB });
      const chunk = new Uint8Array(MiB).fill(0x77);
      for (let o = 0; o < 256 * MiB; o += MiB) img.writeSync(o, chunk);
      img.closeSync();
    }
    for (const cold of [false, true]) {
      // Warm: four passes over the 256 MiB; cold: one (a second would be warm).
      const seqCount = cold ? 256 : 1024;
      const seq = await rounds(
        async () => {
          const dev = openImage(full, { readOnly: true });
          try {
            return await vmkitRun(dev, false, seqCount, MiB, MiB);
          } finally {
            dev.closeSync();
          }
        },
        () => qemuBench(benchArgs(full, false, seqCount, MiB, MiB)),
        cold ? () => dropCache([full]) : undefined,
      );
      peerRows.push({
        metric: `seq 1M reads, allocated, ${cold ? "cold" : "warm"} cache`,
        unit: "GB/s",
        work: (seqCount * MiB) / 1e9,
        ...seq,
      });
    }

    // 5. what the overlap checks cost: the write metrics with checks on and off
    const allocCost = await rounds(
      () => vmkitWrites(fresh(), writes, { overlapCheck: "all" }),
      () => vmkitWrites(fresh(), writes, { overlapCheck: "none" }),
    );
    costRows.push({ metric: "4K alloc writes", unit: "IOPS", work: writes, ...allocCost });
    const rewCost = await rounds(
      () => vmkitWrites(vAllocated, rewrites, { overlapCheck: "all" }),
      () => vmkitWrites(vAllocated, rewrites, { overlapCheck: "none" }),
    );
    costRows.push({ metric: "4K rewrites, allocated", unit: "IOPS", work: rewrites, ...rewCost });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }

  const fmt = (
    unit: string,
    v: number,
  ) => (unit === "GB/s" ? v.toFixed(2) : Math.round(v).toString());
  const cell = (r: Row, xs: number[]): string => {
    const rates = xs.map((s) => r.work / s);
    return `${fmt(r.unit, median(rates))} (${fmt(r.unit, Math.min(...rates))}–${
      fmt(r.unit, Math.max(...rates))
    })`;
  };
  const ratio = (r: Row): string => (median(r.b) / median(r.a)).toFixed(2);
  console.log(`machine: ${navigator.hardwareConcurrency} CPUs (nproc), ${cpuModel()}`);
  console.log(`load average (1/5/15 min): before ${loadBefore}, after ${loadAvg()}`);
  console.log(
    `deno ${Deno.version.deno}; peer: qemu-img bench (qemu-utils), depth 64, cache=writeback, aio=io_uring`,
  );
  console.log(`${ROUNDS} rounds per metric, alternating order; median (min–max)\n`);
  console.log(
    "| metric | unit | vmkit | peer (qemu-img) | ratio vmkit/peer |\n|---|---|---|---|---|",
  );
  for (const r of peerRows) {
    console.log(`| ${r.metric} | ${r.unit} | ${cell(r, r.a)} | ${cell(r, r.b)} | ${ratio(r)} |`);
  }
  console.log("\noverlap checks (QEMU's overlap-check=all) against none, vmkit only:\n");
  console.log("| metric | unit | checks on | checks off | ratio on/off |\n|---|---|---|---|---|");
  for (const r of costRows) {
    console.log(`| ${r.metric} | ${r.unit} | ${cell(r, r.a)} | ${cell(r, r.b)} | ${ratio(r)} |`);
  }
  console.log("\npeer commands (image paths in a temp folder):");
  for (const r of peerRows) console.log(`  ${r.metric}: ${r.command}`);
}

await main();
libc.close();
