/**
 * The peers of `virtio_blk_bench.ts` and the page-cache states both sides
 * start from.
 *
 * fio: every variant runs buffered (`--direct=0`, like the device) at the
 * same depth over the same file and span, doing the same number of requests
 * (`--io_size`), uniform random offsets with replacement (`--norandommap`,
 * as the bench driver draws them), with page-aligned buffers
 * (`--iomem_align=4096`: fio's default buffers sit 16 bytes into a page, and
 * copies into them from the page cache run 3-6x slower here, while a
 * guest's buffers are page-aligned). fio never drops the cache itself
 * (`--invalidate=0`): the bench prepares the cache for both sides the same
 * way ({@link prepareCache}).
 *
 * qemu-img bench: `-i threads` and `-i io_uring`, `-t writeback` (the page
 * cache, like the device).
 *
 * @module
 */

/** A fio variant: a name and its engine options. */
export interface FioVariant {
  readonly name: string;
  readonly args: readonly string[];
}

/** The fio variants tried at each metric; the best median is the peer. */
export const FIO_VARIANTS: readonly FioVariant[] = [
  { name: "fio io_uring", args: ["--ioengine=io_uring"] },
  {
    name: "fio io_uring batched",
    args: [
      "--ioengine=io_uring",
      "--fixedbufs=1",
      "--registerfiles=1",
      "--iodepth_batch_submit=16",
      "--iodepth_batch_complete_max=16",
    ],
  },
  {
    name: "fio io_uring sqpoll",
    args: ["--ioengine=io_uring", "--sqthread_poll=1", "--fixedbufs=1", "--registerfiles=1"],
  },
  { name: "fio libaio", args: ["--ioengine=libaio"] },
];

/** What one fio run measured. */
export interface FioResult {
  /** Requests per second. */
  readonly iops: number;
  /** MB/s (10^6 bytes). */
  readonly mbps: number;
  /** Median total latency (submission to completion), µs. */
  readonly lat50us: number;
  /** 99th percentile total latency, µs. */
  readonly lat99us: number;
  /** CPU seconds of fio's job thread (user + system). */
  readonly cpu: number;
}

/** What a fio job does. */
export interface FioJob {
  readonly file: string;
  /** fio's `--rw` (randread, randwrite, read). */
  readonly rw: string;
  readonly bs: number;
  readonly depth: number;
  readonly ops: number;
  /** Bytes of the file the offsets cover (from 0). */
  readonly span: number;
}

/** The fio arguments of `job` with `variant` (also printed as the peer command). */
export function fioArgs(job: FioJob, variant: FioVariant): string[] {
  return [
    "--name=peer",
    `--filename=${job.file}`,
    ...variant.args,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.depth}`,
    `--size=${job.span}`,
    `--io_size=${job.ops * job.bs}`,
    "--direct=0",
    "--invalidate=0",
    "--iomem_align=4096",
    "--randrepeat=1",
    "--norandommap",
    "--lat_percentiles=1",
    "--output-format=json",
  ];
}

/** Runs fio once. */
export async function fio(job: FioJob, variant: FioVariant): Promise<FioResult> {
  const a = fioArgs(job, variant);
  const out = await new Deno.Command("fio", { args: a, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`fio ${a.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  const j = JSON.parse(new TextDecoder().decode(out.stdout)).jobs[0];
  const side = job.rw.includes("write") ? j.write : j.read;
  if (side.total_ios < job.ops) {
    throw new Error(`fio did ${side.total_ios} of ${job.ops} requests: ${a.join(" ")}`);
  }
  const pct = side.lat_ns?.percentile ?? {};
  return {
    iops: side.iops,
    mbps: side.bw_bytes / 1e6,
    lat50us: (pct["50.000000"] ?? 0) / 1000,
    lat99us: (pct["99.000000"] ?? 0) / 1000,
    cpu: (j.usr_cpu + j.sys_cpu) / 100 * (side.runtime / 1000),
  };
}

/** qemu-img bench's AIO back ends tried (all on the page cache, `-t writeback`). */
export const QEMU_IMG_AIO = ["threads", "io_uring"] as const;

/** qemu-img bench arguments: `count` requests of 4 KiB at `depth`, sequential from 0. */
export function qemuImgArgs(
  image: string,
  write: boolean,
  count: number,
  depth: number,
  aio: string,
): string[] {
  const a = ["bench", "-q", "-f", "qcow2", "-c", String(count), "-d", String(depth)];
  a.push("-s", "4096", "-i", aio, "-t", "writeback");
  if (write) a.push("-w", "--no-drain");
  a.push(image);
  return a;
}

/** Runs qemu-img bench once; returns requests per second (its own timing). */
export async function qemuImgBench(
  image: string,
  write: boolean,
  count: number,
  depth: number,
  aio: string,
): Promise<number> {
  const a = qemuImgArgs(image, write, count, depth, aio);
  const out = await new Deno.Command("qemu-img", { args: a, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`qemu-img ${a.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  const m = /Run completed in ([\d.]+) seconds/.exec(text);
  if (m?.[1] === undefined) throw new Error(`cannot parse qemu-img bench output: ${text}`);
  return count / Number(m[1]);
}

// ---- the page cache ----------------------------------------------------------

export { prepareCache, residentBytes } from "./page_cache.ts";
