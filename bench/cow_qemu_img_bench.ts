/**
 * cow/ against `qemu-img bench`, both doing the same work on the same kind
 * of images: 4 KiB cluster-allocating writes into a fresh overlay over a
 * 1 GiB raw parent, 4 KiB rewrites of allocated clusters, 4 KiB reads
 * through a 3-deep chain, and sequential 1 MiB reads of a fully allocated
 * image; the reads with a warm page cache and a cold one (every image file
 * of the chain written back and dropped with fdatasync +
 * posix_fadvise(DONTNEED) before every run, on both sides, and checked at
 * most 1% resident with mincore: `page_cache.ts`).
 *
 * Fairness, as the brief asks:
 * - `qemu-img bench` issues requests at `offset += step` (it has no random
 *   mode); vmkit uses the same strided offsets, wrapping the same way
 *   (`offset %= size`), and keeps the same number of requests in flight.
 * - Both sides are timed in-process over the request loop only (qemu-img
 *   prints "Run completed in"; vmkit times its loop), after opening.
 * - The peer runs at its best setting on this machine: first a sweep runs
 *   every candidate once per metric and depth class (aio io_uring, threads
 *   or native; cache writeback or none (O_DIRECT); depth 1 for the depth-1
 *   rows, depths 32 and 64 for the depth-32 rows), and the fastest is then
 *   measured; the table names it.
 * - Each row: one untimed warm-up run per side, then 5 rounds alternating
 *   which side goes first; median [min-max] of each side, the ratio of the
 *   medians, and the load average before and after the row.
 *
 * Usage: `deno run -A bench/cow_qemu_img_bench.ts` (about 4-5 minutes).
 *
 * @module
 */

import { createImage, type DiskImage, openImage, type OpenImageOptions } from "../cow/mod.ts";
import { prepareCache } from "./page_cache.ts";
import { loadAverage, machineLine, median, medianRange } from "./stats.ts";

const GiB = 1 << 30;
const MiB = 1 << 20;
const CLUSTER = 65536;
/** Rounds per row (each side runs once per round; the order alternates). */
const ROUNDS = 5;
/** vmkit's depths; the peer's candidate depths for each. */
const DEPTHS: ReadonlyArray<readonly [number, readonly number[]]> = [[1, [1]], [32, [32, 64]]];
/** The peer's candidate (aio, cache) pairs; native AIO needs O_DIRECT. */
const PEER_MODES: ReadonlyArray<readonly [string, string]> = [
  ["io_uring", "writeback"],
  ["threads", "writeback"],
  ["io_uring", "none"],
  ["threads", "none"],
  ["native", "none"],
];

/** One peer setting. */
interface PeerSetting {
  aio: string;
  cache: string;
  depth: number;
}

/** One metric: what both sides do, on which files. */
interface Metric {
  name: string;
  unit: "IOPS" | "GB/s";
  write: boolean;
  size: number;
  step: number;
  count: number;
  cold: boolean;
  /** The image a run uses (a fresh overlay for allocating writes). */
  image: (side: "vmkit" | "peer") => string;
  /** Every file of the image's chain (dropped from the cache for a cold run). */
  chain: string[];
  /** Called after a run with the image it used (to remove a fresh overlay). */
  done?: (path: string) => void;
}

interface Row {
  metric: Metric;
  depth: number;
  best: PeerSetting;
  vmkit: number[];
  peer: number[];
  load: string;
}

function peerArgs(m: Metric, s: PeerSetting, file: string): string[] {
  return [
    ...(m.write ? ["-w"] : []),
    ...["-c", String(m.count), "-d", String(s.depth), "-s", String(m.size)],
    ...["-S", String(m.step), "-t", s.cache, "-i", s.aio, "-f", "qcow2", file],
  ];
}

function peerCommand(m: Metric, s: PeerSetting): string {
  return `qemu-img bench ${peerArgs(m, s, "<image>").join(" ")}`;
}

/** Seconds qemu-img reports for its request loop. */
async function peerRun(m: Metric, s: PeerSetting, file: string): Promise<number> {
  const args = ["bench", ...peerArgs(m, s, file)];
  const out = await new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`qemu-img ${args.join(" ")} failed: ${text}`);
  const sec = /Run completed in ([\d.]+) seconds/.exec(text)?.[1];
  if (sec === undefined) throw new Error(`cannot parse qemu-img bench output: ${text}`);
  return Number(sec);
}

/**
 * Seconds vmkit takes for `count` requests at qemu-img's offsets with
 * `depth` requests in flight through the async BlockDevice API.
 */
