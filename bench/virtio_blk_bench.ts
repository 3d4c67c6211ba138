/**
 * virtio-blk's device path against fio on the same raw file, and against
 * `qemu-img bench` on the same qcow2 overlay.
 *
 * The guest runs at emulator speed here, so the guest side is played by a C
 * driver loop on the main thread (`virtio_blk_driver.c`, `virtio_blk_rig.ts`):
 * it keeps requests in a split virtqueue in guest RAM (EVENT_IDX: kicks only
 * when the device's avail_event asks, sleeps on the interrupt eventfd only
 * after re-arming used_event, as Linux's virtio driver does), refills each
 * completed request at once and rings the queue's notify eventfd (what
 * KVM's ioeventfd does for a guest write). The device is the real one: its
 * I/O Worker, its ring parsing and checks, io_uring on the raw file or
 * `cow/` on the qcow2 image.
 *
 * Method (each metric): RUNS rounds; in each round every side runs once,
 * vmkit first in even rounds and last in odd ones; before every run of
 * every side the page cache is put in the same state (`prepareCache`:
 * dirty pages written back, the cache dropped, for warm runs the whole file
 * read back; residency checked with mincore: warm ≥ 99%, cold ≤ 1%). Both
 * sides do the same number of requests of the same size over the same span
 * at the same depth; each is timed by itself from first submission to last
 * completion (fio's and qemu-img's own runtime). Reported: the median and
 * range of each side, the best peer variant (by median; all are listed),
 * CPU time per request, and the load average at each round.
 *
 * Metrics: 4 KiB random reads and writes at 32 in flight, warm and cold;
 * 128 KiB sequential reads at 32 in flight, MB/s, warm and cold;
 * notification-to-completion latency of one 4 KiB read (median, p99), to the
 * used entry (the driver watching the used ring: the device alone) and to the
 * driver woken by the interrupt, fio's total latency at depth 1 beside it; qcow2 overlay over a raw base: 4 KiB sequential
 * writes into a fresh overlay (cluster allocation), reads of allocated
 * clusters, reads through to the base, against `qemu-img bench` (vmkit's
 * device is warmed up once and opens the image fresh for every run; see
 * `qcowMetrics`).
 *
 * Usage: `deno run -A bench/virtio_blk_bench.ts [--runs N] [--quick] [--only raw|lat|qcow2]`
 *
 * @module
 */

import { loadShim } from "../native/ffi.ts";
import {
  fio,
  FIO_VARIANTS,
  fioArgs,
  type FioJob,
  type FioVariant,
  prepareCache,
  QEMU_IMG_AIO,
  qemuImgArgs,
  qemuImgBench,
} from "./blk_peers.ts";
import { loadAverage, machineLine, median } from "./stats.ts";
import { BlkRig, hostFloors, loadDriver } from "./virtio_blk_rig.ts";

const args = Deno.args;
const QUICK = args.includes("--quick");
const RUNS = Number(args[args.indexOf("--runs") + 1] ?? "") || (QUICK ? 3 : 5);
const ONLY = args.includes("--only") ? args[args.indexOf("--only") + 1] : undefined;
const want = (s: string) => ONLY === undefined || ONLY === s;
const FILE_BYTES = (QUICK ? 256 : 512) << 20;
const DEPTH = 32;

await loadShim();

/** One side's runs: the value (higher is better unless stated) and CPU seconds per request. */
interface Side {
  values: number[];
  cpuPerOp: number[];
}

interface Row {
  metric: string;
  vmkit: Side;
  peers: Map<string, Side>;
  loads: string[];
  higherBetter: boolean;
  peerCommand: (name: string) => string;
}