async function vmkitLoop(dev: DiskImage, m: Metric, depth: number): Promise<number> {
  let issued = 0;
  let offset = 0;
  const lane = async (buf: Uint8Array): Promise<void> => {
    while (issued < m.count) {
      issued++;
      const at = offset;
      offset = (offset + m.step) % dev.size;
      if (m.write) await dev.write(at, buf);
      else await dev.read(at, buf);
    }
  };
  const bufs = Array.from({ length: depth }, () => new Uint8Array(m.size).fill(m.write ? 0xa5 : 0));
  const t0 = performance.now();
  await Promise.all(bufs.map(lane));
  return (performance.now() - t0) / 1000;
}

async function vmkitRun(
  m: Metric,
  depth: number,
  file: string,
  options: OpenImageOptions = {},
): Promise<number> {
  const dev = openImage(file, { readOnly: !m.write, ...options });
  try {
    return await vmkitLoop(dev, m, depth);
  } finally {
    await dev.close();
  }
}

/** One timed run of a side: a cold run drops the chain's cache first. */
async function once(m: Metric, side: "vmkit" | "peer", run: (file: string) => Promise<number>) {
  const file = m.image(side);
  // Cold: every file of the chain written back, dropped, and checked ≤ 1% resident (mincore).
  if (m.cold) await prepareCache(m.chain.length > 0 ? m.chain : [file], false);
  try {
    return await run(file);
  } finally {
    m.done?.(file);
  }
}

/** The peer's fastest candidate for `m` among `depths` (one run each). */
async function sweep(m: Metric, depths: readonly number[]): Promise<PeerSetting> {
  let best: PeerSetting | null = null;
  let bestSec = Infinity;
  const tried: string[] = [];
  for (const depth of depths) {
    for (const [aio, cache] of PEER_MODES) {
      const s = { aio, cache, depth };
      const sec = await once(m, "peer", (f) => peerRun(m, s, f));
      tried.push(`${aio}/${cache}/d${depth} ${fmt(m, rate(m, sec))}`);
      if (sec < bestSec) [best, bestSec] = [s, sec];
    }
  }
  if (best === null) throw new Error("no peer setting ran");
  console.error(`  sweep ${m.name}: ${tried.join(", ")}`);
  return best;
}

async function row(m: Metric, depth: number, peerDepths: readonly number[]): Promise<Row> {
  const best = await sweep(m, peerDepths);
  const load = loadAverage();
  const v = (f: string) => vmkitRun(m, depth, f);
  const p = (f: string) => peerRun(m, best, f);
  // One untimed run per side first (V8 optimizes vmkit's path after a few thousand calls).
  await once(m, "vmkit", v);
  await once(m, "peer", p);
  const vmkit: number[] = [];
  const peer: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    if (r % 2 === 0) vmkit.push(await once(m, "vmkit", v));
    peer.push(await once(m, "peer", p));
    if (r % 2 === 1) vmkit.push(await once(m, "vmkit", v));
  }
  return { metric: m, depth, best, vmkit, peer, load: `${load} -> ${loadAverage()}` };
}

function rate(m: Metric, sec: number): number {
  return m.unit === "GB/s" ? (m.count * m.size) / 1e9 / sec : m.count / sec;
}

function fmt(m: Metric, x: number): string {
  return m.unit === "GB/s" ? x.toFixed(2) : Math.round(x).toString();
}

/** Builds the images: a 1 GiB raw parent, a 3-deep chain over it, a full 256 MiB image. */
function setUp(dir: string) {
  const parent = `${dir}/parent.raw`;
  createImage(parent, { size: GiB, format: "raw" }).closeSync();
  {
    // sparse except a 64 MiB written head
    const p = openImage(parent, { format: "raw" });
    const chunk = new Uint8Array(MiB).fill(0x5a);
    for (let o = 0; o < 64 * MiB; o += MiB) p.writeSync(o, chunk);
    p.closeSync();
  }
  let n = 0;
  const fresh = (): string => {
    const p = `${dir}/overlay_${n++}.qcow2`;
    createImage(p, { backingFile: "parent.raw", backingFormat: "raw" }).closeSync();
    return p;
  };
  const chain = [`${dir}/l3.qcow2`, `${dir}/l2.qcow2`, `${dir}/l1.qcow2`, parent];
  const [l3, l2, l1] = chain as [string, string, string];
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
  const full = `${dir}/full.qcow2`;
  {
    const img = createImage(full, { size: 256 * MiB });
    const chunk = new Uint8Array(MiB).fill(0x77);
    for (let o = 0; o < 256 * MiB; o += MiB) img.writeSync(o, chunk);
    img.closeSync();
  }
  // Rewrites: one overlay per side, every cluster of the written range allocated once.
  const allocated = { vmkit: fresh(), peer: fresh() };
  for (const p of Object.values(allocated)) {
    const img = openImage(p);
    const data = new Uint8Array(4096).fill(0x33);
    for (let o = 0; o < 256 * MiB; o += CLUSTER) img.writeSync(o, data);
    img.closeSync();
  }
  return { parent, fresh, chain, full, allocated };
}

function metrics(img: ReturnType<typeof setUp>): Metric[] {
  const out: Metric[] = [];
  // 4096 writes 64 KiB apart: every write allocates a new cluster (over 256 MiB).
  out.push({
    name: "4K alloc writes, fresh overlay",
    unit: "IOPS",
    write: true,
    size: 4096,
    step: CLUSTER,
    count: 4096,
    cold: false,
    image: () => img.fresh(),
    chain: [],
    done: (p) => Deno.removeSync(p),
  });
  out.push({
    name: "4K rewrites, allocated",
    unit: "IOPS",
    write: true,
    size: 4096,
    step: CLUSTER,
    count: 16384,
    cold: false,
    image: (side) => img.allocated[side],
    chain: [],
  });
  for (const cold of [false, true]) {
    // 68 KiB apart over the 1 GiB: a third of the reads in each overlay layer for the
    // first 256 MiB, the rest from the raw parent (mostly sparse).
    out.push({
      name: `4K reads, 3-deep chain, ${cold ? "cold" : "warm"}`,
      unit: "IOPS",
      write: false,
      size: 4096,
      step: CLUSTER + 4096,
      count: cold ? 4096 : 16384,
      cold,
      image: () => img.chain[0] ?? "",
      chain: img.chain,
    });
  }
  for (const cold of [false, true]) {
    out.push({
      name: `seq 1M reads, allocated, ${cold ? "cold" : "warm"}`,
      unit: "GB/s",
      write: false,
      size: MiB,
      step: MiB,
      count: cold ? 256 : 512,
      cold,
      image: () => img.full,
      chain: [img.full],
    });
  }
  return out;
}

async function main(): Promise<void> {
  const only = Deno.args[0];
  const dir = await Deno.makeTempDir({ prefix: "vmkit_cow_bench_" });
  const rows: Row[] = [];
  const t0 = performance.now();
  console.log(`machine: ${machineLine()}; deno ${Deno.version.deno}`);
  try {
    const img = setUp(dir);
    for (const m of metrics(img)) {
      if (only !== undefined && !m.name.includes(only)) continue;
      for (const [depth, peerDepths] of DEPTHS) {
        const r = await row(m, depth, peerDepths);
        rows.push(r);
        const v = r.vmkit.map((s) => rate(m, s));
        const p = r.peer.map((s) => rate(m, s));
        console.error(
          `${m.name} d${depth}: vmkit ${medianRange(v, (x) => fmt(m, x))}, peer ${
            medianRange(p, (x) => fmt(m, x))
          } (${r.best.aio}/${r.best.cache}/d${r.best.depth}), load ${r.load}`,
        );
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  console.log(
    `${ROUNDS} rounds per row, alternating order; median [min-max]; peer at its best of: aio ` +
      `io_uring/threads (writeback, none) and native (none), depth 1 (d1 rows) or 32/64 (d32 rows)\n`,
  );
  console.log(
    "| metric | depth | unit | vmkit | qemu-img (best setting) | ratio vmkit/peer | load 1/5/15 |",
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const r of rows) {
    const m = r.metric;
    const v = r.vmkit.map((s) => rate(m, s));
    const p = r.peer.map((s) => rate(m, s));
    const ratio = (median(v) / median(p)).toFixed(2);
    const f = (x: number) => fmt(m, x);
    console.log(
      `| ${m.name} | ${r.depth} | ${m.unit} | ${medianRange(v, f)} | ${medianRange(p, f)} ` +
        `(${r.best.aio}, ${r.best.cache}, d${r.best.depth}) | ${ratio} | ${r.load} |`,
    );
  }
  console.log("\npeer commands (image paths in a temp folder):");
  for (const r of rows) {
    console.log(`  ${r.metric.name} d${r.depth}: ${peerCommand(r.metric, r.best)}`);
  }
  console.log(
    `\nmachine after: ${machineLine()}; ran ${((performance.now() - t0) / 1000).toFixed(0)} s`,
  );
}

await main();