function fmt(x: number): string {
  return x >= 1000 ? Math.round(x).toString() : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

function range(xs: number[]): string {
  return `[${fmt(Math.min(...xs))}..${fmt(Math.max(...xs))}]`;
}

function best(r: Row): string {
  let name = "";
  let m = NaN;
  for (const [k, s] of r.peers) {
    const v = median(s.values);
    if (name === "" || (r.higherBetter ? v > m : v < m)) [name, m] = [k, v];
  }
  return name;
}

const summary: string[] = [];

function report(r: Row): void {
  const name = best(r);
  const peer = r.peers.get(name) ?? { values: [NaN], cpuPerOp: [NaN] };
  const v = median(r.vmkit.values), p = median(peer.values);
  const ratio = r.higherBetter ? v / p : p / v;
  const cpu = (s: Side) =>
    s.cpuPerOp.length > 0 ? `${fmt(median(s.cpuPerOp) * 1e6)} us CPU/req` : "";
  const line =
    `${r.metric.padEnd(40)} vmkit ${fmt(v).padStart(8)} ${range(r.vmkit.values).padEnd(20)}` +
    ` ${name.padEnd(26)} ${fmt(p).padStart(8)} ${range(peer.values).padEnd(20)} ratio ${
      ratio.toFixed(2)
    }`;
  console.log(line);
  console.log(
    `    CPU: vmkit ${cpu(r.vmkit)}, peer ${cpu(peer)}; all peers: ${
      [...r.peers].map(([k, s]) => `${k} ${fmt(median(s.values))}`).join(", ")
    }`,
  );
  console.log(`    load: ${r.loads.join(" | ")}`);
  console.log(`    peer: ${r.peerCommand(name)}`);
  summary.push(
    `| ${r.metric} | ${fmt(v)} ${range(r.vmkit.values)} | ${fmt(p)} ${
      range(peer.values)
    } ${name} | ${ratio.toFixed(2)} |`,
  );
}

/** One run of a side: its value and the CPU seconds it used. */
interface Sample {
  value: number;
  cpu: number;
  ops: number;
}

/**
 * RUNS rounds of vmkit and every peer, alternating who goes first, each run
 * after `prepare()` (outside the timing).
 */
async function compare(
  metric: string,
  prepare: () => Promise<unknown>,
  vmkit: () => Promise<Sample>,
  peers: Record<string, () => Promise<Sample>>,
  peerCommand: (name: string) => string,
  higherBetter = true,
): Promise<void> {
  const row: Row = {
    metric,
    vmkit: { values: [], cpuPerOp: [] },
    peers: new Map(Object.keys(peers).map((k) => [k, { values: [], cpuPerOp: [] }])),
    loads: [],
    higherBetter,
    peerCommand,
  };
  for (let i = 0; i < RUNS; i++) {
    row.loads.push(loadAverage());
    const names = Object.keys(peers);
    const order = i % 2 === 0 ? ["vmkit", ...names] : [...names.reverse(), "vmkit"];
    for (const who of order) {
      await prepare();
      const run = who === "vmkit" ? vmkit : peers[who];
      const side = who === "vmkit" ? row.vmkit : row.peers.get(who);
      if (run === undefined || side === undefined) continue;
      const s = await run();
      side.values.push(s.value);
      if (s.cpu > 0) side.cpuPerOp.push(s.cpu / s.ops);
    }
  }
  report(row);
}

function fioPeers(
  job: FioJob,
  pick: (r: Awaited<ReturnType<typeof fio>>) => number,
  variants: readonly FioVariant[] = FIO_VARIANTS,
): Record<string, () => Promise<Sample>> {
  return Object.fromEntries(variants.map((v) => [v.name, async () => {
    const r = await fio(job, v);
    return { value: pick(r), cpu: r.cpu, ops: job.ops };
  }]));
}

function fioCommand(job: FioJob, variants: readonly FioVariant[] = FIO_VARIANTS) {
  return (name: string) => {
    const v = variants.find((x) => x.name === name);
    return v === undefined ? "" : `fio ${fioArgs(job, v).join(" ")}`;
  };
}

async function makeFile(path: string, bytes: number): Promise<void> {
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  const chunk = new Uint8Array(4 << 20);
  crypto.getRandomValues(chunk.subarray(0, 65536));
  for (let i = 65536; i < chunk.length; i += 65536) chunk.copyWithin(i, 0, 65536);
  for (let o = 0; o < bytes; o += chunk.length) await f.write(chunk);
}

async function sh(cmd: string, a: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args: a, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${a.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/**
 * The qcow2 metrics. One device serves all vmkit runs, warmed up once on a
 * scratch overlay (reads through to the base, writes allocating clusters,
 * reads of them), so its compiled code is that of a running VMM, as the raw
 * metrics' one device is after its first run. Each timed run opens the image
 * fresh in it (a `PATCH /drives`-style replace, outside the timing), so the
 * image's metadata caches start empty as in a fresh qemu-img process; after
 * the run the device switches to a spare file, releasing the image's write
 * lock (qemu-img takes it too).
 */
async function qcowMetrics(
  dir: string,
  raw: string,
  drv: Awaited<ReturnType<typeof loadDriver>>,
): Promise<void> {
  // qcow2 overlay over the raw base; qemu-img bench has no random mode, so sequential 4 KiB.
  const count = QUICK ? 20_000 : 40_000;
  const overlay = `${dir}/overlay.qcow2`;
  const qcow2Over = (path: string) =>
    sh("qemu-img", ["create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", path]);
  const freshOverlay = () => qcow2Over(overlay);
  const spare = `${dir}/spare.raw`;
  await makeFile(spare, 1 << 20);
  const scratch = `${dir}/warmup.qcow2`;
  await qcow2Over(scratch);
  const qr = await BlkRig.start({ kind: "file", path: scratch }, drv);
  try {
    for (const type of [0, 1, 0]) qr.run(type, 4096, count, DEPTH, false, count * 4096);
    await qr.replace({ kind: "file", path: spare });
    await Deno.remove(scratch);
    const vmkitQcow = (type: number) => async (): Promise<Sample> => {
      await qr.replace({ kind: "file", path: overlay });
      try {
        const r = qr.run(type, 4096, count, DEPTH, false, count * 4096);
        return { value: count / r.seconds, cpu: r.cpu, ops: count };
      } finally {
        await qr.replace({ kind: "file", path: spare });
      }
    };
    const qemuPeers = (write: boolean) =>
      Object.fromEntries(QEMU_IMG_AIO.map((aio) => [`qemu-img bench -i ${aio}`, async () => ({
        value: await qemuImgBench(overlay, write, count, DEPTH, aio),
        cpu: 0,
        ops: count,
      })]));
    const qemuCommand = (write: boolean) => (name: string) =>
      `qemu-img ${
        qemuImgArgs(overlay, write, count, DEPTH, name.split(" ").pop() ?? "")
          .join(" ")
      }`;
    await compare(
      "qcow2 4K seq write, fresh overlay (req/s)",
      async () => {
        await freshOverlay();
        await prepareCache([overlay, raw], true);
      },
      vmkitQcow(1),
      qemuPeers(true),
      qemuCommand(true),
    );
    await freshOverlay();
    await compare(
      "qcow2 4K seq read, through to base (req/s)",
      () => prepareCache([overlay, raw], true),
      vmkitQcow(0),
      qemuPeers(false),
      qemuCommand(false),
    );
    // Allocate the span in the overlay once (outside the timing), then read it.
    await qemuImgBench(overlay, true, count, DEPTH, "threads");
    await compare(
      "qcow2 4K seq read, allocated (req/s)",
      () => prepareCache([overlay, raw], true),
      vmkitQcow(0),
      qemuPeers(false),
      qemuCommand(false),
    );
  } finally {
    await qr.close();
  }
}

const dir = await Deno.makeTempDir({ prefix: "vmkit-blk-bench-" });
try {
  console.log(
    `virtio-blk device path vs fio (buffered, depth ${DEPTH}) and qemu-img bench; ${RUNS} rounds, ` +
      `median [range]; file ${FILE_BYTES >> 20} MiB; ${machineLine()}`,
  );
  const drv = await loadDriver(dir);
  const raw = `${dir}/disk.raw`;
  await makeFile(raw, FILE_BYTES);
  const rig = await BlkRig.start({ kind: "file", path: raw }, drv);
  const vmkit = (type: number, bs: number, ops: number, random: boolean, mb = false) => () => {
    const r = rig.run(type, bs, ops, DEPTH, random, FILE_BYTES);
    const value = mb ? ops * bs / 1e6 / r.seconds : ops / r.seconds;
    return Promise.resolve({ value, cpu: r.cpu, ops });
  };
  try {
    if (want("raw")) {
      const blocks = FILE_BYTES / 4096;
      for (const [rw, type] of [["randread", 0], ["randwrite", 1]] as const) {
        for (const warm of [true, false]) {
          // Cold: a quarter of the blocks, so few requests hit pages an earlier one brought in.
          const ops = warm ? (QUICK ? 100_000 : 300_000) : Math.floor(blocks / 4);
          const job = { file: raw, rw, bs: 4096, depth: DEPTH, ops, span: FILE_BYTES };
          await compare(
            `4K ${rw} QD32 ${warm ? "warm" : "cold"} (req/s)`,
            () => prepareCache([raw], warm),
            vmkit(type, 4096, ops, true),
            fioPeers(job, (r) => r.iops),
            fioCommand(job),
          );
        }
      }
      for (const warm of [true, false]) {
        // Cold: one pass over the file.
        const ops = warm ? (QUICK ? 10_000 : 40_000) : FILE_BYTES / 131072;
        const job = { file: raw, rw: "read", bs: 131072, depth: DEPTH, ops, span: FILE_BYTES };
        await compare(
          `128K seq read QD32 ${warm ? "warm" : "cold"} (MB/s)`,
          () => prepareCache([raw], warm),
          vmkit(0, 131072, ops, false, true),
          fioPeers(job, (r) => r.mbps),
          fioCommand(job),
        );
      }
    }
    if (want("lat")) {
      // What a depth-1 read is made of on this host, in C (no device): see virtio_blk_floor.c.
      await prepareCache([raw], true);
      const fl = hostFloors(drv, raw, FILE_BYTES);
      console.log(
        `host floors (C, load ${loadAverage()}): eventfd wake-up round trip between two ` +
          `threads ${fmt(fl.wakeRoundTrip)} us (median); one 4K page-cache read: pread ` +
          `${fmt(fl.pread)} us, preadv2 RWF_NOWAIT ${fmt(fl.preadNowait)} us, one-entry ` +
          `io_uring ${fmt(fl.uringRead)} us (means)`,
      );
      const ops = QUICK ? 2000 : 10_000;
      const job = { file: raw, rw: "randread", bs: 4096, depth: 1, ops, span: FILE_BYTES };
      const variants = [FIO_VARIANTS[0], { name: "fio psync", args: ["--ioengine=psync"] }]
        .filter((v): v is FioVariant => v !== undefined);
      const cases = [
        ["p50", 0.5, true],
        ["p99", 0.99, true],
        ["p50", 0.5, false],
        ["p99", 0.99, false],
      ] as const;
      for (const [tag, q, spin] of cases) {
        const pick = (r: { lat50us: number; lat99us: number }) => q === 0.5 ? r.lat50us : r.lat99us;
        await compare(
          `4K read latency ${tag}, ${spin ? "notify->used" : "notify->irq wake"} (us)`,
          () => prepareCache([raw], true),
          () => {
            const lat = rig.latency(ops, FILE_BYTES, spin);
            return Promise.resolve({ value: lat[Math.floor(lat.length * q)] ?? NaN, cpu: 0, ops });
          },
          fioPeers(job, pick, variants),
          fioCommand(job, variants),
          false,
        );
      }
    }
  } finally {
    await rig.close();
  }

  if (want("qcow2")) await qcowMetrics(dir, raw, drv);
  console.log(
    "\n| metric | vmkit median [range] | peer median [range] | ratio |\n|---|---|---|---|",
  );
  for (const s of summary) console.log(s);
} finally {
  await Deno.remove(dir, { recursive: true });
}
